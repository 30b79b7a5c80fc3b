"""The C allocator a process runs on: tcmalloc where it is installed, glibc's malloc otherwise.

PyTorch on a CPU frees and allocates activations of new shapes every step; glibc's malloc either keeps the freed
pages (fragmented, peak memory grows) or, trimmed, hands them back and faults them in again the next step.
tcmalloc keeps per-size free lists: on the reference Transformer 1.4-1.6x the bf16 training speed of trimmed glibc
with less peak memory (docs/performance.md).  A process started as `translate <command>`, `python -m translate
<command>` or `python -m translate.commands.<command>` restarts itself once with tcmalloc in LD_PRELOAD (the
allocator must be there before the first allocation); scripts call `preload_tcmalloc()` themselves.
TRANSLATE_MALLOC=system keeps glibc's.  No torch import here: this runs first.
"""

import ctypes.util
import os
import sys
from pathlib import Path

OPT_OUT = "TRANSLATE_MALLOC"  # =system: glibc's malloc
TCMALLOC_COMMANDS = ("train", "eval", "translate", "average", "export", "prepare")  # those that run a model
INSTALL_HINT = "apt install libtcmalloc-minimal4 (or conda install gperftools) for faster CPU training"


def find_tcmalloc() -> str | None:
    """tcmalloc's shared library: the system's (ldconfig) or this Python environment's (conda), else None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        if found := ctypes.util.find_library(name):
            return found
    here = sorted(Path(sys.prefix, "lib").glob("libtcmalloc*.so*"))
    return str(here[0]) if here else None


def loaded_tcmalloc() -> str | None:
    """The tcmalloc library mapped into this process, from /proc/self/maps, or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return next((line.split()[-1] for line in maps.splitlines() if "libtcmalloc" in line), None)


def preload_tcmalloc() -> None:
    """Replace this process by itself with tcmalloc preloaded (same PID, arguments and environment), unless it is
    loaded or asked for already, opted out of, or not installed.  Call it before anything is allocated in earnest."""
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get(OPT_OUT) == "system" or "tcmalloc" in preload or not sys.platform.startswith("linux"):
        return
    library = find_tcmalloc()
    if library is None:
        return
    env = malloc_environment(os.environ, library)
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))  # no stderr line per allocation > 1 GB
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def malloc_environment(base, library: str | None) -> dict:
    """A copy of the environment `base` whose LD_PRELOAD (space- or colon-separated) puts tcmalloc `library` first,
    or, with `library` None, holds no tcmalloc: a child process on glibc's malloc."""
    kept = [entry for entry in base.get("LD_PRELOAD", "").replace(":", " ").split() if "tcmalloc" not in entry]
    return dict(base, LD_PRELOAD=" ".join([library, *kept] if library else kept))


def started_as_command(argv: list[str]) -> bool:
    """Whether the interpreter's command line `argv` (sys.orig_argv) runs one of TCMALLOC_COMMANDS: `-m translate
    <command>` or `-m translate.commands.<command>` before any script or `-c` (interpreter options such as -u, -W x
    may come first).  The `translate` console script calls preload_tcmalloc itself (translate/__main__.py)."""
    words = iter(argv[1:])
    for word in words:
        if word == "-m":
            module = next(words, None) or ""
            if module == "translate":
                return next(words, None) in TCMALLOC_COMMANDS
            return module.startswith("translate.commands.") and module.split(".")[-1] in TCMALLOC_COMMANDS
        if word in ("-W", "-X"):
            next(words, None)
        elif not word.startswith("-") or word.startswith("-c"):
            return False
    return False


def describe_allocator() -> str:
    """For the log: which allocator this process runs on, and how to get tcmalloc where it is missing."""
    if library := loaded_tcmalloc():
        return f"tcmalloc ({Path(library).name})"
    if os.environ.get(OPT_OUT) == "system":
        return f"glibc malloc ({OPT_OUT}=system)"
    return f"glibc malloc (no tcmalloc found: {INSTALL_HINT})"
