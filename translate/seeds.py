"""The comparison over seeds: how much of a result is the seed's.

`python -m translate.seeds REPORT… [--out DIR]` reads the report.json of each seed's comparison (written by
translate.report; a report directory works too) and gives, per model and length bucket, the mean and standard
deviation of BLEU over the seeds; the growth of each attention model's lead over `rnn` as mean ± std beside
every seed's own paired-bootstrap interval; and the figure with a band (min to max over seeds) around each
curve.  It reads reports, never run directories, so a seed finished in an earlier session counts through its
committed report.  `make compare SEEDS=3` writes one report per seed and this one (translate.report).
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
