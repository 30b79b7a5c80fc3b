"""Data parallel ranks against threads on one machine, measured in one run.

    python scripts/bench_ranks.py [--steps 60] [--ranks 2] [--out docs/bench/ranks]

Trains the default Transformer on Multi30k de→en for --steps updates of the same effective batch
(ranks × 2,048 tokens per update) two ways, one after the other: torchrun with --ranks ranks of
1 thread each, and one process with --ranks threads.  Prints and writes <out>.md / <out>.json:
target tokens/s (the runs' own count: tokens over training seconds, validation excluded), the
peak RSS of the largest process, and the host.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from measure import run_measured

from translate.evaluation.tables import markdown_table
from translate.runtime.host import describe_host, host_line

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["trainer.valid_every=100000", "trainer.valid_bleu_sentences=20", "trainer.max_minutes=0"]


def train(run_dir: Path, steps: int, ranks: int, threads: int, batch_tokens: int) -> dict:
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command = [*launcher, "-m", "translate", "train", *SETTINGS, f"trainer.max_steps={steps}"]
    command += [f"trainer.threads={threads}", f"trainer.batch_tokens={batch_tokens}", f"hydra.run.dir={run_dir}"]
    done = run_measured(command, cwd=ROOT)  # the peak of the largest process it started, ranks included
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return {
        "ranks": ranks,
        "threads_per_rank": threads,
        "batch_tokens_per_rank": batch_tokens,
        "steps": summary["steps"],
        "target_tokens": summary["target_tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "wall_s": round(done.seconds, 1),
        "peak_rss_mb_largest_process": round(done.peak_rss_mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "ranks")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks, threads, tokens in ((args.ranks, 1, 2048), (1, args.ranks, 2048 * args.ranks)):
            row = train(Path(tmp) / f"ranks{ranks}", args.steps, ranks, threads, tokens)
            rows.append(row)
            print(row, flush=True)
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    result = {"host": describe_host(), "rows": rows, "ranks_over_threads": round(ratio, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    header = ["ranks × threads", "tokens per rank per batch", "target tokens/s", "peak RSS, largest process (MB)"]
    table = [
        [f"{r['ranks']} × {r['threads_per_rank']}", f"{r['batch_tokens_per_rank']:,}", f"{r['tokens_per_s']:,.0f}"]
        + [f"{r['peak_rss_mb_largest_process']:,}"]
        for r in rows
    ]
    lines = [
        f"# {args.ranks} ranks × 1 thread against 1 process × {args.ranks} threads",
        "",
        f"Host: {host_line(result['host'])}. Default Transformer, Multi30k de→en, {args.steps} updates of "
        f"{args.ranks} × 2,048 tokens each way, one after the other (`python scripts/bench_ranks.py`).",
        "",
        markdown_table(header, table),
        "",
        f"Ranks over threads: {ratio:.2f}×.",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
