"""The comparison over seeds: how much of a result is the seed's.

`translate seeds REPORT… [--out DIR]` reads the report.json of each seed's comparison (written by
evaluation.comparison; a report directory works too) and gives, per model and length bucket, the mean and standard
deviation of BLEU over the seeds; the growth of each attention model's lead over `rnn` as mean ± std beside
every seed's own paired-bootstrap interval; and the figure with a band (min to max over seeds) around each
curve.  It reads reports, never run directories, so a seed finished in an earlier session counts through its
committed report.  `make compare SEEDS=3` writes one report per seed and this one (evaluation.comparison).
"""

import json
import statistics
from pathlib import Path

from translate.config.schema import TrainerConfig
from translate.evaluation.plots import bleu_by_length_figure, bucket_label, plt
from translate.evaluation.records import check_evaluation
from translate.evaluation.tables import markdown_table
from translate.runtime.errors import UserError
from translate.runtime.files import read_json

MAX_REPORT_BYTES = 4 << 20  # a comparison's report.json is about 20 KB
DEFAULT_SEED = TrainerConfig.seed  # reports from before the summary named its seed were trained with it


def load_reports(paths: list[Path]) -> dict[int, list[dict]]:
    """{seed: that seed's report rows}; a seed given twice, or a report of several seeds, is refused."""
    by_seed = {}
    for path in paths:
        path = path / "report.json" if path.is_dir() else path
        if not path.exists():
            raise UserError(f"{path}: no such report; give a comparison's report.json or its directory")
        rows = read_json(path, MAX_REPORT_BYTES)
        if not (isinstance(rows, list) and all(isinstance(r, dict) and isinstance(r.get("model"), str) for r in rows)):
            raise UserError(f"{path}: not a comparison's report.json (a list of rows); give one make compare wrote")
        for i, row in enumerate(rows):
            check_evaluation(row.get("eval"), path, ("bleu", "chrf", "bleu_by_length"), f"[{i}].eval.")
        seeds = {r.get("seed", DEFAULT_SEED) for r in rows}
        if len(seeds) != 1:
            raise UserError(f"{path}: a report of seeds {sorted(seeds)}; give one report per seed")
        seed = seeds.pop()
        if seed in by_seed:
            raise UserError(f"{path}: seed {seed} given twice; give each seed's report once")
        by_seed[seed] = rows
    return by_seed


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 2), "std": round(std, 2), "min": min(values), "max": max(values)}


def bucket_spread(runs: list[dict], probe: bool) -> list[dict]:
    """Length buckets of one model over seeds: each bucket's BLEU as mean ± std, min and max."""
    tables = [r["eval"]["probe"]["bleu_by_length"] if probe else r["eval"]["bleu_by_length"] for r in runs]
    out = []
    for i, bucket in enumerate(tables[0]):
        scores = [t[i]["bleu"] for t in tables if t[i]["bleu"] is not None]
        stats = spread(scores) if scores else {"mean": None, "std": None, "min": None, "max": None}
        out.append({**{k: bucket[k] for k in ("min_words", "max_words", "sentences")}, "seeds": len(scores), **stats})
    return out


def aggregate(by_seed: dict[int, list[dict]]) -> dict:
    seeds = sorted(by_seed)
    models = list(dict.fromkeys(r["model"] for s in seeds for r in by_seed[s]))
    result = {"seeds": seeds, "models": {}}
    for model in models:
        runs = {s: r for s in seeds for r in by_seed[s] if r["model"] == model}
        first = next(iter(runs.values()))
        entry = {
            "seeds": sorted(runs),
            "bleu": spread([r["eval"]["bleu"] for r in runs.values()]),
            "chrf": spread([r["eval"]["chrf"] for r in runs.values()]),
            "bleu_by_length": bucket_spread(list(runs.values()), probe=False),
        }
        if all(r["eval"].get("probe") for r in runs.values()):
            entry["probe_bleu"] = spread([r["eval"]["probe"]["bleu"] for r in runs.values()])
            entry["probe_bleu_by_length"] = bucket_spread(list(runs.values()), probe=True)
        growths = {s: r["probe_lead_growth"] for s, r in runs.items() if r.get("probe_lead_growth")}
        if growths:
            entry["lead_growth"] = {
                "baseline": first["probe_lead_growth"]["baseline"],
                **spread([g["growth"] for g in growths.values()]),
                "per_seed": {s: {"growth": g["growth"], "ci95": g["ci95"]} for s, g in growths.items()},
                "grows_on_every_seed": all(g["growth"] > 0 for g in growths.values()) and len(growths) == len(seeds),
                "significant_on_every_seed": all(g["ci95"][0] > 0 for g in growths.values())
                and len(growths) == len(seeds),
            }
        result["models"][model] = entry
    return result


def _cell(s: dict) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(result: dict) -> str:
    seeds, models = result["seeds"], result["models"]
    lines = [
        f"# The comparison over {len(seeds)} seeds ({', '.join(map(str, seeds))})",
        "",
        "Mean ± sample standard deviation over the seeds.",
        "",
        markdown_table(
            ["model", "seeds", "test BLEU", "chrF", "probe BLEU"],
            [
                [name, len(m["seeds"]), _cell(m["bleu"]), _cell(m["chrf"])]
                + [_cell(m["probe_bleu"]) if "probe_bleu" in m else "–"]
                for name, m in models.items()
            ],
            align="lrrrr",
        ),
    ]
    for title, key in (("test set", "bleu_by_length"), ("long-sentence probe", "probe_bleu_by_length")):
        if not all(key in m for m in models.values()):
            continue
        buckets = next(iter(models.values()))[key]
        lines += ["", f"## BLEU by source length (words), {title}", ""]
        table = [["sentences", *(b["sentences"] for b in buckets)]]
        table += [[name, *(_cell(b) for b in m[key])] for name, m in models.items()]
        lines += [markdown_table(["model", *(bucket_label(b) for b in buckets)], table, align="l" + "r" * len(buckets))]
    growing = {name: m["lead_growth"] for name, m in models.items() if "lead_growth" in m}
    if growing:
        lines += [
            "",
            "## Growth of the lead over the fixed-vector model, shortest to longest probe bucket",
            "",
        ]
        header = ["model", "mean ± std", "per seed: growth [95 % CI]", "grows on every seed"]
        header += ["CI above 0 on every seed"]
        table = []
        for name, g in growing.items():
            per_seed = "; ".join(
                f"{s}: {p['growth']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" for s, p in g["per_seed"].items()
            )
            yes = lambda flag: "yes" if flag else "no"
            table.append(
                [name, f"{g['mean']:+.2f} ± {g['std']:.2f}", per_seed]
                + [yes(g["grows_on_every_seed"]), yes(g["significant_on_every_seed"])]
            )
        lines += [markdown_table(header, table, align="lrlll")]
        lines += ["", "Each seed's interval is its own report's paired bootstrap (1,000 resamples)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path):
    """BLEU against source length: the mean over seeds, a band from the lowest to the highest seed."""
    panels = []
    for title, key in (("test set", "bleu_by_length"), ("long-sentence probe", "probe_bleu_by_length")):
        if all(key in m for m in result["models"].values()):
            curves = [(name, [{**b, "bleu": b["mean"]} for b in m[key]]) for name, m in result["models"].items()]
            panels.append((f"{title}, {len(result['seeds'])} seeds (band: min–max)", curves))
    fig = bleu_by_length_figure(panels, band=("min", "max"))
    fig.savefig(path, dpi=110)
    return fig


def write_seeds_report(reports: list[Path], out: Path) -> dict:
    result = aggregate(load_reports(reports))
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "seeds.md").write_text(markdown(result))
    plt.close(plot(result, out / "bleu_vs_length_seeds.png"))
    return result
