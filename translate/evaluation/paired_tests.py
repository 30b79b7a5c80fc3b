"""Is a run's difference from a baseline more than chance?  sacreBLEU's own paired significance tests on evaluated runs.

    result = write_significance(run_dirs, out, eval_name="test")    <out>/significance.{md,json}

Each run is read from its evaluation alone: its hypotheses eval/<name>.hyp and the references the evaluation saved
beside them, eval/<name>.ref (their SHA-256 is in eval/<name>.json); no weights, no corpus.  The first run is the
baseline, and every other run is compared with it on BLEU, chrF and chrF++ (sacreBLEU's defaults, as evaluation
scores them) by sacreBLEU's `PairedTest`, the implementation behind `sacrebleu REF -i A B --paired-bs | --paired-ar`:

- paired bootstrap resampling (1,000 resamples of the sentences): a p-value, and, from the same resamples (the same
  sentences drawn for both runs), the 95 % interval of the difference, run minus baseline;
- approximate randomisation (10,000 trials): a second p-value.

Both tests are seeded as sacreBLEU's command line is, by the environment's SACREBLEU_SEED (default 12345; `none`:
unseeded), so that command prints the same scores, intervals and p-values on the same files.  Runs scored on
different test sets (other references, or another number of lines) are refused.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from translate.evaluation.records import read_evaluation
from translate.evaluation.tables import markdown_table
from translate.runtime.errors import UserError
from translate.runtime.files import refuse_link, write_text

# the measures compared: the key in significance.json (and in the evaluation's JSON), its label, its metric
MEASURES = {
    "bleu": ("BLEU", lambda refs: BLEU(references=[refs])),
    "chrf": ("chrF", lambda refs: CHRF(references=[refs])),
    "chrf_pp": ("chrF++", lambda refs: CHRF(word_order=2, references=[refs])),
}
BOOTSTRAP_RESAMPLES = 1000  # sacreBLEU's defaults (--paired-bs-n, --paired-ar-n)
AR_TRIALS = 10000
TESTS = {"bootstrap": ("bs", BOOTSTRAP_RESAMPLES), "approximate_randomisation": ("ar", AR_TRIALS)}
MAX_TEXT = 1 << 30  # bytes of a hypothesis or reference file
EVAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # the names evaluation gives its outputs (file_stem)


@dataclass
class EvaluatedRun:
    run: str  # the directory as given
    name: str  # how the tables name it
    hypotheses: list[str]
    references: list[str]
    sha256: str  # of the references as saved (eval/<name>.ref)


def read_lines(path: Path) -> tuple[list[str], bytes]:
    """A text file evaluation wrote (each line ended by a newline) as its lines, and its bytes.  Only newlines end
    lines: a hypothesis may hold any other character that str.splitlines would split at."""
    refuse_link(path)
    if path.stat().st_size > MAX_TEXT:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes (at most {MAX_TEXT:,}); not a file evaluation wrote")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e}); evaluate the run again") from None
    if not text:
        return [], data
    return (text[:-1] if text.endswith("\n") else text).split("\n"), data


def load_evaluated(run_dir: Path, eval_name: str = "test") -> EvaluatedRun:
    """A run's hypotheses and references on the set `eval_name`, as its evaluation saved them, checked against each
    other and against what its eval/<name>.json records."""
    where = Path(run_dir) / "eval"
    json_path, hyp_path, ref_path = (where / f"{eval_name}.{suffix}" for suffix in ("json", "hyp", "ref"))
    again = f"evaluate it again (make eval RUN={run_dir})"
    if not json_path.is_file():
        raise UserError(f"{run_dir}: no eval/{eval_name}.json; evaluate it first (make eval RUN={run_dir})")
    result = read_evaluation(json_path)  # its values checked (evaluation/records.py)
    if not hyp_path.is_file():
        raise UserError(f"{run_dir}: no eval/{eval_name}.hyp (its hypotheses); {again}")
    if not ref_path.is_file():
        raise UserError(
            f"{run_dir}: no eval/{eval_name}.ref (the references it was scored on: evaluations before they were "
            f"saved lack it); {again}"
        )
    hypotheses, _ = read_lines(hyp_path)
    references, data = read_lines(ref_path)
    digest = hashlib.sha256(data).hexdigest()
    recorded = result.get("references") if isinstance(result, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("sha256") not in (None, digest):
        raise UserError(f"{run_dir}: eval/{eval_name}.ref is not the text eval/{eval_name}.json records; {again}")
    if len(hypotheses) != len(references) or recorded.get("lines") not in (None, len(references)):
        raise UserError(
            f"{run_dir}: eval/{eval_name}.hyp has {len(hypotheses)} lines but eval/{eval_name}.ref "
            f"{len(references)}{'' if recorded.get('lines') is None else ' (its JSON: ' + str(recorded['lines']) + ')'}"
            f"; {again}"
        )
    if not references:
        raise UserError(f"{run_dir}: eval/{eval_name}.ref has no lines; {again}")
    return EvaluatedRun(str(run_dir), Path(run_dir).name, hypotheses, references, digest)


def check_same_test_set(runs: list[EvaluatedRun]) -> None:
    """Refuse a run whose references differ from the baseline's (their SHA-256 or their number of lines)."""
    base = runs[0]
    describe = lambda r: f"{len(r.references)} lines, references SHA-256 {r.sha256[:12]}…"  # noqa: E731
    for r in runs[1:]:
        if (len(r.references), r.sha256) != (len(base.references), base.sha256):
            raise UserError(
                f"{r.run}: scored on another test set than the baseline {base.run} ({describe(r)}, not "
                f"{describe(base)}); compare runs evaluated on the same references"
            )


def sacrebleu_seed() -> int | None:
    """The seed sacreBLEU's tests draw with (SACREBLEU_SEED, default 12345; `none`: unseeded), read as sacreBLEU does;
    a setting it cannot read is a one-line error here rather than its ValueError."""
    setting = os.environ.get("SACREBLEU_SEED", "12345")
    if setting.lower() == "none":
        return None
    try:
        seed = int(setting)
    except ValueError:
        seed = -1
    if seed < 0:
        raise UserError(f"SACREBLEU_SEED={setting}: not a seed; give a number (sacreBLEU's default is 12345) or none")
    return seed or None  # as sacreBLEU's PairedTest: 0 draws unseeded


def difference_interval(
    metric, baseline: list[str], system: list[str], resamples: int, seed: int | None
) -> tuple[float, float, float]:
    """The 95 % interval of `system` minus `baseline` over sacreBLEU's paired bootstrap: the resamples its test draws
    with `seed` (the same sentences for both runs), each scored from its summed sufficient statistics as sacreBLEU
    scores them, the ends the order statistics of its own intervals (the 25th of 1,000 from either end).  Returns
    (low, high, the system's mean over the resamples: sacreBLEU's own, the check that the draws are its)."""
    n = len(system)
    draws = np.random.default_rng(seed).choice(n, size=(resamples, n), replace=True)
    stats = [np.array(metric._extract_corpus_statistics(h, None), dtype="float32") for h in (system, baseline)]
    scores = np.array([[metric._compute_score_from_stats(s[idx].sum(0)).score for s in stats] for idx in draws])
    differences = np.sort(scores[:, 0] - scores[:, 1])
    k = resamples // 40
    return float(differences[k]), float(differences[resamples - k - 1]), float(scores[:, 0].mean())


def paired_tests(runs: list[EvaluatedRun]) -> dict:
    """sacreBLEU's paired bootstrap and approximate randomisation of each run against the first (module docstring)."""
    check_same_test_set(runs)
    seed, references = sacrebleu_seed(), runs[0].references
    named = [(r.name, r.hypotheses) for r in runs]
    signatures, found = {key: {} for key in MEASURES}, {}
    for test, (kind, samples) in TESTS.items():
        metrics = {key: make(references) for key, (_, make) in MEASURES.items()}
        paired = PairedTest(named, metrics, None, test_type=kind, n_samples=samples)
        sigs, results = paired()
        for name, metric in paired.metrics.items():  # sacreBLEU names a measure by its score (BLEU, chrF2, chrF2++)
            key = next(k for k, m in metrics.items() if m is metric)
            signatures[key][test] = str(sigs[name])
            found[test, key] = results[name]
            if test == "bootstrap":
                found["metric", key] = metric
    base = runs[0]
    scored = []
    for i, r in enumerate(runs):
        scores = {}
        for key in MEASURES:
            result = found["bootstrap", key][i]
            scores[key] = {
                "score": round(float(result.score), 4),
                "bootstrap_mean": round(float(result.mean), 4),
                "bootstrap_ci95": round(float(result.ci), 4),  # sacreBLEU's: the mean ± this holds 95 % of them
            }
        scored.append({"name": r.name, "run": r.run, "scores": scores})
    comparisons = []
    for i, r in enumerate(runs[1:], start=1):
        row = {"name": r.name, "run": r.run, "baseline": base.name}
        for key in MEASURES:
            bs, ar = found["bootstrap", key], found["approximate_randomisation", key]
            low, high, _ = difference_interval(
                found["metric", key], base.hypotheses, r.hypotheses, BOOTSTRAP_RESAMPLES, seed
            )
            row[key] = {
                "baseline": round(float(bs[0].score), 4),
                "run": round(float(bs[i].score), 4),
                "difference": round(float(bs[i].score - bs[0].score), 4),
                "ci95": [round(low, 4), round(high, 4)],
                "p_bootstrap": float(bs[i].p_value),
                "p_ar": float(ar[i].p_value),
            }
        comparisons.append(row)
    return {
        "sentences": len(references),
        "references_sha256": base.sha256,
        "baseline": base.name,
        "seed": "none" if seed is None else seed,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "ar_trials": AR_TRIALS,
        "signatures": signatures,
        "runs": scored,
        "comparisons": comparisons,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _p(p: float) -> str:
    return f"{p:.4f}" + ("*" if p < 0.05 else "")


def markdown(result: dict) -> str:
    header = ["run", "measure", f"`{_cell(result['baseline'])}` (baseline)", "run's score", "difference"]
    header += ["95 % interval", "p (bootstrap)", "p (AR)"]
    table = []
    for c in result["comparisons"]:
        for key, (label, _) in MEASURES.items():
            m = c[key]
            low, high = m["ci95"]
            table.append(
                [_cell(c["name"]), label, f"{m['baseline']:.2f}", f"{m['run']:.2f}", f"{m['difference']:+.2f}"]
                + [f"{low:+.2f} to {high:+.2f}", _p(m["p_bootstrap"]), _p(m["p_ar"])]
            )
    lines = [
        f"# Paired significance: {result['eval_name']} set ({result['sentences']} sentences), each run against "
        f"`{_cell(result['baseline'])}`",
        "",
        markdown_table(header, table, align="ll" + "r" * 6),
        "",
        "Difference: the run's score minus the baseline's.  95 % interval: of that difference over the paired "
        f"bootstrap's {result['bootstrap_resamples']:,} resamples of the sentences (the same ones for both runs).  "
        "p: how likely a difference at least this large would be if the two runs' translations came from one "
        f"system; paired bootstrap resampling and approximate randomisation ({result['ar_trials']:,} trials), "
        f"sacreBLEU's own tests, seed {result['seed']} (SACREBLEU_SEED); * p < 0.05.  Significance says the "
        "difference is unlikely to be chance, not that it matters.",
        "",
        "Signatures:",
        "",
    ]
    for key, (label, _) in MEASURES.items():
        for test, signature in result["signatures"][key].items():
            lines.append(f"- {label}, {test.replace('_', ' ')}: `{signature}`")
    return "\n".join(lines) + "\n"


def write_significance(run_dirs: list[Path], out: Path, eval_name: str = "test") -> dict:
    """The paired tests of the runs (each against the first) in `out`/significance.{md,json}; returns the JSON's."""
    if not EVAL_NAME.fullmatch(eval_name):
        raise UserError(f"--eval-name {eval_name}: not an evaluation's name; give the name of eval/<name>.json")
    if len(run_dirs) < 2:
        raise UserError("give two or more evaluated runs: the baseline first, then the runs to compare with it")
    runs = [load_evaluated(Path(d), eval_name) for d in run_dirs]
    if len({r.name for r in runs}) < len(runs):  # two runs of one name: the tables name them by directory
        for r in runs:
            r.name = r.run
    result = {"eval_name": eval_name, **paired_tests(runs)}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "significance.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_text(out / "significance.md", markdown(result))
    return result
