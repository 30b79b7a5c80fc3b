"""Speed, memory and FLOPs utilisation of training and decoding on this machine.

    python scripts/benchmark.py [RUN_DIR...] [--train "OVERRIDES" ...] [--train-steps 20] [--out docs/bench/benchmark]

Training rows: one per setting, a string of Hydra overrides of the training config
("model=transformer_ref trainer.precision=bf16"); the default settings are the three
models (the attention RNN and the Transformer in their pinned reference form of
docs/performance.md), fp32 and bf16.  For each: target
tokens/s (median over steps after warm-up, batch building included), peak resident
memory, model FLOPs per target token (counted on unpadded sentences, forward + backward)
and MFU = FLOPs/token × tokens/s ÷ this machine's matmul peak, which the script measures
itself for fp32 and bf16.  Decoding rows: one per trained RUN_DIR and engine (`--engines torch ct2
ct2-int8`: ours, its CTranslate2 export in fp32 and int8), sentences/s, target tokens/s and BLEU on its
test split for greedy and beam 5 (median of repeats).  Every
measurement runs in its own process, so peak memory is its own.  Writes <out>.json/.md.
"""

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from translate.evaluation.tables import markdown_table
from translate.runtime.allocator import describe_allocator, malloc_environment, preload_tcmalloc
from translate.runtime.host import describe_host, host_line
from translate.training.throughput import measure_matmul_gflops, peak_memory_mib

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = [  # model=rnn_attention / transformer are the reference architectures today (tests/test_configs.py)
    "model=rnn trainer.precision=fp32",
    "model=rnn_attention_ref trainer.precision=fp32",
    "model=rnn_attention_ref trainer.precision=bf16",
    "model=transformer_ref trainer.precision=fp32",
    "model=transformer_ref trainer.precision=bf16",
]


def compose_settings(setting: str, steps: int):
    from hydra import compose, initialize_config_dir

    from translate.config.schema import register_configs

    register_configs()
    overrides = [o for o in shlex.split(setting) if not o.startswith("batching=")]
    if not any(o.startswith("trainer.concat_prob=") for o in overrides):  # the corpus's pairs, as first measured
        overrides.append("trainer.concat_prob=0.0")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(
            config_name="train",
            overrides=[
                *overrides,
                f"trainer.max_steps={steps}",
                "trainer.max_minutes=0",
                "trainer.valid_every=1000000",
            ],
        )
    cfg.resume = None
    return cfg


def random_batches(trainer) -> list:
    """Token batches in random order, no length bucketing: what `batching=random` measures against."""
    from translate.data.batching import token_batches

    order = torch.randperm(len(trainer.data.store), generator=torch.Generator().manual_seed(0)).tolist()
    lengths = trainer.data.store.lengths
    return [[(order[j],) for j in b] for b in token_batches([int(lengths[i]) for i in order], trainer.tc.batch_tokens)]


def where_time_goes(trainer, batches: list, top: int = 12) -> list[dict]:
    """torch.profiler over whole training steps: the operators taking the most time of their own (self CPU time,
    children excluded), in ms per step and as a share of all operators' self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for examples in batches:
            batch = trainer.collate(examples)
            trainer.update.step([(batch, 1.0)], batch.num_tgt_tokens)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "calls_per_step": round(e.count / len(batches), 1),
            "ms_per_step": round(e.self_cpu_time_total / 1000 / len(batches), 2),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in ranked
    ]


class UpdateClock:
    """A trainer callback (translate/training/trainer.py): each update's target tokens/s after `warmup` updates, from
    the end of the one before to its own end (batch building, the update, the loop's own work), its batch building
    time and padding; asks the trainer to stop (GracefulStop's `requested`) after warmup + steps updates."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.last_step, self.requested = warmup, warmup + steps, False
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.rates, self.build_ms, self.real, self.padded, self.since = [], [], 0, 0, time.perf_counter()

    def __call__(self, trainer, report) -> None:
        self.sync()
        now = time.perf_counter()
        if report.step > self.warmup:
            self.rates.append(report.tokens / (now - self.since))
            self.build_ms.append(1000 * report.batch_seconds)
            self.real, self.padded = self.real + report.tokens, self.padded + report.padded_tokens
        self.since, self.requested = now, report.step >= self.last_step


def bench_train(setting: str, steps: int, warmup: int, profile_steps: int = 0, callbacks=()) -> dict:
    """One training row: `steps` updates after `warmup`, measured by the trainer's own loop (UpdateClock); the
    trainer's FLOPs per token; `callbacks` see the updates too."""
    from translate.training.trainer import Trainer

    cfg = compose_settings(setting, warmup + steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, callbacks=callbacks)
        clock = UpdateClock(warmup, steps, trainer.device)
        trainer.callbacks.append(clock)
        if "batching=random" in setting:
            order = random_batches(trainer)
            trainer.epoch_batches = lambda: order
        trainer.fit(stop=clock)  # stopped by the clock: neither validated nor saved
        order = trainer.epoch_batches()
        profiled = (
            where_time_goes(trainer, [order[(warmup + steps + k) % len(order)] for k in range(profile_steps)])
            if profile_steps
            else None
        )
        trainer.close()
    tokens_per_s = statistics.median(clock.rates)
    return {
        **({"profile": profiled} if profiled else {}),
        "parameters": trainer.num_parameters,
        "precision": trainer.precision,
        "threads": torch.get_num_threads(),
        "train_tokens_per_s": round(tokens_per_s, 1),
        "collate_ms": round(statistics.median(clock.build_ms), 2),
        "target_padding": round(1 - clock.real / clock.padded, 4),
        "gflops_per_token": round(trainer.flops_per_token / 1e9, 4),
        "model_tflops": round(trainer.flops_per_token * tokens_per_s / 1e12, 4),
    }


def bench_decode(run: Path, beam: int, repeats: int, engine: str = "torch") -> dict:
    """Decoding speed and BLEU on the run's test split; engine `torch` (ours), `ct2` or `ct2-<quantization>`
    (its CTranslate2 export, made here when missing)."""
    import sacrebleu
    from omegaconf import OmegaConf

    from translate.config.schema import EvalConfig
    from translate.data.pipeline import load_split
    from translate.decoding.inference import load_run, translate_texts
    from translate.decoding.options import DecodingOptions

    model, tokenizer, cfg, _ = load_run(run)
    ec = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"beam_size": beam})
    test = load_split(cfg.data, "test")
    options = DecodingOptions.of(ec)
    decode = lambda: translate_texts(model, tokenizer, test.src, options, progress=False)
    if engine != "torch":
        from translate.decoding.ct2 import load_export
        from translate.decoding.ct2_export import METADATA, export_dir, export_run

        quantization = engine.partition("-")[2] or "none"
        if not (export_dir(run, quantization) / METADATA).exists():
            export_run(run, ec.checkpoint, quantization)
        del model
        ct2 = load_export(run, quantization, ec)
        decode = lambda: translate_texts(ct2, ct2.tokenizer, test.src, options, progress=False)
    times, outputs = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = decode()
        times.append(time.perf_counter() - started)
    tokens = sum(len(t) + 1 for t in tokenizer.encode(outputs))  # target subwords + EOS
    seconds = statistics.median(times)
    return {
        "sentences_per_s": round(len(test.src) / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "seconds": round(seconds, 2),
        "bleu": round(sacrebleu.corpus_bleu(outputs, [test.tgt]).score, 2),
    }


def split_setting(setting: str) -> tuple[dict, str]:
    """`TRANSLATE_MALLOC=system model=rnn` -> ({"TRANSLATE_MALLOC": "system"}, "model=rnn"): leading upper-case
    assignments are the measuring process's environment, the rest Hydra overrides."""
    words = shlex.split(setting)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, shlex.join(words)


def run_isolated(args: list[str], env: dict | None = None) -> dict:
    """`--one <args>` in a process of its own, with `env` added to this one's environment; TRANSLATE_MALLOC=system
    also takes tcmalloc out of LD_PRELOAD (this process preloaded it for its children)."""
    environment = {**os.environ, **(env or {})}
    if environment.get("TRANSLATE_MALLOC") == "system":
        environment = malloc_environment(environment, None)
    command = [sys.executable, __file__, "--one", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_one(what: str, target: str, args) -> dict:
    if what == "peak":
        cpu = torch.device("cpu")
        result = {
            dtype: round(measure_matmul_gflops(getattr(torch, dtype), cpu), 1) for dtype in ("float32", "bfloat16")
        }
    elif what == "train":
        result = bench_train(target, args.train_steps, args.warmup, args.profile)
    else:
        result = bench_decode(Path(target), int(what), args.repeats, args.engine)
    return {**result, "peak_rss_mib": round(peak_memory_mib(torch.device("cpu")), 1), "allocator": describe_allocator()}


def markdown(machine: dict, train_rows: list[dict], decode_rows: list[dict], args) -> str:
    header = ["training setting", "parameters", "target tok/s", "peak MiB", "GFLOP / token", "MFU", "target padding"]
    rows = [
        [f"`{r['setting']}`", f"{r['parameters']:,}", f"{r['train_tokens_per_s']:,.0f}", f"{r['peak_rss_mib']:,.0f}"]
        + [f"{r['gflops_per_token']:.3f}", f"{r['mfu']:.1%}", f"{r['target_padding']:.1%}", f"{r['collate_ms']:.1f}"]
        for r in train_rows
    ]
    lines = [
        f"Host: {host_line(machine)}; matmul peak {machine['peak_gflops']['float32']:,.0f} GFLOP/s fp32, "
        f"{machine['peak_gflops']['bfloat16']:,.0f} GFLOP/s bf16. "
        f"Medians; training: {args.train_steps} steps after {args.warmup} warm-up, batch building included.",
        "",
        markdown_table([*header, "batch build ms"], rows, align="l" + "r" * 7),
    ]
    for r in train_rows:
        if r.get("profile"):
            lines += ["", f"Where a training step's time goes, `{r['setting']}` (torch.profiler, self CPU time):", ""]
            ops = [
                [f"`{p['op']}`", f"{p['calls_per_step']:g}", f"{p['ms_per_step']:,.1f}", f"{p['share']:.1%}"]
                for p in r["profile"]
            ]
            lines.append(markdown_table(["operator", "calls / step", "ms / step", "share"], ops, align="lrrr"))
    if decode_rows:
        header = ["decoding (test split)", "engine"]
        header += [f"beam {b} {what}" for b in args.beams for what in ("sent/s", "tok/s", "BLEU")] + ["peak MiB"]
        rows = []
        for r in decode_rows:
            cells = [
                cell
                for d in (r[f"beam{b}"] for b in args.beams)
                for cell in (f"{d['sentences_per_s']:,.1f}", f"{d['tokens_per_s']:,.0f}", f"{d['bleu']:.2f}")
            ]
            peak = max(r[f"beam{b}"]["peak_rss_mib"] for b in args.beams)
            rows.append([f"{r['model']} (`{r['run']}`)", r.get("engine", "torch"), *cells, f"{peak:,.0f}"])
        lines += ["", markdown_table(header, rows, align="ll" + "rrr" * len(args.beams) + "r")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="trained run directories to decode with")
    parser.add_argument("--train", nargs="*", default=None, help="training settings (Hydra overrides, one string each)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="profile N more training steps: where the time goes")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "benchmark")
    parser.add_argument(
        "--engines", nargs="+", default=["torch"], help="decoding engines: torch, ct2, ct2-int8 (CTranslate2 exports)"
    )
    parser.add_argument("--engine", default="torch", help=argparse.SUPPRESS)  # with --one
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(*args.one, args)))
        return
    common = ["--train-steps", str(args.train_steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    common += ["--profile", str(args.profile)]
    peak = run_isolated(["peak", "-", *common])
    machine = {**describe_host(), "peak_gflops": {k: peak[k] for k in ("float32", "bfloat16")}}
    train_rows, decode_rows = [], []
    for setting in DEFAULT_TRAIN if args.train is None else args.train:
        env, overrides = split_setting(setting)
        row = {"setting": setting, **run_isolated(["train", overrides, *common], env)}
        peak_flops = machine["peak_gflops"]["bfloat16" if row["precision"] == "bf16" else "float32"] * 1e9
        row["mfu"] = round(row["model_tflops"] * 1e12 / peak_flops, 4)
        train_rows.append(row)
        print(json.dumps(row), flush=True)
    for run in args.runs:
        for engine in args.engines:
            row = {"run": str(run), "model": json.loads((run / "train_summary.json").read_text())["model"]}
            row["engine"] = engine
            for beam in args.beams:
                row[f"beam{beam}"] = run_isolated([str(beam), str(run), *common, "--engine", engine])
            decode_rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "train": train_rows, "decode": decode_rows}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(machine, train_rows, decode_rows, args)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    preload_tcmalloc()  # as the project's commands do (translate.runtime.allocator); TRANSLATE_MALLOC=system: glibc's
    main()
