"""What the benchmark scripts measure of a process: its wall time and peak resident memory, and /proc's figures.

    import measure  (from a script in scripts/, which Python puts first on sys.path)

run_measured(command, …) runs a command as a child process and returns its exit status, output, wall seconds and
peak RSS: the largest of the command's own and of every descendant it waited for (a launcher's ranks included).
The kernel's figure (ru_maxrss) is read by a small Python process that starts the command and waits for it
(TRAMPOLINE): a process started straight from this one would have this one's peak as its floor, since the kernel
carries the high-water mark of the memory a process had into the program it executes, and a benchmark script that
has imported torch is some 250 MiB.  proc_status_mib(pid, keys) reads memory figures of a running process (VmRSS,
VmHWM, RssAnon, RssFile from /proc/<pid>/status; Pss from smaps_rollup).
"""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# argv: the report's file descriptor, the timeout in seconds (0: none), the command.  It reports the command's pid
# once started, then its peak (ru_maxrss, kB, of the processes this one waited for: the command and through it
# its own children) and wall seconds; it ends as the command ended (exit status or signal).
TRAMPOLINE = """
import os, resource, signal, subprocess, sys, time
report, timeout, command = os.fdopen(int(sys.argv[1]), "w"), float(sys.argv[2]) or None, sys.argv[3:]
started = time.perf_counter()
child = subprocess.Popen(command)
print(child.pid, file=report, flush=True)
signal.signal(signal.SIGTERM, lambda number, frame: child.send_signal(number))
while True:
    try:
        code = child.wait(timeout)
        break
    except subprocess.TimeoutExpired:
        child.kill()
    except KeyboardInterrupt:  # a Ctrl-C reaches the command too: wait for it to end
        pass
seconds = time.perf_counter() - started
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, seconds, file=report, flush=True)
if code < 0:  # end by the same signal (its default action: SIGKILL has no other)
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


@dataclass(frozen=True)
class Measured:
    """A finished command: its exit status (negative: the signal that ended it), its output where it was captured
    (None where it went to a file or to this process's own), wall seconds, peak RSS in MiB."""

    returncode: int
    stdout: str | None
    stderr: str | None
    seconds: float
    peak_rss_mib: float


def run_measured(
    command: list[str],
    *,
    cwd=None,
    env: dict | None = None,
    timeout: float | None = None,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    preexec_fn: Callable[[], None] | None = None,
    sample: Callable[[int], None] | None = None,
    interval: float = 0.2,
) -> Measured:
    """Run `command` and wait for it.  stdout / stderr as for subprocess.Popen: PIPE (the default) captures the
    text, a file object writes it there, None leaves it this process's, subprocess.STDOUT (for stderr) joins it to
    stdout.  After `timeout` seconds the command is killed (returncode -9).  `preexec_fn` runs in the child before
    it starts the command (resource limits are inherited).  `sample`, when given, is called with the command's pid
    every `interval` seconds while it runs (to read /proc)."""
    read_end, write_end = os.pipe()
    trampoline = [sys.executable, "-I", "-S", "-c", TRAMPOLINE, str(write_end), str(timeout or 0), *command]
    try:
        process = subprocess.Popen(
            trampoline, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True, preexec_fn=preexec_fn,
            pass_fds=(write_end,),
        )  # fmt: skip
    finally:
        os.close(write_end)
    captured: dict[str, str] = {}  # read while it runs: a full pipe would stall it
    readers = [
        threading.Thread(target=lambda n=name, p=pipe: captured.__setitem__(n, p.read()), daemon=True)
        for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))
        if pipe is not None
    ]
    for reader in readers:
        reader.start()
    with os.fdopen(read_end) as report:
        pid = report.readline()
        while sample is not None and pid and process.poll() is None:
            sample(int(pid))
            time.sleep(interval)
        process.wait()
        figures = report.read().split()
    for reader in readers:
        reader.join()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    output, errors = captured.get("stdout"), captured.get("stderr")
    if len(figures) != 2:  # the trampoline could not start the command (a traceback on its stderr)
        raise RuntimeError(f"could not run {command[:4]} (exit {process.returncode}): {errors or ''}"[-3000:])
    return Measured(process.returncode, output, errors, float(figures[1]), int(figures[0]) / 1024)


def proc_status_mib(pid: int, keys: Iterable[str], files: Iterable[str] = ("status",)) -> dict[str, float]:
    """The fields `keys` (in kB there: VmRSS, VmHWM, RssAnon, RssFile, Pss, …) of /proc/<pid>/<file> for each of
    `files`, in MiB.  A process that has ended, or a file this process may not read, gives what was read before
    it: possibly nothing."""
    keys, fields = set(keys), {}
    try:
        for name in files:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in keys:
                    fields[key] = int(value.split()[0]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return fields
