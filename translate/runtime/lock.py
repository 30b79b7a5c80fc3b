"""One writer per run directory: an exclusive lock the OS holds for the process's life.

`flock` on `<run>/.lock` is released by the kernel when the process ends in any way, kill -9
included, so a killed run never leaves a stale lock that blocks its resume.  The lock file
holds the holder's PID, for the message a second writer gets.  (On NFS, flock works where the
server supports byte-range locks — NFSv4; elsewhere keep run directories on a local disk.)
"""

import errno
import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from translate.runtime.errors import UserError

LOCK_NAME = ".lock"


class RunDirectoryBusy(UserError):
    pass


class UnsafeLock(UserError):
    """A `.lock` planted as a link: truncating it would truncate its target."""


@contextmanager
def run_lock(run_dir: str | Path):
    """Hold `run_dir`'s lock for the block; a RunDirectoryBusy naming the holder's PID if another process has it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise UnsafeLock(f"{path}: a symbolic link where the run's lock file goes; remove it (not followed)") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link would truncate another file
        os.close(fd)
        raise UnsafeLock(f"{path}: not a plain file of its own (a link or a device); remove it")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirectoryBusy(
                f"{run_dir} is in use by process {holder} (it holds {path}); wait for it to end, stop it "
                f"(kill {holder}: it saves last.pt), or write elsewhere (hydra.run.dir=…)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the lock
