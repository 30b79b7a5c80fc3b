"""The spread of finished comparisons over seeds: `translate seeds REPORT… [--out DIR]`.

Reads each seed's report.json (or its directory) and writes seeds.{md,json} and the band figure
(translate/evaluation/spread.py says what they hold).
"""

import argparse
from pathlib import Path

from translate.evaluation.spread import write_seeds_report
from translate.runtime.errors import one_line_errors


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="each seed's report.json (or its directory)")
    parser.add_argument("--out", type=Path, default=Path("runs/report_seeds"), help="where seeds.{md,json} go")
    args = parser.parse_args()
    write_seeds_report(args.reports, args.out)
    print((args.out / "seeds.md").read_text())


if __name__ == "__main__":
    main()
