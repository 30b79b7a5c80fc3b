"""Compare finished runs: a markdown table, a JSON of the same figures and the BLEU-vs-length plot.

`translate report RUN_DIR… [--out DIR]` reads each run's
train_summary.json, eval/test.json and the probe's texts eval/test_probe.{src,ref,hyp}
(written by training and evaluation) and never loads weights.  Hydra multirun calls
`ReportCallback` when a sweep ends.
"""

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from torch.utils.tensorboard import SummaryWriter

from translate.evaluation.metrics import bleu_statistics, lead_growth_interval, length_bucket
from translate.evaluation.plots import bleu_by_length_figure, bucket_label, plt
from translate.evaluation.records import read_evaluation, read_summary
from translate.evaluation.spread import DEFAULT_SEED, write_seeds_report
from translate.evaluation.tables import markdown_table
from translate.runtime.errors import UserError
from translate.runtime.files import read_small, read_yaml

SUMMARY_NEEDS = ("model", "parameters", "train_minutes", "epochs", "tokens_per_s")  # what a report shows of each run
EVALUATION_NEEDS = ("bleu", "chrf", "bleu_by_length", "src_lang", "tgt_lang", "name", "sentences")


def load_run_results(run_dir: Path, eval_name: str = "test") -> dict | None:
    """A finished, evaluated run's summary and scores; the run and its name are the directory given, never what
    its files say (a run directory is data)."""
    summary, result = run_dir / "train_summary.json", run_dir / "eval" / f"{eval_name}.json"
    if not (summary.exists() and result.exists()):
        return None
    # every value checked where it is read (evaluation/records.py)
    row = {**read_summary(summary, SUMMARY_NEEDS), "eval": read_evaluation(result, EVALUATION_NEEDS)}
    return {**row, "run": str(run_dir), "name": run_dir.name, "eval_name": eval_name}


MIN_BUCKET = 10  # sentences a bucket needs to count in the drop; smaller ones are too noisy


def bleu_drop(buckets: list[dict]) -> float | None:
    """BLEU of the shortest bucket minus that of the longest, among buckets of MIN_BUCKET+ sentences."""
    scored = [b for b in buckets if b["bleu"] is not None and b["sentences"] >= MIN_BUCKET]
    return round(scored[0]["bleu"] - scored[-1]["bleu"], 2) if len(scored) > 1 else None


def scored_ends(buckets: list[dict], baseline: list[dict]) -> tuple[int, int] | None:
    """Indices of the shortest and the longest bucket that both runs score with MIN_BUCKET+ sentences."""
    ok = [
        i
        for i, (b, a) in enumerate(zip(buckets, baseline))
        if b["sentences"] >= MIN_BUCKET and None not in (b["bleu"], a["bleu"])
    ]
    return (ok[0], ok[-1]) if len(ok) > 1 else None


def gap_to_baseline(buckets: list[dict], baseline: list[dict]) -> tuple[float, float] | None:
    """BLEU above the baseline in the shortest and in the longest bucket both score (MIN_BUCKET+ sentences)."""
    ends = scored_ends(buckets, baseline)
    return None if ends is None else tuple(round(buckets[i]["bleu"] - baseline[i]["bleu"], 2) for i in ends)


def _length_buckets(row: dict, key: str | None) -> list[dict]:
    return row["eval"]["bleu_by_length"] if key is None else (row["eval"].get(key) or {}).get("bleu_by_length", [])


def _eval_name(row: dict) -> str:
    """The evaluation a row holds (test, valid, …): set by load_run_results from the caller, never from a file."""
    return row.get("eval_name", "test")


def _probe_texts(row: dict) -> tuple[list[str], list[str], list[str]] | None:
    """The probe's sources, references and this run's hypotheses, as evaluation wrote them."""
    name = _eval_name(row)
    paths = [Path(row["run"]) / "eval" / f"{name}_probe.{s}" for s in ("src", "ref", "hyp")]
    return tuple(read_small(p, 64 << 20).splitlines() for p in paths) if all(p.exists() for p in paths) else None


def probe_lead_growth(row: dict, baseline: dict) -> dict | None:
    """How much more `row` leads `baseline` in the longest probe bucket than in the shortest, with a 95 % interval."""
    buckets = _length_buckets(row, "probe")
    ends = scored_ends(buckets, _length_buckets(baseline, "probe"))
    texts, base_texts = _probe_texts(row), _probe_texts(baseline)
    if ends is None or texts is None or base_texts is None or texts[:2] != base_texts[:2]:
        return None
    src, ref, hyp = texts
    short, long = (length_bucket(src, buckets[e]["min_words"], buckets[e]["max_words"] + 1) for e in ends)
    growth, low, high = lead_growth_interval(
        bleu_statistics(hyp, ref), bleu_statistics(base_texts[2], ref), short, long
    )
    return {"baseline": baseline["name"], "growth": growth, "ci95": [low, high]}


def _grows(r: dict, probe_gap: tuple[float, float] | None) -> str:
    growth = r.get("probe_lead_growth")
    if growth:
        low, high = growth["ci95"]
        verdict = "yes" if low > 0 else "no" if high < 0 else "not significant"
        return f"{verdict} ({growth['growth']:+.2f}, 95 % CI {low:+.2f} to {high:+.2f})"
    return "–" if probe_gap is None else ("yes" if probe_gap[1] > probe_gap[0] else "no")


def fixed_vector_baseline(rows: list[dict]) -> dict | None:
    """The `rnn` run the attention models are measured against, if the report has one."""
    return next((r for r in rows if r["model"] == "rnn"), None)


def gap_lines(rows: list[dict]) -> list[str]:
    """Does attention's lead over the fixed-vector `rnn` grow with length?  One row per other run."""
    baseline = fixed_vector_baseline(rows)
    if baseline is None or len(rows) < 2:
        return []
    table = []
    for r in rows:
        if r is baseline:
            continue
        test, probe = (gap_to_baseline(_length_buckets(r, k), _length_buckets(baseline, k)) for k in (None, "probe"))
        cells = [c for g in (test, probe) for c in ([f"{g[0]:+.2f}", f"{g[1]:+.2f}"] if g else ["–", "–"])]
        table.append([r["name"], *cells, _grows(r, probe)])
    header = [
        "run",
        f"{_eval_name(rows[0])} set: shortest",
        "longest",
        "probe: shortest",
        "longest",
        "lead grows on the probe",
    ]
    lines = [
        f"## BLEU above `{baseline['name']}`: shortest vs longest bucket (buckets of {MIN_BUCKET}+ sentences)",
        "",
        *markdown_table(header, table, align="lrrrrl").splitlines(),
    ]
    if any(r.get("probe_lead_growth") for r in rows):
        lines += [
            "",
            "The interval is a paired bootstrap (1,000 resamples of the sentences in each of the two buckets, "
            'the same draw for both runs); "not significant" means it contains 0.',
        ]
    return lines + [""]


def search_name(result: dict) -> str:
    """greedy, beam5, …: what an evaluation record says it decoded with ("?" where it says nothing readable)."""
    decoding = result.get("decoding")
    search = decoding.get("search") if isinstance(decoding, dict) else None
    return search[:20] if isinstance(search, str) else "?"


def _score(result: dict, key: str) -> str:
    """A score of an evaluation, "–" where it lacks it (chrF++ and TER: evaluations written before they were)."""
    return "–" if result.get(key) is None else f"{result[key]:.2f}"


def markdown(rows: list[dict]) -> str:
    first = rows[0]["eval"]
    header = ["run", "model", "parameters", "train min", "epochs", "target tok/s", "BLEU", "chrF", "chrF++", "TER"]
    header.append("probe BLEU")
    table = []
    for r in rows:
        probe = r["eval"].get("probe") or {}
        table.append(
            [r["name"], r["model"], f"{r['parameters']:,}", f"{r['train_minutes']:.1f}", f"{r['epochs']:.1f}"]
            + [f"{r['tokens_per_s']:,.0f}", f"{r['eval']['bleu']:.2f}", f"{r['eval']['chrf']:.2f}"]
            + [_score(r["eval"], "chrf_pp"), _score(r["eval"], "ter")]
            + ["–" if "bleu" not in probe else format(probe["bleu"], ".2f")]
        )
    lines = [
        f"# Comparison: {first['src_lang']}→{first['tgt_lang']}, {first['name']} ({first['sentences']} sentences), "
        f"{search_name(first)} decoding",
        "",
        markdown_table(header, table, align="ll" + "r" * 9),
    ]
    signatures = [f"BLEU signature: `{first['bleu_signature']}`", f"chrF signature: `{first['chrf_signature']}`"]
    for label, key in (("chrF++", "chrf_pp_signature"), ("TER", "ter_signature")):
        if first.get(key):
            signatures.append(f"{label} signature: `{first[key]}`")
    lines += ["", "; ".join(signatures) + ("" if first.get("ter") is None else " (TER: lower is better)"), ""]
    for title, key in ((f"{_eval_name(rows[0])} set", None), ("long-sentence probe", "probe")):
        buckets = [_length_buckets(r, key) for r in rows]
        if not all(buckets):
            continue
        if key:
            p = rows[0]["eval"]["probe"]
            lines.append(
                f"## BLEU by source length (words), {title}: k = 1..{p['k_max']} consecutive "
                f"{_eval_name(rows[0])} pairs joined"
            )
        else:
            lines.append(f"## BLEU by source length (words), {title}")
        header = ["run", *(bucket_label(b) for b in buckets[0]), f"drop shortest→longest (buckets of {MIN_BUCKET}+)"]
        table = [["sentences", *(b["sentences"] for b in buckets[0]), ""]]
        for r, bs in zip(rows, buckets):
            drop = bleu_drop(bs)
            cells = ["–" if b["bleu"] is None else f"{b['bleu']:.2f}" for b in bs]
            table.append([r["name"], *cells, "–" if drop is None else f"{drop:.2f}"])
        lines += ["", markdown_table(header, table, align="l" + "r" * (len(buckets[0]) + 1)), ""]
    return "\n".join(lines + gap_lines(rows))


def plot(rows: list[dict], path: Path):
    """BLEU against source length, one curve per run; one panel per test set (natural, probe)."""
    name = _eval_name(rows[0])
    panels = [(f"{name} set", [(r["name"], r["eval"]["bleu_by_length"]) for r in rows])]
    if all(r["eval"].get("probe") for r in rows):
        panels.append(
            (
                f"long-sentence probe (joined {name} pairs)",
                [(r["name"], r["eval"]["probe"]["bleu_by_length"]) for r in rows],
            )
        )
    fig = bleu_by_length_figure(panels)
    fig.savefig(path, dpi=110)
    return fig


def write_report(run_dirs: list[Path], out: Path, eval_name: str = "test") -> list[dict]:
    rows = [r for r in (load_run_results(Path(d), eval_name) for d in run_dirs) if r]
    if len({r["model"] for r in rows}) == len(rows):  # a comparison: one run per model, named by it
        for r in rows:
            r["name"] = r["model"]
    missing = sorted(set(map(str, run_dirs)) - {r["run"] for r in rows})
    if not rows:
        raise UserError(
            f"no finished run with eval/{eval_name}.json among {', '.join(map(str, run_dirs))}; train and evaluate "
            + ("first" if eval_name == "test" else f"it (make eval RUN=… eval.split={eval_name})")
        )
    out.mkdir(parents=True, exist_ok=True)
    baseline = fixed_vector_baseline(rows)
    for r in rows:
        r["drop_test"] = bleu_drop(_length_buckets(r, None))
        r["drop_probe"] = bleu_drop(_length_buckets(r, "probe"))
        if baseline is not None and r is not baseline:
            r["probe_lead_growth"] = probe_lead_growth(r, baseline)
    (out / "report.md").write_text(
        markdown(rows) + ("\n_Not finished: " + ", ".join(missing) + "_\n" if missing else "")
    )
    (out / "report.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    fig = plot(rows, out / "bleu_vs_length.png")
    for target in [out] + [Path(r["run"]) for r in rows]:
        with SummaryWriter(str(target / "tensorboard")) as writer:
            writer.add_figure("compare/bleu_vs_length", fig, close=False)
    plt.close(fig)
    return rows


def run_seed(run_dir: Path) -> int:
    """The seed a run was trained with (its config.yaml); the default seed for a directory without one."""
    config = run_dir / "config.yaml"
    seed = read_yaml(config).get("trainer", {}).get("seed", DEFAULT_SEED) if config.exists() else DEFAULT_SEED
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{config}: trainer.seed={seed!r} is not a seed; a run's config.yaml is written by make train")
    return seed


def write_reports(run_dirs: list[Path], out: Path, eval_name: str = "test") -> Path:
    """One comparison's report in `out`, of the runs' evaluations eval/<eval_name>.json; runs of several seeds get
    one report per seed in `out`/seed_<s>/ and the spread over seeds in `out` (evaluation.spread).  Returns the
    markdown file to show."""
    by_seed = {}
    for run in run_dirs:
        by_seed.setdefault(run_seed(run), []).append(run)
    if len(by_seed) == 1:
        write_report(run_dirs, out, eval_name)
        return out / "report.md"
    for seed, runs in sorted(by_seed.items()):
        write_report(runs, out / f"seed_{seed}", eval_name)
    write_seeds_report([out / f"seed_{seed}" for seed in sorted(by_seed)], out)
    return out / "seeds.md"


def job_order(run_dir: Path) -> tuple[int, str]:
    """A sweep's runs in the order Hydra launched them (its job number), then by name."""
    hydra = run_dir / ".hydra" / "hydra.yaml"
    number = (read_yaml(hydra).get("hydra") or {}).get("job", {}).get("num") if hydra.exists() else None
    return (number if isinstance(number, int) else 1 << 30, run_dir.name)


class ReportCallback(Callback):
    """Writes <sweep dir>/report/ when a Hydra multirun (e.g. make compare) ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        runs = sorted((p for p in sweep.iterdir() if (p / "config.yaml").exists()), key=job_order)
        shown = write_reports(runs, sweep / "report")
        print(shown.read_text())
        print(f"report: {sweep / 'report'}")
