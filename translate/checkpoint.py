"""Checkpoints: written atomically, read back with `weights_only=True`."""

import os
import shutil
import tempfile
from pathlib import Path

import torch


class CheckpointError(FileNotFoundError):
    pass


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def link_checkpoint(source: str | Path, dest: str | Path) -> None:
    """Make `dest` the same checkpoint as `source` without writing it again: a hard link, swapped in
    atomically (save_checkpoint replaces files by rename, never in place, so links stay valid); a copy
    where the file system has no hard links."""
    source, dest = Path(source), Path(dest)
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        hint = "train first (make train) or pass eval.checkpoint=last / a path to a .pt file"
        raise CheckpointError(f"{path}: no checkpoint here; {hint}")
    return torch.load(path, map_location=map_location, weights_only=True)


def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's step_<N>.pt files, oldest (smallest N) first."""
    paths = [p for p in Path(run_dir).glob("step_*.pt") if p.stem[len("step_") :].isdigit()]
    return sorted(paths, key=lambda p: int(p.stem[len("step_") :]))


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """`best` / `last` inside a run directory, or an explicit path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found; pass RUN=<a directory written by make train>")
    path = Path(which) if which.endswith(".pt") else run_dir / f"{which}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; train first (make train) or choose eval.checkpoint=last|best|<file.pt>")
    return path
