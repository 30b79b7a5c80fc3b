"""Compare finished runs: a markdown table, a JSON of the same figures and the BLEU-vs-length plot.

`python -m translate.report RUN_DIR… [--out DIR]` reads each run's
train_summary.json, eval/test.json and the probe's texts eval/test_probe.{src,ref,hyp}
(written by training and evaluation) and never loads weights.  Hydra multirun calls
`ReportCallback` when a sweep ends.
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
