"""Validation BLEU against wall-clock training minutes, read back from a run's TensorBoard events.

    python scripts/time_to_bleu.py RUN_DIR [RUN_DIR...]

Prints one markdown table per run: minutes of training (validation included), step and
greedy validation BLEU at every validation, as the trainer logged them
(`valid/bleu_by_train_second` and `valid/bleu`).
"""

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def time_to_bleu(run: Path) -> list[dict]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    by_step = [e for e in events.Scalars("valid/bleu")]
    by_second = [e for e in events.Scalars("valid/bleu_by_train_second")]
    if len(by_step) != len(by_second):
        raise ValueError(f"{run}: {len(by_step)} valid/bleu points but {len(by_second)} by training second; was the run resumed?")
    return [{"minutes": s.step / 60, "step": b.step, "bleu": b.value} for b, s in zip(by_step, by_second)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        print(f"\n{run}\n\n| minutes | step | valid BLEU |\n|---:|---:|---:|")
        for row in time_to_bleu(run):
            print(f"| {row['minutes']:.2f} | {row['step']} | {row['bleu']:.2f} |")


if __name__ == "__main__":
    main()
