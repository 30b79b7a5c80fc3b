"""Where a process runs and how: device, threads, precision, the C heap, and the random streams."""

import ctypes
import ctypes.util
import random
from pathlib import Path

import torch

from translate.runtime.allocator import loaded_tcmalloc
from translate.runtime.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device=cpu")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """Intra-op threads on CPU; 0 leaves PyTorch's default (all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# trainer.adam_impl -> torch.optim.Adam's kernel: one fused kernel, one per op over all tensors, or a loop
ADAM_KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}
BF16_CPU_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}  # /proc/cpuinfo flag -> unit


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))


def bf16_units(flags: set[str] | None = None) -> list[str]:
    """The CPU's bf16 units (AVX512-BF16, AMX-BF16) among `flags` (default: this CPU's)."""
    flags = cpu_flags() if flags is None else flags
    return [unit for flag, unit in BF16_CPU_FLAGS.items() if flag in flags]


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic runs in hardware here: CUDA devices that support it, CPUs with AVX512-BF16 or AMX.
    Elsewhere PyTorch emulates it, tens of times slower than fp32 (40x measured on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(bf16_units())


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """`auto` becomes bf16 where the hardware computes in it (native_bf16), fp32 elsewhere; any other choice stays,
    checked (an unknown one, or fp16 on a CPU, is an error).  Returns (precision, why), the reason for the log."""
    if precision != "auto":
        autocast(device, precision)
        return precision, f"trainer.precision={precision}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return ("bf16", f"{name} computes in bf16") if native_bf16(device) else ("fp32", f"{name} has no bf16")
    units = bf16_units()
    if units:
        return "bf16", f"the CPU has {' and '.join(units)}"
    return "fp32", "the CPU has neither AVX512-BF16 nor AMX, where bf16 would be emulated, tens of times slower"


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CPUs with AVX512-BF16 / AMX, recent GPUs), fp16 autocast (CUDA; the trainer scales the loss
    with a GradScaler), or a no-op for fp32; `precision` is resolved (resolve_precision) first."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown trainer.precision={precision!r}; choose auto, fp32 or bf16 (fp16 on CUDA)")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.precision=fp16 needs a CUDA device (this run: {device.type}); on a CPU use bf16 or fp32"
        )
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def heap_trimmer():
    """glibc's malloc_trim, or a no-op where there is none or the process runs on tcmalloc (runtime.allocator).
    Batch shapes change every step, so glibc's heap fragments and keeps freed pages; giving them back after each
    step cuts peak RSS by up to a quarter and costs up to 30 % of the step's speed (docs/performance.md)."""
    name = None if loaded_tcmalloc() else ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim else (lambda: None)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def rng_states() -> dict:
    """The random streams training draws from (dropout, batch order), in a form a weights_only checkpoint holds;
    the GPUs' too where CUDA is in use (dropout on a GPU draws from them)."""
    states = {"torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, rank: int = 0) -> None:
    """The streams of `rng_states()`; of a data-parallel run ({"ranks": [...]}), this rank's (the last rank's
    where the run had fewer ranks)."""
    if "ranks" in states:
        states = states["ranks"][min(rank, len(states["ranks"]) - 1)]
    torch.set_rng_state(states["torch_rng"].cpu())  # a checkpoint loaded onto a GPU brings it there
    random.setstate((3, tuple(states["python_rng"]), None))
    if "cuda_rng" in states and torch.cuda.is_available():  # a run resumed on the CPU has no use for them
        gpus = min(len(states["cuda_rng"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda_rng"][:gpus]])
