"""Compare finished runs: `translate report RUN_DIR… [--out DIR]`.

Writes report.{md,json} and bleu_vs_length.png from the runs' summaries and evaluations (eval/test.json, or
eval/<name>.json with --eval <name>: `--eval valid` compares candidates on the validation set and its probe),
never their weights (translate/evaluation/comparison.py says what they hold).
"""

import argparse
from pathlib import Path

from translate.config.rules import NAME
from translate.evaluation.comparison import write_reports
from translate.runtime.errors import UserError, one_line_errors


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (trained and evaluated)")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="report directory (default: runs/report)")
    parser.add_argument(
        "--eval", default="test", help="which evaluation: eval/<name>.json (default test; valid after eval.split=valid)"
    )
    args = parser.parse_args()
    plain_name, rule = NAME
    if not plain_name(args.eval):
        raise UserError(f"--eval={args.eval!r} {rule}; give an evaluation's name, like test or valid")
    print(write_reports(args.runs, args.out, args.eval).read_text())


if __name__ == "__main__":
    main()
