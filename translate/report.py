"""Compare finished runs: `python -m translate.report RUN_DIR… [--out DIR]`.

Writes report.{md,json} and bleu_vs_length.png from the runs' summaries and evaluations, never their
weights (translate/evaluation/comparison.py says what they hold).
"""

import argparse
from pathlib import Path

from translate.evaluation.comparison import write_reports
from translate.runtime.errors import one_line_errors


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (trained and evaluated)")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="report directory (default: runs/report)")
    args = parser.parse_args()
    print(write_reports(args.runs, args.out).read_text())


if __name__ == "__main__":
    main()
