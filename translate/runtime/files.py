"""Files written whole or not at all: a temporary file beside the target, fsynced, renamed over it.

A run directory may come from someone else, so nothing is written through a symbolic link planted in it:
`atomic_write` refuses a link where its file goes, and `subdirectory` one where a directory of the run goes
(eval/, tensorboard/, ct2/).  Renaming over a path never writes into what a link there points to.
"""

import json
import math
import os
import resource
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from translate.runtime.errors import UserError

PARTIAL_WRITES = (".*.tmp", ".*.link")  # what an interrupted atomic_write / checkpoint link leaves
UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: files get the permissions open() would give them, not mkstemp's 0600


class UnsafePath(UserError):
    """A path inside a run directory that this program will not write or read through (a link, not a file)."""


def refuse_link(path: str | Path, what: str = "file") -> None:
    """Refuse a symbolic link at `path`: a run directory's files are written and read here, never followed."""
    if os.path.islink(path):
        raise UnsafePath(
            f"{path}: a symbolic link where this program keeps a {what} of its own; not followed (a run "
            "directory's contents are data, docs/security.md): remove the link, or use a directory of your own"
        )


def subdirectory(parent: str | Path, name: str) -> Path:
    """`parent/name`, created if missing; a symbolic link or a file there is refused."""
    path = Path(parent) / name
    refuse_link(path, "directory")
    path.mkdir(parents=True, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise UnsafePath(f"{path}: not a directory; remove it so that it can be created")
    return path


RUN_SUBDIRECTORIES = ("eval", "tensorboard", ".hydra")
MAX_SMALL_FILE = 16 << 20  # a run's JSON and YAML files are kilobytes
MAX_CONFIG_FILE = 1 << 20  # a run's config.yaml is about 5 KB


def refuse_planted_links(run_dir: str | Path) -> None:
    """Refuse a run directory that holds a symbolic link where this program writes (its top level, eval/,
    tensorboard/, .hydra/): before anything is written into it."""
    run_dir = Path(run_dir)
    for name in RUN_SUBDIRECTORIES:
        refuse_link(run_dir / name, "directory")
    for place in [run_dir] + [run_dir / d for d in RUN_SUBDIRECTORIES if (run_dir / d).is_dir()]:
        for entry in os.scandir(place):
            if entry.is_symlink():
                refuse_link(entry.path)


def read_small(path: str | Path, limit: int = MAX_SMALL_FILE) -> str:
    """A small text file of a run (JSON, YAML), read only if it is a plain file under `limit` bytes."""
    path = Path(path)
    refuse_link(path)
    if not path.is_file() or path.stat().st_size > limit:
        what = "not a file" if not path.is_file() else f"{path.stat().st_size:,} bytes (at most {limit:,})"
        raise UnsafePath(f"{path}: {what}; not a file this program wrote: remove or replace it")
    return path.read_text(encoding="utf-8", errors="replace")


def read_yaml(path: str | Path, limit: int = MAX_CONFIG_FILE) -> dict:
    """A run's YAML file (config.yaml, .hydra/*.yaml) as plain data: a safe loader (no tags), no interpolation,
    at most `limit` bytes, and no aliases (`*name`): this program writes none, and a few hundred bytes of them can
    expand to millions of values."""
    import yaml

    text = read_small(path, limit)
    # libyaml: linear in the text, its nesting bounded; PyYAML's own parser takes 37 s on 20 KB of `[`
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=loader)):
            raise UnsafePath(
                f"{path}: holds a YAML alias (*name), which this program never writes; remove or replace it"
            )
        data = yaml.load(text, Loader=loader)  # a safe loader: no tags that build objects
    except yaml.YAMLError as e:
        raise UnsafePath(f"{path}: not YAML ({str(e).splitlines()[0]}); remove or replace it") from None
    except RecursionError:
        raise UnsafePath(f"{path}: nested too deep to be a config of this program; remove or replace it") from None
    return data if isinstance(data, dict) else {}


def read_json(path: str | Path, limit: int = MAX_SMALL_FILE):
    """A run's JSON file as plain data, at most `limit` bytes: every number finite (no NaN, Infinity or 1e999, which
    Python's json reads as floats that no JSON answer can carry), nesting and integers as json bounds them."""

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:20]} is not finite")
        return value

    def no_constant(name: str):
        raise ValueError(f"{name} is not a number")

    try:
        return json.loads(read_small(path, limit), parse_float=finite, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so is an integer of 5,000 digits
        raise UnsafePath(f"{path}: not JSON this program writes ({str(e).splitlines()[0][:120]}); remove it or "
                         "write it again with the command that made it") from None  # fmt: skip


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
    refuse_link(path)
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


def write_lines(path: str | Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


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
