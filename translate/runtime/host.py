"""The machine a measurement ran on, described one way for every benchmark: the CPU's model and the feature flags
that decide its speed (AVX2, AVX-512, the bf16 units AVX512-BF16 and AMX), CPUs, torch's threads, memory, torch and
the allocator the project's commands run on.

    describe_host() -> dict        for a report's JSON
    host_line(host) -> str         one line for its markdown
"""

import os
import platform
import sys
from pathlib import Path

import torch

from translate.runtime.allocator import OPT_OUT, describe_allocator, find_tcmalloc, loaded_tcmalloc
from translate.runtime.device import bf16_units, cpu_flags

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo flags behind matmul speed


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    found = (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    return next(found, None) or platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """The machine's memory (MemTotal of /proc/meminfo) in GiB, None where there is no /proc/meminfo."""
    try:
        info = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in info.splitlines() if line.startswith("MemTotal:")), None)
    return None if kib is None else round(kib / 2**20, 1)


def commands_allocator() -> str:
    """The allocator `python -m translate.<command>` runs on here (describe_allocator's words): this process's where
    it preloaded tcmalloc or opted out of it, else tcmalloc where installed, since every command preloads it."""
    found = find_tcmalloc()
    if loaded_tcmalloc() or os.environ.get(OPT_OUT) == "system" or not found or not sys.platform.startswith("linux"):
        return describe_allocator()
    return f"tcmalloc ({Path(found).name})"


def describe_host() -> dict:
    """This machine: CPU model, its speed flags (SPEED_FLAGS present) and bf16 units, logical CPUs (and those this
    process may run on), torch's intra-op threads, memory in GiB, torch's version and the commands' allocator."""
    flags = cpu_flags()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "flags": [flag for flag in SPEED_FLAGS if flag in flags],
        "bf16_units": bf16_units(flags),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": torch.get_num_threads(),
        "memory_gib": memory_gib(),
        "torch": torch.__version__,
        "allocator": commands_allocator(),
    }


def host_line(host: dict | None = None) -> str:
    """One line for a report, e.g. `AMD EPYC (avx2; no bf16 units), 2 CPUs, 2 threads, 23.5 GiB, torch 2.13.0+cpu,
    tcmalloc (libtcmalloc_minimal.so.4)`; `host` from describe_host (default: this machine, now)."""
    h = describe_host() if host is None else host
    flags = " ".join(h["flags"]) or "no AVX2"
    units = ", ".join(h["bf16_units"]) or "no bf16 units"
    cpus = f"{h['cpus']} CPUs" + (f" ({h['usable_cpus']} usable)" if h["usable_cpus"] != h["cpus"] else "")
    memory = f"{h['memory_gib']:g} GiB, " if h.get("memory_gib") else ""
    return (
        f"{h['cpu']} ({flags}; {units}), {cpus}, {h['threads']} threads, {memory}torch {h['torch']}, {h['allocator']}"
    )
