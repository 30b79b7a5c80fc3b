"""Are the runs' differences more than chance: `translate significance RUN_DIR… [--out DIR] [--eval-name N]`.

The first run is the baseline; each other run's evaluated hypotheses are compared with its on the same references
(eval/<name>.{hyp,ref}) by sacreBLEU's paired bootstrap resampling and approximate randomisation, for BLEU, chrF and
chrF++; writes significance.{md,json} (translate/evaluation/paired_tests.py says what they hold).
"""

import argparse
from pathlib import Path

from translate.evaluation.paired_tests import write_significance
from translate.runtime.errors import one_line_errors


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated run directories, the baseline first")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/significance"), help="output directory (default: runs/significance)"
    )
    parser.add_argument("--eval-name", default="test", help="the evaluated set: eval/<name>.* (default: test)")
    args = parser.parse_args()
    write_significance(args.runs, args.out, args.eval_name)
    print((args.out / "significance.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out / 'significance.md'} and {args.out / 'significance.json'}")


if __name__ == "__main__":
    main()
