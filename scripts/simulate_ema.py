"""Approximate, from a finished run's numbered checkpoints, the weights' moving average a run with
trainer.ema_decay=D would have kept — to choose D on the validation set without training again.

    python scripts/simulate_ema.py RUN_DIR D [--warmup] [--out NAME]
    make eval RUN=RUN_DIR eval.checkpoint=NAME eval.src=<valid source> eval.ref=<valid reference>

Between two kept checkpoints (steps s < s') the average decays by the product of the per-update decays of
updates s+1 … s' and takes the rest from the checkpoint at s' (the updates in between are not on disk: this
is the coarse version of what training does every update). `--warmup` uses the trainer's decay
(translate/training/update.py warmed_up_decay); without it, the plain constant D. The first checkpoint
starts the average. Writes RUN_DIR/NAME.pt (default emasim_D[_warmup]) with the averaged weights.
"""

import argparse
import math
from pathlib import Path

from translate.runtime.checkpoints import load_checkpoint, numbered_checkpoints, save_checkpoint
from translate.training.update import warmed_up_decay


def decay_between(decay: float, start: int, end: int, warmup: bool) -> float:
    """The product of the per-update decays of updates start+1 … end."""
    if not warmup:
        return decay ** (end - start)
    return math.prod(warmed_up_decay(decay, t) for t in range(start + 1, end + 1))


def simulate(run: Path, decay: float, warmup: bool) -> dict:
    average, ckpt, previous = None, None, 0
    for path in numbered_checkpoints(run):
        step, ckpt = int(path.stem[len("step_") :]), load_checkpoint(path)
        weights = {name: t.double() if t.is_floating_point() else t for name, t in ckpt["model"].items()}
        if average is None:
            average = weights
        else:
            a = decay_between(decay, previous, step, warmup)
            average = {n: a * average[n] + (1 - a) * t if t.is_floating_point() else t for n, t in weights.items()}
        previous = step
    if ckpt is None:
        raise SystemExit(f"{run}: no step_<N>.pt; train with trainer.keep_last=100 to keep every validation's")
    ckpt["model"] = {name: t.to(ckpt["model"][name].dtype) for name, t in average.items()}
    ckpt.pop("ema", None)
    return ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("decay", type=float)
    parser.add_argument("--warmup", action="store_true", help="the trainer's warming-up decay")
    parser.add_argument("--out", help="checkpoint name in the run directory")
    args = parser.parse_args()
    out = args.out or f"emasim_{args.decay}{'_warmup' if args.warmup else ''}"
    save_checkpoint(simulate(args.run, args.decay, args.warmup), args.run / f"{out}.pt")
    print(f"wrote {args.run / out}.pt")


if __name__ == "__main__":
    main()
