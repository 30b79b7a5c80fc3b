"""Choose the beam size and length penalty of a trained run on its validation set (never on the test set).

    python scripts/tune_decoding.py RUN_DIR [--beams 1,5,8] [--alphas 0,0.6,1,1.5] [--checkpoint best]
    make eval RUN=RUN_DIR eval.beam_size=B eval.length_penalty=A     # the chosen pair, on the test set

Decodes the run's validation split once per (beam size, GNMT alpha) pair — greedy search once, alpha
being a beam-search setting — and scores each with sacreBLEU on the raw references. The best BLEU wins;
a tie goes to the smaller beam, then the smaller alpha. Prints the grid and writes it, with the choice,
to RUN_DIR/eval/decoding_on_valid.json (best.pt) or decoding_on_valid_<checkpoint>.json (any other);
points an earlier call tried on the same weights stay in the file and in the choice.
"""

import argparse
import json
from pathlib import Path

from translate.data.pipeline import load_split
from translate.decoding.inference import load_run, translate_texts
from translate.decoding.options import DecodingOptions
from translate.evaluation.metrics import corpus_scores
from translate.runtime.checkpoints import TrainState
from translate.runtime.errors import one_line_errors


def grid(beams: list[int], alphas: list[float]) -> list[tuple[int, float]]:
    """Every (beam, alpha) pair; greedy search (beam 1) once, at alpha 0."""
    pairs = [(beam, alpha) for beam in sorted(set(beams)) for alpha in sorted(set(alphas))]
    return [(b, a) for b, a in pairs if b > 1] + ([(1, 0.0)] if 1 in beams else [])


def tune(run: Path, beams: list[int], alphas: list[float], checkpoint: str = "best", progress: bool = True) -> dict:
    model, tokenizer, cfg, ckpt = load_run(run, checkpoint)
    pairs = load_split(cfg.data, "valid")
    rows = []
    for beam, alpha in grid(beams, alphas):
        ec = DecodingOptions(beam_size=beam, length_penalty=alpha)
        hyps = translate_texts(model, tokenizer, pairs.src, ec, progress=progress)
        scores = corpus_scores(hyps, pairs.tgt)
        rows.append({"beam_size": beam, "length_penalty": alpha, "bleu": scores["bleu"], "chrf": scores["chrf"]})
        print(f"beam {beam:2d}  alpha {alpha:4.2f}  BLEU {scores['bleu']:6.2f}  chrF {scores['chrf']:6.2f}", flush=True)
    return {
        "run": str(run),
        "checkpoint": checkpoint,
        "step": TrainState.from_checkpoint(ckpt).step,
        "averaged_steps": ckpt.get("averaged_steps"),
        "split": "valid",
        "sentences": len(pairs),
        "bleu_signature": scores["bleu_signature"],
        "grid": rows,
        "best": choose(rows),
    }


def choose(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["bleu"], -r["beam_size"], -r["length_penalty"]))


def merge(result: dict, earlier: dict) -> dict:
    """An earlier grid of the same weights keeps its other (beam, alpha) points; a point tried again is replaced."""
    same = ("checkpoint", "step", "averaged_steps", "split", "sentences", "bleu_signature")
    if any(earlier.get(key) != result[key] for key in same):
        return result
    tried = {(r["beam_size"], r["length_penalty"]) for r in result["grid"]}
    rows = [r for r in earlier["grid"] if (r["beam_size"], r["length_penalty"]) not in tried] + result["grid"]
    return {**result, "grid": rows, "best": choose(rows)}


def result_path(run: Path, checkpoint: str) -> Path:
    """Where a checkpoint's grid goes: one file per checkpoint, so tuning `averaged` keeps best.pt's grid."""
    name = Path(checkpoint).stem
    return run / "eval" / ("decoding_on_valid.json" if name == "best" else f"decoding_on_valid_{name}.json")


def numbers(kind):
    return lambda text: [kind(x) for x in text.split(",")]


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--beams", type=numbers(int), default=[1, 4, 5, 8], help="comma-separated beam sizes")
    parser.add_argument("--alphas", type=numbers(float), default=[0.0, 0.6, 1.0, 1.5], help="GNMT length penalties")
    parser.add_argument("--checkpoint", default="best", help="best | last | averaged | a .pt path")
    args = parser.parse_args()
    if min(args.beams) < 1 or min(args.alphas) < 0:
        parser.error("beam sizes are >= 1 and length penalties >= 0")
    result = tune(args.run, args.beams, args.alphas, args.checkpoint)
    out = result_path(args.run, args.checkpoint)
    if out.exists():
        result = merge(result, json.loads(out.read_text()))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    b = result["best"]
    print(f"best on valid: BLEU {b['bleu']} with beam {b['beam_size']}, alpha {b['length_penalty']} (wrote {out})")
    print(
        f"on test: make eval RUN={args.run} eval.beam_size={b['beam_size']} eval.length_penalty={b['length_penalty']}"
    )


if __name__ == "__main__":
    main()
