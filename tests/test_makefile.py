"""The Makefile's environment target: `make train` and `make test` set up .venv first when it is missing or older
than pyproject.toml, and not otherwise (make -n: what make would run, without running it)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = "-m venv"


def _dry_run(directory: Path, *args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=directory, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["train", "test", "eval RUN=x", "compare"])
def test_environment_is_built_when_missing_or_stale_and_only_then(tmp_path, target):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    run = lambda: _dry_run(tmp_path, *target.split())  # noqa: E731

    assert SETUP in run()  # fresh clone: no environment yet
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    os.utime(tmp_path / "pyproject.toml", (1_000_000_000, 1_000_000_000))  # older than the environment
    assert SETUP not in run()
    os.utime(tmp_path / "pyproject.toml")  # edited after the environment was built
    os.utime(stamp, (1_000_000_000, 1_000_000_000))
    assert SETUP in run()
    out = run()
    assert "pip install" in out and out.index(SETUP) < out.index(".venv/bin/python -m", out.index("pip install"))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_always_rebuilds_and_takes_the_torch_requirement(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    out = _dry_run(tmp_path, "install", "TORCH=torch")
    assert SETUP in out and 'pip install --quiet "torch"' in out
