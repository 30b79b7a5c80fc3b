"""scripts/gpu_check.sh's Python half: `python scripts/gpu_check.py env|bench|bench-one|peers|ttb|report`, from the
repository root (the shell script sets the environment it reads)."""

import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

ROOT, WORK, OUT = Path.cwd(), Path(os.environ["GPU_CHECK_WORK"]), Path(os.environ["GPU_CHECK_OUT"])
DRY = os.environ.get("GPU_CHECK_DRY") == "1"
sys.path.insert(0, str(ROOT / "scripts"))
TOKENIZERS = f"data.tokenizer.cache_dir={ROOT / '.gpu' / 'cache' / 'tokenizers'}"  # prepared by fetch_gpu_wheels.sh
DATASHEET_TFLOPS = 989.4  # H100 / H200 SXM, dense bf16 and fp16 (NVIDIA's datasheet)
TINY_MODEL = "model.d_model=64 model.heads=2 model.ff_dim=128 model.enc_layers=1 model.dec_layers=1"
TRAIN_SETTINGS = (  # (name, Hydra overrides): scripts/benchmark.py's rows
    [
        ("transformer", "model=transformer trainer=gpu trainer.precision=bf16"),
        ("transformer_base", "model=transformer_base trainer=gpu trainer.precision=bf16"),
        ("transformer_base", "model=transformer_base trainer=gpu trainer.precision=fp16"),
        ("transformer_big", "model=transformer_big trainer=gpu trainer.precision=bf16"),
    ]
    if not DRY
    else [
        (
            "transformer (dry)",
            f"model=transformer {TINY_MODEL} trainer.device=cpu trainer.precision=fp32 trainer.batch_tokens=1024",
        )
    ]
)
TARGETS = {  # the targets on the GPU
    "train": ("default Transformer training tokens/s, against JoeyNMT 2.3 (fp16)", 2.0),
    "mfu": ("transformer_base bf16 MFU (against the measured bf16 matmul peak)", 0.30),
    "beam5": ("beam-5 decoding sentences/s, against JoeyNMT 2.3", 3.0),
}


def left_s() -> float:
    """Seconds this section has left (gpu_check.sh's timeout), less a margin for writing results."""
    started = float(os.environ.get("GPU_CHECK_SECTION_START", time.time()))
    return float(os.environ.get("GPU_CHECK_LIMIT_S", 600)) - (time.time() - started) - 5


def append(name: str, row: dict) -> None:
    with (WORK / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def read(name: str) -> list[dict]:
    path = WORK / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(command: list[str], log: Path, timeout: float) -> str:
    """`command` with its output into `log`; its stdout's last line (a JSON row, for the --one measurements)."""
    print("  $", shlex.join(command[:12]) + (" …" if len(command) > 12 else ""), flush=True)
    with log.open("w") as f:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=f, text=True, timeout=max(timeout, 1))
    f_out = done.stdout.strip().splitlines()
    if done.returncode:
        tail = log.read_text(errors="replace")[-2500:]
        raise RuntimeError(f"{command[:4]} … failed ({done.returncode}); {log}:\n{tail}")
    return f_out[-1] if f_out else ""


# ---- env ------------------------------------------------------------------------------------------------------
def env() -> None:
    import platform

    import torch

    from translate.runtime.host import describe_host

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version()}
    info |= {"torch": torch.__version__, "cuda": torch.version.cuda, "dry": DRY, "host": describe_host()}
    source = ROOT / ".gpu" / "source.txt"
    info["source"] = source.read_text().strip().splitlines() if source.exists() else []
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        info["commit"] = commit.stdout.strip() or None
    except OSError:
        info["commit"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "capability": f"{p.major}.{p.minor}"}
        info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        info |= {"multiprocessors": p.multi_processor_count, "cudnn": torch.backends.cudnn.version()}
        try:
            version = torch.cuda.nccl.version()  # (major, minor, patch); an int on old torch
            info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            info["nccl"] = f"unknown ({type(e).__name__})"
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        try:
            info["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip().split(", ")[1]
        except (OSError, IndexError):
            info["driver"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    for name in ("hydra", "omegaconf", "datasets", "joeynmt"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            info[name] = f"not importable: {type(e).__name__}: {e}"[:200]
    (WORK / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "host"}, indent=1))


# ---- bench ----------------------------------------------------------------------------------------------------
class Utilisation:
    """NVML's utilization.gpu (the share of time a kernel ran, over its own short window), polled every 50 ms."""

    def __init__(self):
        self.samples, self.stop_flag, self.thread, self.started, self.seconds = [], threading.Event(), None, 0.0, 0.0
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML (a CPU, or no nvidia-ml-py): no figure
            self.nvml = self.handle = None

    def _poll(self):
        while not self.stop_flag.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            self.stop_flag.wait(0.05)

    def start(self):
        self.started = time.perf_counter()
        if self.handle is not None:
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()

    def stop(self) -> dict:
        self.seconds = time.perf_counter() - self.started
        if self.thread is not None:
            self.stop_flag.set()
            self.thread.join()
        mean = round(statistics.mean(self.samples), 1) if self.samples else None
        return {"gpu_util_percent": mean, "util_samples": len(self.samples), "timed_window_s": round(self.seconds, 2)}


def bench_one(setting: str, steps: int, warmup: int) -> None:
    """One training row of scripts/benchmark.py (bench_train), with the GPU's peak memory and utilisation over the
    warm-up and timed steps (from right after the FLOP count to the end)."""
    import benchmark
    import torch

    from translate.training.throughput import peak_memory_mib

    cuda = torch.cuda.is_available() and "trainer.device=cpu" not in setting
    meter = Utilisation() if cuda else None

    def first_update(trainer, report):  # the trainer's callback: from the end of its first update on
        if cuda and report.step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            meter.start()

    row = benchmark.bench_train(setting, steps, warmup, callbacks=[first_update])
    if cuda:
        row |= meter.stop()
        row["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    row["peak_rss_mib"] = round(peak_memory_mib(torch.device("cpu")), 1)
    print(json.dumps(row))


def matmul_peaks() -> dict:
    """TFLOP/s of an 8192³ matmul in bf16 and fp16 on the GPU (median of 10 after 3 warm-ups, CUDA events); on a
    CPU (dry) scripts/benchmark.py's own fp32 figure."""
    import torch

    if not torch.cuda.is_available() or DRY:
        from translate.training.throughput import measure_matmul_gflops

        return {"float32": round(measure_matmul_gflops(torch.float32, torch.device("cpu"), largest=512) / 1000, 3)}
    peaks, n = {}, 8192
    for dtype in (torch.bfloat16, torch.float16):
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        times = []
        for i in range(13):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end) / 1000)
        peaks[str(dtype).split(".")[1]] = round(2 * n**3 / statistics.median(times) / 1e12, 1)
        del a, b
    torch.cuda.empty_cache()
    return peaks


def bench() -> None:
    steps, warmup = (3, 1) if DRY else (100, 5)
    peaks = matmul_peaks()
    (WORK / "peaks.json").write_text(json.dumps(peaks) + "\n")
    print("matmul peak TFLOP/s:", peaks, flush=True)
    for i, (name, setting) in enumerate(TRAIN_SETTINGS):
        if left_s() < 30:
            print(f"  {setting}: skipped, out of time", flush=True)
            continue
        command = [sys.executable, __file__, "bench-one", f"{setting} {TOKENIZERS}", str(steps), str(warmup)]
        try:
            row = json.loads(run(command, WORK / f"bench_{i}.log", left_s()))
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            print(f"  {setting}: {e}", flush=True)
            append("bench", {"name": name, "setting": setting, "error": str(e)[-600:]})
            continue
        precision = row["precision"]
        peak = peaks.get({"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32"))
        row |= {"name": name, "setting": setting, "matmul_peak_tflops": peak}
        row["mfu"] = round(row["model_tflops"] / peak, 4) if peak else None
        gpu = json.loads((WORK / "env.json").read_text()).get("gpu", "") if (WORK / "env.json").exists() else ""
        datasheet = precision in ("bf16", "fp16") and ("H100" in gpu or "H200" in gpu)
        row["mfu_datasheet"] = round(row["model_tflops"] / DATASHEET_TFLOPS, 4) if datasheet else None
        append("bench", row)
        print("  " + json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)


# ---- peers ----------------------------------------------------------------------------------------------------
def joeynmt_on_this_gpu(config: dict) -> None:
    """bench_peers.py's JoeyNMT configuration, changed for this check: CUDA and fp16 (in the dry run neither, and the
    tiny model ours trains)."""
    config["use_cuda"] = config["fp16"] = not DRY
    if DRY:
        tiny = {"num_layers": 1, "num_heads": 2, "hidden_size": 64, "ff_size": 128}
        tiny["embeddings"] = {"embedding_dim": 64, "scale": True}
        for side in ("encoder", "decoder"):
            config["model"][side] = {**config["model"][side], **tiny}


def peers() -> None:
    """bench_peers.py's two sides for the reference Transformer on this GPU, in this one run: ours (precision auto,
    i.e. bf16 on the GPU, and fp16) and JoeyNMT 2.3 with fp16 (its `fp16: true`), the same data, tokenizer,
    batches, schedule and number of updates; each decodes the test split greedily and with beam 5."""
    import bench_peers as bp

    updates = int(os.environ.get("GPU_CHECK_PEER_UPDATES", 30 if DRY else 300))  # reports every 10: 20 at least
    (WORK / "peers_meta.json").write_text(json.dumps({"updates": updates}) + "\n")
    args = SimpleNamespace(work=WORK / "peers", updates=updates, repeats=1, dev=10 if DRY else bp.DEV_SENTENCES)
    args.peer_malloc = "system"  # JoeyNMT on glibc's malloc, as make bench-peers runs it
    args.overrides = [TOKENIZERS]
    if DRY:
        args.overrides += [*TINY_MODEL.split(), "trainer.device=cpu", "trainer.precision=fp32"]
        args.overrides += ["trainer.batch_tokens=1024", "data.test_limit=20"]
    args.work.mkdir(parents=True, exist_ok=True)
    ours, run_dir = bp.our_side("transformer", args)
    append("peers", ours)
    print("  " + json.dumps(ours), flush=True)
    cfg = bp.run_config(run_dir)
    data = bp.joeynmt_data(cfg, run_dir / "tokenizer.model", args.work, args.dev)
    sentences = len(data["refs"].read_text().splitlines())
    meta = {"updates": updates, "batch_tokens": cfg.trainer.batch_tokens, "test_sentences": sentences}
    (WORK / "peers_meta.json").write_text(json.dumps(meta) + "\n")
    try:
        peer = bp.joeynmt_side("transformer", WORK / "joeynmt-python", data, cfg, args, joeynmt_on_this_gpu)
    except Exception as e:  # noqa: BLE001 - ours in fp16 still to measure; the section fails at the end
        failed = e
        print(f"  JoeyNMT: {e}", flush=True)
    else:
        failed = None
        peer["precision"] = "fp16" if not DRY else "fp32"
        append("peers", peer)
        print("  " + json.dumps(peer), flush=True)
    if not DRY and left_s() > 40:
        fp16 = bp.our_training("transformer", f"{bp.OURS['transformer']} trainer.precision=fp16", args, "fp16")[0]
        append("peers", fp16)
        print("  " + json.dumps(fp16), flush=True)
    if failed is not None:
        raise SystemExit(f"JoeyNMT failed: {str(failed)[:300]}")


# ---- time to BLEU ---------------------------------------------------------------------------------------------
def ttb() -> None:
    """`make train trainer=gpu` on Multi30k for about a minute (what the budget leaves, validation every 250
    updates), then its best checkpoint decodes the test split through scripts/benchmark.py (greedy, beam 5)."""
    run_dir = WORK / "ttb"
    minutes = 0.1 if DRY else round(max(0.5, min(1.5, (left_s() - 60) / 60)), 2)  # 60 s: start, decoding
    overrides = ["trainer=gpu", f"trainer.max_minutes={minutes}", "trainer.warmup_steps=500", "trainer.patience=0"]
    overrides += [f"trainer.valid_every={3 if DRY else 250}", "trainer.keep_last=0", TOKENIZERS]
    if DRY:
        overrides += [*TINY_MODEL.split(), "trainer.device=cpu", "trainer.precision=fp32", "trainer.max_steps=6"]
        overrides += ["trainer.batch_tokens=1024", "data.valid_limit=20", "data.test_limit=20"]
    overrides.append(f"hydra.run.dir={run_dir}")
    make = ["make", "--no-print-directory", "train", f"VENV={WORK / 'venv'}"]
    launcher = make if subprocess.run(["make", "--version"], capture_output=True).returncode == 0 else None
    command = (launcher or [sys.executable, "-m", "translate", "train"]) + overrides
    started = time.perf_counter()
    run(command, WORK / "ttb_train.log", left_s())
    row = {"command": shlex.join(command), "wall_s": round(time.perf_counter() - started, 1), "minutes": minutes}
    row["summary"] = json.loads((run_dir / "train_summary.json").read_text())
    from time_to_bleu import time_to_bleu

    row["curve"] = time_to_bleu(run_dir)
    log = (run_dir / "train.log").read_text()
    row["start_line"] = next((line.split(" - ", 1)[-1] for line in log.splitlines() if " parameters on " in line), None)
    append("ttb", row)
    print("  " + json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    for beam in (1, 5):
        if left_s() < 20:
            break
        bench = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--one", str(beam), str(run_dir)]
        repeats = 1 if DRY else 3
        decoded = json.loads(run([*bench, "--repeats", str(repeats)], WORK / f"ttb_beam{beam}.log", left_s()))
        append("ttb", {"beam": beam, "repeats": repeats, **decoded})
        print(f"  beam {beam}: " + json.dumps(decoded), flush=True)


# ---- report ---------------------------------------------------------------------------------------------------
def pytest_result() -> dict:
    path = OUT / "pytest_cuda.xml"
    if not path.exists():
        return {"ran": False}
    suites = ET.parse(path).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    count = lambda key: sum(int(s.get(key, 0)) for s in suites)  # noqa: E731
    result = {"ran": True, "tests": count("tests"), "failures": count("failures"), "errors": count("errors")}
    result |= {"skipped": count("skipped"), "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1)}
    result["passed"] = result["tests"] - result["failures"] - result["errors"] - result["skipped"]
    bad, skips = [], []
    for case in (c for s in suites for c in s.iter("testcase")):
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                message = (found.get("message") or found.text or "").strip().splitlines()
                item = {"test": case.get("name"), "kind": kind, "message": (message[0] if message else "")[:300]}
                (skips if kind == "skipped" else bad).append(item)
    result |= {"not_passed": bad, "skips": skips}
    return result


def sections() -> list[dict]:
    path = WORK / "sections.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return [dict(zip(("section", "status", "seconds", "limit_s"), line.split("\t"), strict=True)) for line in lines]


def fmt(value, pattern="{:,.0f}", missing="–") -> str:
    return missing if value is None else pattern.format(value)


def verdict(value, least) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= least else f"missed ({value:.2f} against {least:g})"


def figures() -> dict:
    """Every section's results, read back from WORK and OUT, with the ratios to JoeyNMT and the targets' verdicts:
    gpu_figures.json."""
    info = json.loads((WORK / "env.json").read_text()) if (WORK / "env.json").exists() else {}
    bench_rows, peer_rows, ttb_rows = read("bench"), read("peers"), read("ttb")
    peaks = json.loads((WORK / "peaks.json").read_text()) if (WORK / "peaks.json").exists() else {}
    joey = next((r for r in peer_rows if r.get("tool") != "translate" and "train_tokens_per_s" in r), None)
    ours = [r for r in peer_rows if r.get("tool") == "translate"]
    if joey:
        import bench_peers as bp

        for row in ours:
            row["ratios"] = bp.ratios(row, joey)
    return {
        "env": info,
        "sections": sections(),
        "tests": pytest_result(),
        "matmul_peak_tflops": peaks,
        "train": bench_rows,
        "peers": peer_rows,
        "time_to_bleu": next((r for r in ttb_rows if "summary" in r), None),
        "ttb_decoding": {r["beam"]: r for r in ttb_rows if "beam" in r},
        "targets": targets(ours, bench_rows),
        "dry": DRY,
    }


def targets(ours: list[dict], bench_rows: list[dict]) -> list[dict]:
    """TARGETS, each with what was measured and its verdict, and whether GPU utilisation was reported."""
    default = next((r for r in ours if "beam5" in r), None)
    base = next((r for r in bench_rows if r.get("name") == "transformer_base" and r.get("precision") == "bf16"), None)
    measured = {
        "train": default["ratios"]["train_tokens_per_s"] if default and "ratios" in default else None,
        "mfu": base.get("mfu") if base else None,
        "beam5": default["ratios"].get("beam5") if default and "ratios" in default else None,
    }
    found = [
        {"target": what, "least": least, "measured": measured[key], "verdict": verdict(measured[key], least)}
        for key, (what, least) in TARGETS.items()
    ]
    utils = [r.get("gpu_util_percent") for r in bench_rows if r.get("gpu_util_percent") is not None]
    found.append(
        {
            "target": "GPU utilisation over the timed window, reported",
            "measured": utils or None,
            "verdict": "reported" if utils else "not measured",
        }
    )
    return found


def header_section(info: dict, sections: list[dict]) -> list[str]:
    """The GPU, its software, the date and source; the check's total seconds."""
    head = f"**{info.get('gpu', 'no GPU (dry run on a CPU)')}**"
    if info.get("gpu"):
        head += (
            f" ({info.get('gpu_memory_gib')} GiB, compute capability {info.get('capability')}), driver "
            f"{info.get('driver')}, CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, NCCL {info.get('nccl')}"
        )
    head += (
        f"; torch {info.get('torch')}, Triton {info.get('triton')}, Python {info.get('python')}; "
        f"{info.get('date')}; source: {'; '.join(info.get('source') or [info.get('commit') or 'unknown'])}."
    )
    total = sum(int(s["seconds"]) for s in sections if s["seconds"].isdigit())
    return [
        head,
        "",
        f"`scripts/gpu_check.sh`{' (GPU_CHECK_DRY=1: plumbing only, no GPU figures)' if DRY else ''}, "
        f"{total} s in its sections.",
        "",
    ]


def tests_section(tests: dict) -> list[str]:
    md = ["### CUDA tests (`pytest -m cuda tests/test_cuda.py`)", ""]
    if tests.get("ran"):
        md.append(
            f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped in {tests['seconds']} s."
        )
        md += [f"- {t['kind']}: `{t['test']}`: {t['message']}" for t in tests["not_passed"]]
    else:
        md.append("not run")
    return md


def training_section(peaks: dict, bench_rows: list[dict]) -> list[str]:
    from translate.evaluation.tables import markdown_table

    md = ["", "### Training speed (`scripts/benchmark.py`'s `bench_train`, Multi30k de→en, 8,000 pieces)", ""]
    if peaks:
        md.append(
            f"Matmul peak measured here ({'CPU, dry run' if DRY else '8192³ on the GPU'}, TFLOP/s): "
            + ", ".join(f"{k} {v:,}" for k, v in peaks.items())
            + f"; datasheet dense bf16/fp16 "
            f"{DATASHEET_TFLOPS:g}. MFU = model FLOPs per target token × target tokens/s ÷ that peak."
        )
        md.append("")
    header = [
        "setting",
        "parameters",
        "precision",
        "target tok/s",
        "MFU (measured peak)",
        "MFU (datasheet)",
        "peak GPU MiB (allocated / reserved)",
        "GPU util (timed steps)",
    ]
    rows = []
    for r in bench_rows:
        if "error" in r:
            rows.append([f"`{r['setting']}`", "failed", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                f"`{r['setting']}`",
                f"{r['parameters']:,}",
                r["precision"],
                f"{r['train_tokens_per_s']:,.0f}",
                fmt(r.get("mfu"), "{:.1%}"),
                fmt(r.get("mfu_datasheet"), "{:.1%}"),
                f"{fmt(r.get('peak_gpu_allocated_mib'))} / {fmt(r.get('peak_gpu_reserved_mib'))}",
                fmt(r.get("gpu_util_percent"), "{:.0f} %")
                + (f" over {r['timed_window_s']} s" if r.get("timed_window_s") else ""),
            ]
        )
    return md + [markdown_table(header, rows, align="lllrrrrr") if rows else "not measured", ""]


def peers_section(peer_rows: list[dict]) -> list[str]:
    from translate.evaluation.tables import markdown_table

    md = ["### Against JoeyNMT 2.3 on the same GPU, in this run (`make bench-peers`'s settings)", ""]
    if not peer_rows:
        return md + ["not measured", ""]
    header = [
        "tool",
        "precision",
        "train target tok/s",
        "×",
        "greedy sent/s",
        "×",
        "beam 5 sent/s",
        "×",
        "BLEU greedy / beam 5",
    ]
    rows = []
    for r in peer_rows:
        x = r.get("ratios", {})
        ratio = lambda k, x=x: f"{x[k]:.2f}×" if k in x else ""  # noqa: E731
        beams = [fmt(r[b]["sentences_per_s"], "{:,.1f}") if b in r else "" for b in ("beam1", "beam5")]
        bleu = f"{r['beam1']['bleu']:.2f} / {r['beam5']['bleu']:.2f}" if "beam1" in r and "beam5" in r else ""
        speed = f"{r['train_tokens_per_s']:,.0f}"
        rows.append(
            [
                r["tool"],
                r.get("precision", ""),
                speed,
                ratio("train_tokens_per_s"),
                beams[0],
                ratio("beam1"),
                beams[1],
                ratio("beam5"),
                bleu,
            ]
        )
    path = WORK / "peers_meta.json"
    meta = {"updates": "?", "batch_tokens": "?", "test_sentences": "?"}
    meta |= json.loads(path.read_text()) if path.exists() else {}
    md += [
        f"The reference Transformer (3 + 3 layers, d_model 256), {meta['updates']} updates of "
        f"{meta['batch_tokens']:,}-token batches each, then decoding the {meta['test_sentences']:,} test "
        "sentences once.",
        "",
    ]
    return md + [markdown_table(header, rows, align="ll" + "r" * 6 + "l"), ""]


def ttb_section(ttb_run: dict | None, ttb_decode: dict) -> list[str]:
    from translate.evaluation.tables import markdown_table

    md = ["### Time to BLEU (`make train trainer=gpu` on Multi30k)", ""]
    if not ttb_run:
        return md + ["not measured", ""]
    s = ttb_run["summary"]
    md.append(
        f"`{ttb_run['command']}`: {s['steps']:,} updates in {s['train_minutes']} min (validation "
        f"included), {s['tokens_per_s']:,.0f} target tok/s, best validation BLEU {s['best_valid_bleu']:.2f}; "
        f"the log: `{ttb_run.get('start_line')}`."
    )
    md.append("")
    curve = [[f"{p['minutes']:.2f}", f"{p['step']:,}", f"{p['bleu']:.2f}"] for p in ttb_run["curve"]]
    md += [markdown_table(["minutes", "step", "validation BLEU (greedy)"], curve, align="rrr"), ""]
    if ttb_decode:
        rows = [
            [f"beam {b}", fmt(d["sentences_per_s"], "{:,.1f}"), fmt(d["tokens_per_s"]), f"{d['bleu']:.2f}"]
            for b, d in sorted(ttb_decode.items())
        ]
        repeats = next(iter(ttb_decode.values())).get("repeats", "?")
        md += [f"Its best checkpoint on the test split (fp32 decoding, median of {repeats}):", ""]
        md += [markdown_table(["decoding", "sentences/s", "target tok/s", "test BLEU"], rows, align="lrrr"), ""]
    return md


def targets_section(targets: list[dict], sections: list[dict]) -> list[str]:
    from translate.evaluation.tables import markdown_table

    md = ["### Targets", ""]
    md += [
        f"- {t['target']}" + (f" ≥ {t['least']:g}" if "least" in t else "") + f": **{t['verdict']}**" for t in targets
    ]
    md += ["", "### Sections", ""]
    md += [
        markdown_table(
            ["section", "status", "seconds", "limit s"],
            [[s["section"], s["status"], s["seconds"], s["limit_s"]] for s in sections],
            align="llrr",
        ),
        "",
    ]
    return md


def write_doc(results: str) -> None:
    """docs/gpu.md with `results` between its markers (or appended), into OUT."""
    doc = (ROOT / "docs" / "gpu.md").read_text()
    begin, end = "<!-- gpu-check results: begin -->", "<!-- gpu-check results: end -->"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + results + "\n" + doc[doc.index(end) :]
    else:
        doc += "\n## Results\n\n" + results
    (OUT / "gpu.md").write_text(doc)


def report() -> None:
    found = figures()
    (OUT / "gpu_figures.json").write_text(json.dumps(found, indent=2) + "\n")
    md = header_section(found["env"], found["sections"]) + tests_section(found["tests"])
    md += training_section(found["matmul_peak_tflops"], found["train"]) + peers_section(found["peers"])
    md += ttb_section(found["time_to_bleu"], found["ttb_decoding"])
    md += targets_section(found["targets"], found["sections"])
    results = "\n".join(md)
    write_doc(results)
    print(results)


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    os.environ.setdefault("GPU_CHECK_SECTION_START", str(time.time()))
    if what == "bench-one":
        bench_one(rest[0], int(rest[1]), int(rest[2]))
    else:
        {"env": env, "bench": bench, "peers": peers, "ttb": ttb, "report": report}[what]()
