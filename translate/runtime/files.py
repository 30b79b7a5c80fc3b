"""Files written whole or not at all: a temporary file beside the target, fsynced, renamed over it."""

import os
import resource
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

PARTIAL_WRITES = (".*.tmp", ".*.link")  # what an interrupted atomic_write / checkpoint link leaves
UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: files get the permissions open() would give them, not mkstemp's 0600


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a power cut after it cannot bring back the old content)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None):
    """`with atomic_write(p, "w") as f: f.write(…)` — readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as e:  # name the file being written, not its temporary name (or none: a failed write())
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def copy_file(source: str | Path, dest: str | Path) -> None:
    with open(source, "rb") as src, atomic_write(dest) as out:
        shutil.copyfileobj(src, out)


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in `directory` (only while holding its run lock)."""
    found = [p for pattern in PARTIAL_WRITES for p in Path(directory).glob(pattern)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def why_writing_failed(directory: Path) -> str:
    """The likely cause of a failed write, for a message: a file-size limit, a full disk, or unknown."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return f"the file-size limit is {limit:,} bytes (ulimit -f); raise it"
    if shutil.disk_usage(directory).free < 64 << 20:
        return "the disk is (nearly) full; free space"
    return "check the disk and its permissions"
