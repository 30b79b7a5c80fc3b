"""How fast training runs, as every run reports it (train.log, TensorBoard) and the benchmarks read it.

    flops = flops_per_target_token(model, batches, tc, autocast)   model FLOPs (forward + backward) per target token
    peak = matmul_peak_gflops(torch.float32, device)                 this machine's matmul ceiling, cached per host
    mfu = flops * tokens_per_s / (peak * 1e9 * ranks)                model FLOPs utilisation
    peak_memory_mib(device)                                           the process's peak (CPU: resident; GPU: allocated)

The FLOPs are counted by torch's FlopCounterMode on a copy of the model, sentence by sentence (no padding), with
SDPA as countable matmuls: the model, its buffers (hard attention's baseline) and every random state are untouched,
so a run that reports them trains as one that does not.
"""

import copy
import hashlib
import json
import logging
import resource
import statistics
import time

import torch

from translate.data.corpus import PROJECT_ROOT
from translate.data.tokenizer import PAD
from translate.models.loss import sequence_loss
from translate.runtime.files import UnsafePath, read_json, write_text
from translate.runtime.host import cpu_model

log = logging.getLogger(__name__)

PEAK_CACHE = PROJECT_ROOT / "data" / "cache" / "host"  # one small JSON per host, dtype, device and thread count
FLOPS_SAMPLE = 16  # sentences whose FLOPs are counted, once per run
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_throughput(trainer, step_batch: list) -> tuple[float | None, float | None]:
    """What a trainer's MFU is reported against: FLOPs per target token, counted on FLOPS_SAMPLE sentences of
    `step_batch` (examples), and on rank 0 the matmul peak of its precision (None elsewhere).  (None, None), with a
    warning, for a model torch's counter cannot follow (hard attention).  Neither changes what training does."""
    try:
        batches = [trainer.collate([example]) for example in step_batch[:FLOPS_SAMPLE]]
        flops = flops_per_target_token(trainer.model, batches, trainer.tc, trainer.autocast) or None
        peak = matmul_peak_gflops(PEAK_DTYPES[trainer.precision], trainer.device) if trainer.main else None
        return flops, peak
    except Exception as e:
        log.warning("MFU not reported: %s: %s", type(e).__name__, str(e).splitlines()[0][:200])
        return None, None


def flops_per_target_token(model, batches: list, tc, autocast) -> float:
    """Model FLOPs of one training update (forward and backward, label-smoothed loss) per target token."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    twin, device = copy.deepcopy(model), next(model.parameters()).device
    flops, tokens = 0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch in batches:
            with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):  # MATH: countable matmuls
                with autocast():
                    loss, _ = sequence_loss(twin, batch, tc.label_smoothing, PAD, tc.loss_chunk)
                loss.backward()
            flops, tokens = flops + counter.get_total_flops(), tokens + batch.num_tgt_tokens
    return flops / max(1, tokens)


def measure_matmul_gflops(
    dtype: torch.dtype, device: torch.device, largest: int | None = None, repeats: int = 5, slow_s: float = 0.25
) -> float:
    """Median GFLOP/s of a square matmul.  The size doubles from 512 (to `largest`: 2,048 on a CPU, 8,192 on a GPU)
    while one product takes under `slow_s` (emulated bf16 on an AVX2-only CPU takes seconds at 2,048)."""
    size, largest = 256, largest or (8192 if device.type == "cuda" else 2048)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    while True:
        size *= 2
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up (oneDNN primitive creation, cuBLAS handles)
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        if size >= largest or time.perf_counter() - started > slow_s:
            break
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device) -> float:
    """measure_matmul_gflops, measured once per host, dtype, device and torch threads (a second or two), then read
    from data/cache/host/."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    key = f"{where}|{device.type}|{dtype}|{torch.get_num_threads()}|{torch.__version__}"
    path = PEAK_CACHE / f"matmul_{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        cached = read_json(path) if path.is_file() else None
    except (UnsafePath, OSError):
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("gflops"), float):
        if cached["gflops"] > 0:
            return cached["gflops"]
    gflops = measure_matmul_gflops(dtype, device)
    try:
        write_text(path, json.dumps({"key": key, "gflops": gflops}) + "\n")
    except OSError as e:  # a read-only checkout measures again next time
        log.debug("matmul peak not cached (%s)", e)
    return gflops


def peak_memory_mib(device: torch.device) -> float:
    """The process's peak so far: resident memory on a CPU, memory allocated by torch on a GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
