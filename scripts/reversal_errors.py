"""Where a model trained on the reversal task (data=synthetic) goes wrong, bucket by source length.

    python scripts/reversal_errors.py RUN_DIR [RUN_DIR ...]    # after `make eval` (reads RUN_DIR/eval/test.hyp)

For each run and length bucket: the share of test sequences reversed exactly, and the share of reference
positions the hypothesis gets wrong at *repeat sites* (a symbol next to an equal one, as in `s3 s3`) and at
every other position. A position is right when difflib's alignment of hypothesis to reference matches it.
Then the same test set with every repeat broken (each symbol equal to its left neighbour redrawn until it
differs; lengths unchanged) is decoded greedily and scored: if a model's long-input deficit is the
repeats, it is gone on this probe. Writes RUN_DIR/eval/reversal_errors.json, and the probe's sources and
hypotheses, one per line, to RUN_DIR/eval/without_repeats.{src,hyp}.
"""

import argparse
import json
import random
from pathlib import Path

from translate.data.corpus import synthetic_symbols
from translate.data.pipeline import load_split
from translate.decoding.inference import load_run, translate_texts
from translate.decoding.options import DecodingOptions
from translate.evaluation.evaluator import write_lines
from translate.evaluation.metrics import bleu_by_length, corpus_scores
from translate.evaluation.reversal import error_table, without_repeats
from translate.evaluation.tables import markdown_table
from translate.runtime.errors import UserError, one_line_errors

BUCKETS = [1, 10, 20, 30, 40, 50, 61]


def analyse(run: Path, buckets: list[int]) -> dict:
    model, tokenizer, cfg, _ = load_run(run)
    if cfg.data.name != "synthetic" or cfg.data.synthetic.task != "reverse":
        raise UserError(f"{run}: trained on {cfg.data.name}, not the reversal task; give a data=synthetic run")
    hyp_file = run / "eval" / "test.hyp"
    if not hyp_file.is_file():
        raise UserError(f"{hyp_file}: missing; run `make eval RUN={run}` first")
    pairs = load_split(cfg.data, "test")
    hyps = hyp_file.read_text(encoding="utf-8").splitlines()
    rng, symbols = random.Random(0), synthetic_symbols(cfg.data.synthetic)
    probe_src = [without_repeats(s, rng, symbols) for s in pairs.src]
    probe_ref = [" ".join(reversed(s.split())) for s in probe_src]
    probe_hyps = translate_texts(model, tokenizer, probe_src, DecodingOptions(), progress=False)
    for suffix, lines in (("src", probe_src), ("hyp", probe_hyps)):
        write_lines(run / "eval" / f"without_repeats.{suffix}", lines)
    return {
        "run": str(run),
        "model": cfg.model.name,
        "test": error_table(pairs.src, pairs.tgt, hyps, buckets),
        "without_repeats": {
            "bleu": corpus_scores(probe_hyps, probe_ref)["bleu"],
            "bleu_by_length": bleu_by_length(probe_src, probe_hyps, probe_ref, buckets),
            "exact": error_table(probe_src, probe_ref, probe_hyps, buckets),
        },
    }


def score(bleu: float | None) -> str:
    return "–" if bleu is None else f"{bleu:.2f}"


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    for run in args.runs:
        result = analyse(run, BUCKETS)
        (run / "eval" / "reversal_errors.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"\n{run} ({result['model']})")
        probe = result["without_repeats"]
        header = ["length", "sentences", "exact", "error at repeat sites", "elsewhere"]
        header += ["no-repeat probe: BLEU", "exact"]
        table = [
            [row["bucket"], row["sentences"], f"{row['exact_percent']} %"]
            + [f"{row['repeat_site_error_percent']} % of {row['repeat_sites']}"]
            + [f"{row['other_error_percent']} % of {row['other_positions']}", score(bleu["bleu"])]
            + [f"{pr['exact_percent']} %"]
            for row, bleu, pr in zip(result["test"], probe["bleu_by_length"], probe["exact"])
        ]
        print(markdown_table(header, table, align="l" + "r" * 6))
        print(f"no-repeat probe BLEU {probe['bleu']} (wrote {run / 'eval' / 'reversal_errors.json'})")


if __name__ == "__main__":
    main()
