"""Speed and memory of training and decoding, per model, on this machine.

    python scripts/benchmark.py RUN_DIR... [--train-steps 20] [--repeats 3] [--out docs/benchmark]

For each trained run: training target tokens/s (median over steps after warm-up,
batch building included, on the run's own config and data), decoding sentences/s and
target tokens/s on the run's test split for greedy and beam 5 (median of repeats),
and the peak resident memory of each measurement (each runs in its own process).
Writes <out>.json and <out>.md.
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_train(run: Path, steps: int, warmup: int) -> dict:
    from translate.config import train_config
    from translate.trainer import Trainer

    cfg = train_config(run / "config.yaml")
    cfg.resume = None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        order = trainer.epoch_batches()
        rates = []
        for i in range(warmup + steps):
            started = time.perf_counter()
            batch = trainer.collate(order[i % len(order)])
            trainer.train_step(batch)[0].item()  # wait for the step to finish
            if i >= warmup:
                rates.append(batch.num_tgt_tokens / (time.perf_counter() - started))
        trainer.writer.close()
    return {"train_tokens_per_s": round(statistics.median(rates), 1), "parameters": trainer.num_parameters}


def bench_decode(run: Path, beam: int, repeats: int) -> dict:
    from omegaconf import OmegaConf

    from translate.config import EvalConfig
    from translate.data.corpus import load_split
    from translate.evaluate import load_run, translate_texts

    model, tokenizer, cfg, _ = load_run(run)
    ec = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"beam_size": beam})
    sources = load_split(cfg.data, "test").src
    times, outputs = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = translate_texts(model, tokenizer, sources, ec, progress=False)
        times.append(time.perf_counter() - started)
    tokens = sum(len(t) + 1 for t in tokenizer.encode(outputs))  # target subwords + EOS
    seconds = statistics.median(times)
    return {"sentences_per_s": round(len(sources) / seconds, 1), "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2)}


def run_isolated(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmark"))
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        what, run = args.one[0], Path(args.one[1])
        result = bench_train(run, args.train_steps, args.warmup) if what == "train" else bench_decode(run, int(what), args.repeats)
        print(json.dumps({**result, "peak_rss_mib": round(peak_rss_mib(), 1)}))
        return
    common = ["--train-steps", str(args.train_steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    rows = []
    for run in args.runs:
        row = {"run": str(run), "model": json.loads((run / "train_summary.json").read_text())["model"]}
        row["train"] = run_isolated(["train", str(run), *common])
        for beam in args.beams:
            row[f"beam{beam}"] = run_isolated([str(beam), str(run), *common])
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [
        f"torch {machine['torch']}, {machine['threads']} threads, fp32; medians. Training: {args.train_steps} steps after "
        f"{args.warmup} warm-up; decoding: test split, {args.repeats} repeats.",
        "",
        "| model | parameters | train tok/s | train peak MiB | "
        + " | ".join(f"beam {b} sent/s | beam {b} tok/s" for b in args.beams)
        + " | decode peak MiB |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(args.beams) + "---:|",
    ]
    for r in rows:
        decode = " | ".join(f"{r[f'beam{b}']['sentences_per_s']:,.1f} | {r[f'beam{b}']['tokens_per_s']:,.0f}" for b in args.beams)
        peak = max(r[f"beam{b}"]["peak_rss_mib"] for b in args.beams)
        lines.append(
            f"| {r['model']} | {r['train']['parameters']:,} | {r['train']['train_tokens_per_s']:,.0f} | "
            f"{r['train']['peak_rss_mib']:,.0f} | {decode} | {peak:,.0f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
