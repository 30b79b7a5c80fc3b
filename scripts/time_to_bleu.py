"""Validation BLEU against wall-clock training minutes, read back from a run's TensorBoard events.

    python scripts/time_to_bleu.py RUN_DIR [RUN_DIR...] [--png curve.png]

Prints one markdown table per run: minutes of training (validation included), step and
greedy validation BLEU at every validation, as the trainer logged them
(`valid/bleu_by_train_second` in tensorboard/by_time, and `valid/bleu`); `--png` also draws the runs' curves.
"""

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from translate.evaluation.plots import plt
from translate.evaluation.tables import markdown_table


def scalars(directory: Path, tag: str) -> list:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(tag)


def time_to_bleu(run: Path) -> list[dict]:
    by_step = scalars(run / "tensorboard", "valid/bleu")
    # the time axis has its own event files (tensorboard/by_time) since resumed runs drop the killed run's tail
    by_time = run / "tensorboard" / "by_time"
    by_second = scalars(by_time if by_time.is_dir() else run / "tensorboard", "valid/bleu_by_train_second")
    if len(by_step) != len(by_second):
        raise ValueError(f"{run}: {len(by_step)} valid/bleu points but {len(by_second)} by training second")
    return [{"minutes": s.step / 60, "step": b.step, "bleu": b.value} for b, s in zip(by_step, by_second)]


def draw(curves: dict[str, list[dict]], path: Path) -> None:
    """Validation BLEU (y) against training minutes (x), one line per run."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, rows in curves.items():
        ax.plot([r["minutes"] for r in rows], [r["bleu"] for r in rows], marker=".", label=name)
    ax.set(xlabel="training minutes (validation included)", ylabel="validation BLEU (greedy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, help="also draw the curves into this PNG file")
    args = parser.parse_args()
    curves = {str(run): time_to_bleu(run) for run in args.runs}
    for run, rows in curves.items():
        table = [[f"{row['minutes']:.2f}", row["step"], f"{row['bleu']:.2f}"] for row in rows]
        print(f"\n{run}\n\n" + markdown_table(["minutes", "step", "valid BLEU"], table, align="rrr"))
    if args.png:
        draw(curves, args.png)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
