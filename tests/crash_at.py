"""Crash training at every file-system step of its writes, then resume it: `python tests/crash_at.py DIR <overrides>`.

Run k (k = 1, 2, …) trains into DIR/crash<k> and dies (os._exit, like a power cut or kill -9) at the k-th
step of a checkpoint or atomic write: a torch.save (half its bytes written first), an fsync, a rename, a hard
link.  A new process then checks that every *.pt left in the directory loads and runs the same command again
(the overrides should hold resume=auto).  DIR/reference is the run without a crash.  Prints one line per run:
`crash_at: k <crash exit code> <resume exit code>`.  The runs are forked from this process, which imports the project
once, so a point costs a second or two instead of two interpreter starts.
"""

import io
import os
import runpy
import sys
import types
from pathlib import Path

import torch

import translate.commands.train  # noqa: F401  (imported once here; every forked run inherits it)
import translate.runtime.checkpoints as checkpoint
import translate.runtime.files as files

CRASHED, UNLOADABLE = 86, 87


def install_crash(at: int) -> list[int]:
    """Make the `at`-th write step exit the process; returns the step counter (a list, to read it back)."""
    seen = [0]

    def step() -> bool:
        seen[0] += 1
        return seen[0] == at

    def crashing(real):
        def call(*args, **kwargs):
            if step():
                os._exit(CRASHED)
            return real(*args, **kwargs)

        return call

    def half_save(obj, f):
        if not step():
            return torch.save(obj, f)
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os._exit(CRASHED)

    proxy = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    for name in ("fsync", "replace", "link"):
        setattr(proxy, name, crashing(getattr(os, name)))
    files.os = checkpoint.os = proxy
    checkpoint.torch = types.SimpleNamespace(save=half_save, load=torch.load)
    return seen


def train(run_dir: Path, overrides: list[str]) -> None:
    sys.argv = ["translate train", *overrides, f"hydra.run.dir={run_dir}"]
    runpy.run_module("translate.commands.train", run_name="__main__")


def in_child(work, *args) -> int:
    """Run `work(*args)` in a forked process; its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work(*args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def crash_then_train(at: int, run_dir: Path, overrides: list[str]) -> None:
    install_crash(at)
    train(run_dir, overrides)


def resume(run_dir: Path, overrides: list[str]) -> None:
    for path in run_dir.glob("*.pt"):
        try:
            checkpoint.load_checkpoint(path)
        except checkpoint.CheckpointError as e:
            print(e, file=sys.stderr)
            sys.exit(UNLOADABLE)
    train(run_dir, overrides)


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    counter = []

    def warm_caches():  # tokenizer and token store made first, so every run below counts only its own writes
        sys.argv = ["translate prepare", *overrides]
        runpy.run_module("translate.commands.prepare", run_name="__main__")

    assert in_child(warm_caches) == 0
    # the reference run counts the steps: in a child, so this process stays unpatched
    read, write = os.pipe()

    def reference():
        counter.append(install_crash(0))
        try:
            train(out / "reference", overrides)
        finally:
            os.write(write, str(counter[0][0]).encode())

    assert in_child(reference) == 0
    os.close(write)
    points = int(os.read(read, 32))
    print(f"crash_at: steps {points}", flush=True)
    for k in range(1, points + 1):
        run_dir = out / f"crash{k}"
        crashed = in_child(crash_then_train, k, run_dir, overrides)
        resumed = in_child(resume, run_dir, overrides)
        print(f"crash_at: {k} {crashed} {resumed}", flush=True)


if __name__ == "__main__":
    main()
