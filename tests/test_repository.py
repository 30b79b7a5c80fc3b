"""The repository as a newcomer reads it: no tracker numbers in code, configs or docs (users cannot see the
tracker: a comment or a page says what the thing is instead)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACES = ["translate", "tests", "scripts", "configs", "docs", "Makefile", "README.md", "pyproject.toml", ".ci"]
# "issue 19", "issue #6", "#36" (not a colour like #1f77b4, an HTML entity like &#9654; or a Markdown anchor)
TRACKER = re.compile(r"\bissues?\s+#?\d+\b|(?<![&\w/])#\d{1,4}\b(?![0-9a-fA-F])", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", *PLACES], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def test_no_tracker_numbers_in_code_configs_or_docs():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in tracked_text_files()
        if path != Path(__file__).resolve()  # this file holds the examples the pattern is tested on
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if TRACKER.search(line)
    ]
    assert not found, "tracker numbers (say what the thing is instead):\n" + "\n".join(found)


def test_the_pattern_finds_tracker_numbers_and_nothing_else():
    for text in ("see issue #19", "issue 36's bar", "the baseline of #6:", "(Issues 3)"):
        assert TRACKER.search(text), text
    for text in ("color: #1f77b4", "&#9654;", "docs/results/README.md#long-inputs", "step_1.pt", "# 1 = greedy"):
        assert not TRACKER.search(text), text


MAX_SCRIPT_FUNCTION = 80  # lines: a benchmark's function longer than this is split, or its shared part moves to
# scripts/measure.py (run and measure a process) or the library


def long_functions(path: Path, limit: int) -> list[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return [f"{path.name}:{f.lineno} {f.name}: {f.end_lineno - f.lineno + 1} lines" for f in functions
            if f.end_lineno - f.lineno + 1 > limit]  # fmt: skip


def test_no_function_in_scripts_is_longer_than_80_lines(tmp_path):
    found = [
        line for path in sorted((ROOT / "scripts").glob("*.py")) for line in long_functions(path, MAX_SCRIPT_FUNCTION)
    ]
    assert not found, "split these:\n" + "\n".join(found)
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 80)
    assert long_functions(long, MAX_SCRIPT_FUNCTION) == ["long.py:1 f: 81 lines"]  # the check sees one
