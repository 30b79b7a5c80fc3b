"""`make significance` (commands/significance.py, evaluation/paired_tests.py): evaluated runs compared with
the first by sacreBLEU's paired bootstrap and approximate randomisation, against sacreBLEU's own command line on the
same files; runs scored on different test sets, or with missing or altered files, refused with one line.  The runs
are fake evaluated run directories (eval/test.{json,hyp,ref}, written as evaluation writes them): no training."""

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from translate.evaluation.evaluator import reference_record
from translate.evaluation.metrics import corpus_scores
from translate.evaluation.paired_tests import (
    MEASURES,
    difference_interval,
    load_evaluated,
    read_lines,
    write_significance,
)
from translate.runtime.errors import UserError
from translate.runtime.files import write_lines

ROOT = Path(__file__).resolve().parents[1]
REFS = [
    "A man is riding a bicycle down the street.",
    "Two dogs play with a red ball in the park.",
    "The girl in the blue dress is reading a book on a bench.",
    "People walk past a large building at night.",
    "A child jumps into the swimming pool.",
    "A woman sells fruit at a market stall.",
]
HYPS = [
    "A man rides a bicycle down the street.",
    "Two dogs are playing with a ball in a park.",
    "A girl in a blue dress reads a book on the bench.",
    "People are walking by a big building at night.",
    "A kid jumps in the pool.",
    "A woman is selling fruit at the market.",
]


def evaluated_run(directory: Path, hypotheses: list[str], references: list[str]) -> Path:
    """A run directory as `make eval` leaves it for significance: eval/test.json (its scores and the references'
    record), eval/test.hyp and eval/test.ref."""
    (directory / "eval").mkdir(parents=True)
    result = {
        "name": "test",
        "sentences": len(references),
        "references": reference_record(references, "test.ref", None, "test"),
        **corpus_scores(hypotheses, references),
    }
    (directory / "eval" / "test.json").write_text(json.dumps(result))
    write_lines(directory / "eval" / "test.hyp", hypotheses)
    write_lines(directory / "eval" / "test.ref", references)
    return directory


def one_line_error(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_references_are_recorded_as_saved_and_read_back_line_for_line(tmp_path):
    odd = ["a\u2028b", "tab\there", "form\x0cfeed", "carriage\rreturn", "", "last"]  # str.splitlines splits 4 of them
    run = evaluated_run(tmp_path / "run", HYPS, odd)
    record = json.loads((run / "eval" / "test.json").read_text())["references"]
    lines, data = read_lines(run / "eval" / "test.ref")
    assert lines == odd and record["lines"] == 6 and record["file"] == "test.ref"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    loaded = load_evaluated(run)
    assert loaded.references == odd and loaded.hypotheses == HYPS and loaded.sha256 == record["sha256"]
    assert loaded.name == "run" and loaded.run == str(run)


def test_runs_scored_on_different_test_sets_are_refused_with_one_line(tmp_path):
    base = evaluated_run(tmp_path / "base", HYPS, REFS)
    other_text = evaluated_run(tmp_path / "other_text", HYPS, [*REFS[:-1], "A woman sells apples at a stall."])
    fewer = evaluated_run(tmp_path / "fewer", HYPS[:-1], REFS[:-1])
    for run, lines in ((other_text, 6), (fewer, 5)):
        message = one_line_error(lambda run=run: write_significance([base, run], tmp_path / "out"))
        assert message.startswith(f"{run}: scored on another test set than the baseline {base} ({lines} lines, ")
        assert message.endswith("; compare runs evaluated on the same references")
    assert not (tmp_path / "out").exists()


def test_a_run_without_its_references_or_with_altered_files_is_refused(tmp_path):
    base = evaluated_run(tmp_path / "base", HYPS, REFS)
    old = evaluated_run(tmp_path / "old", HYPS, REFS)
    (old / "eval" / "test.ref").unlink()  # evaluated before evaluation saved the references
    message = one_line_error(lambda: write_significance([base, old], tmp_path / "out"))
    assert message.startswith(f"{old}: no eval/test.ref") and f"make eval RUN={old}" in message
    altered = evaluated_run(tmp_path / "altered", HYPS, REFS)
    write_lines(altered / "eval" / "test.ref", [*REFS[:-1], "something else"])
    message = one_line_error(lambda: write_significance([base, altered], tmp_path / "out"))
    assert message.startswith(f"{altered}: eval/test.ref is not the text eval/test.json records")
    short = evaluated_run(tmp_path / "short", HYPS, REFS)
    write_lines(short / "eval" / "test.hyp", HYPS[:-1])
    message = one_line_error(lambda: write_significance([base, short], tmp_path / "out"))
    assert message.startswith(f"{short}: eval/test.hyp has 5 lines but eval/test.ref 6")
    assert "two or more" in one_line_error(lambda: write_significance([base], tmp_path / "out"))
    assert "--eval-name" in one_line_error(lambda: write_significance([base, base], tmp_path / "out", "../test"))
    missing = tmp_path / "never_evaluated"
    assert one_line_error(lambda: write_significance([base, missing], tmp_path / "out")).startswith(
        f"{missing}: no eval/test.json"
    )


def test_significance_json_and_markdown(tmp_path):
    worse = [" ".join(h.split()[:-2]) for h in HYPS]
    runs = [evaluated_run(tmp_path / "a", HYPS, REFS), evaluated_run(tmp_path / "b", worse, REFS)]
    result = write_significance(runs, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "significance.json").read_text()) == result
    assert result["baseline"] == "a" and result["sentences"] == 6 and result["seed"] == 12345
    assert [r["name"] for r in result["runs"]] == ["a", "b"]
    [c] = result["comparisons"]
    scores = corpus_scores(worse, REFS), corpus_scores(HYPS, REFS)
    for key in MEASURES:
        assert round(c[key]["run"], 2) == scores[0][key] and round(c[key]["baseline"], 2) == scores[1][key]
        assert c[key]["difference"] == pytest.approx(c[key]["run"] - c[key]["baseline"], abs=2e-4)
        assert c[key]["ci95"][0] <= c[key]["difference"] <= c[key]["ci95"][1]
        assert 0 < c[key]["p_bootstrap"] <= 1 and 0 < c[key]["p_ar"] <= 1
    markdown = (tmp_path / "out" / "significance.md").read_text()
    bleu = c["bleu"]
    row = f"| b | BLEU | {bleu['baseline']:.2f} | {bleu['run']:.2f} | {bleu['difference']:+.2f} |"
    assert row in markdown and "chrF++" in markdown and "seed 12345 (SACREBLEU_SEED)" in markdown
    # one directory given twice: the tables name the runs by their paths
    assert [r["name"] for r in write_significance([runs[0], runs[0]], tmp_path / "same")["runs"]] == [str(runs[0])] * 2


# ---- against sacreBLEU's command line, on 200 real sentences ----------------------------------------------------


def perturbed(references: list[str], drop: float, seed: int) -> list[str]:
    """Hypotheses: the references with each word dropped with probability `drop`, some lines' words shuffled."""
    rnd = random.Random(seed)
    out = []
    for line in references:
        kept = [w for w in line.split() if rnd.random() > drop]
        if rnd.random() < drop:
            rnd.shuffle(kept)
        out.append(" ".join(kept))
    return out


def sacrebleu_command(references: Path, systems: list[Path], *args: str, env: dict) -> str:
    command = [sys.executable, "-m", "sacrebleu", str(references), "-i", *map(str, systems), *args, "-w", "4", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow  # spawns the command and sacreBLEU's command line
def test_the_command_prints_what_sacrebleus_command_line_prints(tmp_path, multi30k_dir):
    with gzip.open(multi30k_dir / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        references = [next(f).rstrip("\n") for _ in range(200)]
    systems = {
        "a": perturbed(references, 0.3, 1),
        "b": perturbed(references, 0.15, 2),
        "c": perturbed(references, 0.3, 3),
    }
    runs = [evaluated_run(tmp_path / name, hyps, references) for name, hyps in systems.items()]
    env = {**os.environ, "SACREBLEU_SEED": "4321"}
    done = subprocess.run(
        [sys.executable, "-m", "translate", "significance", *map(str, runs), "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "significance.json").read_text())
    assert done.stdout.startswith((tmp_path / "out" / "significance.md").read_text())

    reference, hyps = runs[0] / "eval" / "test.ref", [r / "eval" / "test.hyp" for r in runs]
    measures = {"bleu": ["-m", "bleu"], "chrf": ["-m", "chrf"], "chrf_pp": ["-m", "chrf", "--chrf-word-order", "2"]}
    for key, chosen in measures.items():
        table = sacrebleu_command(reference, hyps, *chosen, "--paired-bs", "-f", "text", "-nc", env=env)
        cells = re.findall(r"(-?\d+\.\d{4}) \((-?\d+\.\d{4}) ± (\d+\.\d{4})\)", table)
        ours = [result["runs"][i]["scores"][key] for i in range(3)]
        assert cells == [tuple(f"{s[k]:.4f}" for k in ("score", "bootstrap_mean", "bootstrap_ci95")) for s in ours]
        assert re.findall(r"\(p = (\d\.\d{4})\)", table) == [
            f"{c[key]['p_bootstrap']:.4f}" for c in result["comparisons"]
        ]
        [(_, signature)] = re.findall(r"^ - (\S+)\s+(\S+)$", table, re.M)
        assert result["signatures"][key]["bootstrap"] == signature and "|bs:1000|seed:4321|" in signature

        printed = json.loads(sacrebleu_command(reference, hyps, *chosen, "--paired-ar", "-f", "json", env=env))
        [name] = [k for k in printed[0] if k != "system"]
        assert [c[key]["p_ar"] for c in result["comparisons"]] == [s[name]["p_value"] for s in printed[1:]]
        assert [f"{r['scores'][key]['score']:.4f}" for r in result["runs"]] == [
            f"{s[name]['score']:.4f}" for s in printed
        ]

        # the difference's interval comes from sacreBLEU's own resamples: its run's mean over them is sacreBLEU's
        for i, comparison in enumerate(result["comparisons"], start=1):
            metric = MEASURES[key][1](references)
            low, high, mean = difference_interval(metric, systems["a"], list(systems.values())[i], 1000, 4321)
            assert f"{mean:.4f}" == cells[i][1]
            assert comparison[key]["ci95"] == [round(low, 4), round(high, 4)]

    better, alike = result["comparisons"]
    for key in MEASURES:  # b drops half as many words: clearly better; c is a's kind of noise drawn again
        assert better[key]["ci95"][0] > 0 and better[key]["p_bootstrap"] < 0.05 and better[key]["p_ar"] < 0.05
        assert alike[key]["ci95"][0] < 0 < alike[key]["ci95"][1] and alike[key]["p_ar"] > 0.05


@pytest.mark.slow  # spawns the command
def test_the_command_refuses_runs_on_different_test_sets_with_one_line(tmp_path):
    base = evaluated_run(tmp_path / "base", HYPS, REFS)
    other = evaluated_run(tmp_path / "other", HYPS[:-1], REFS[:-1])
    done = subprocess.run(
        [sys.executable, "-m", "translate", "significance", str(base), str(other), "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: {other}: scored on another test set than the baseline {base} (5 lines, ")
    assert not (tmp_path / "out").exists()
