"""Checkpoints: written atomically, read back with `weights_only=True`.

A training checkpoint (`last.pt`, `best.pt`, `step_<N>.pt`) holds, in format 2:

    format        2
    model         the model's state_dict
    optimizer     the optimizer's state_dict
    scheduler     the learning-rate schedule's state_dict
    scaler        fp16: the GradScaler's state_dict (its loss scale); {} otherwise
    train_state   TrainState as a dict: counters, batch position, best score, patience, RNG states
    config        the resolved training config (a dict)
    vocab_size    the tokenizer's vocabulary size
    ema           trainer.ema_decay > 0 only: the moving average's AveragedModel state_dict (module.<weight>
                  and n_averaged); `inference_weights` gives its weights, which evaluation and export decode with

Format 1 (before the TrainState) kept the train_state fields at the top level; it still loads.
A file that is truncated, corrupt, not a checkpoint or of a newer format is refused with a `CheckpointError`
naming it.  Writing goes to a temporary file, fsynced, renamed over the old one, and the directory fsynced:
a crash or a full disk at any point leaves the previous checkpoint or the new one, never half of one.
"""

import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from translate.runtime.errors import UserError
from translate.runtime.files import atomic_write, fsync_directory, refuse_link, why_writing_failed

FORMAT = 2
MAX_COUNT = 10**15  # a TrainState's counters (steps, tokens, seconds) stay far below this
REWRITE = "not a checkpoint this program writes; use another of the run's checkpoints or train again"
# weights_only=True has known bypasses below this (CVE-2025-32434 below 2.6, a later advisory below 2.10)
SAFE_TORCH = (2, 10)


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, of another run or cannot be written; the message says which."""


@dataclass
class TrainState:
    """Everything besides weights, optimizer and schedule that decides a run's next step."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # position in this epoch's batch order
    best_bleu: float = -1.0
    best_step: int = 0  # the step best.pt holds
    bad_validations: int = 0  # validations since the best one (patience)
    train_seconds: float = 0.0
    valid_seconds: float = 0.0
    tokens_trained: int = 0
    skipped_steps: int = 0  # fp16: updates the GradScaler skipped (gradients overflowed)
    rng: dict = field(default_factory=dict)  # translate.runtime.device.rng_states() at the time of saving

    def record_validation(self, bleu: float) -> bool:
        """Keep the best BLEU and count the validations since it (patience); True if this one is the best."""
        improved = bleu > self.best_bleu
        self.best_bleu, self.bad_validations = (bleu, 0) if improved else (self.best_bleu, self.bad_validations + 1)
        self.best_step = self.step if improved else self.best_step
        return improved

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: str | Path = "checkpoint") -> "TrainState":
        """The checkpoint's TrainState, each field checked: a whole number or a finite one in its range (a count of
        any type or size would end in reports, the server's answers and arithmetic), the RNG states a mapping."""
        saved = ckpt.get("train_state")
        if saved is None:  # format 1: the fields at the top level, the RNG states as torch_rng and python_rng
            saved = {**ckpt, "rng": {key: ckpt[key] for key in ("torch_rng", "python_rng") if key in ckpt}}
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: its train_state is a {type(saved).__name__}, not a mapping; {REWRITE}")
        state = cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
        for f in fields(cls):
            value = getattr(state, f.name)
            if f.type is int:
                ok, what = type(value) is int and 0 <= value <= MAX_COUNT, f"a whole number in 0..{MAX_COUNT:.0e}"
            elif f.type is float:
                ok = type(value) in (int, float) and math.isfinite(value) and -1 <= value <= MAX_COUNT
                what = f"a finite number in -1..{MAX_COUNT:.0e}"
            else:
                ok, what = isinstance(value, dict), "a mapping"
            if not ok:
                raise CheckpointError(f"{path}: train_state.{f.name}={str(value)[:40]!r} is not {what}; {REWRITE}")
        return state


def inference_weights(ckpt: dict) -> dict:
    """The weights to decode with: the moving average's where the run kept one (trainer.ema_decay), else the model's."""
    if "ema" not in ckpt:
        return ckpt["model"]
    return {name[len("module.") :]: t for name, t in ckpt["ema"].items() if name.startswith("module.")}


def training_checkpoint(
    model, optimizer, scheduler, state: TrainState, config: dict, vocab_size: int, scaler=None, ema=None
) -> dict:
    """The checkpoint dict of a training run (layout above)."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "train_state": asdict(state),
        "config": config,
        "vocab_size": vocab_size,
        **({"ema": ema.state_dict()} if ema is not None else {}),
    }


def restore_training(
    ckpt: dict,
    model,
    optimizer,
    scheduler,
    path: str | Path = "checkpoint",
    scaler=None,
    vocab_size: int | None = None,
    ema=None,
) -> TrainState:
    """Load weights, optimizer, schedule (and moving average) from a training checkpoint into the objects given;
    return its TrainState. With `vocab_size` (the run's tokenizer), a checkpoint of another vocabulary is refused
    by name; a moving average asked for where the checkpoint has none starts again from the weights."""
    if vocab_size is not None and ckpt.get("vocab_size", vocab_size) != vocab_size:
        raise CheckpointError(
            f"{path}: its vocabulary has {ckpt['vocab_size']} pieces, this run's tokenizer {vocab_size}; "
            "resume with the run's data settings"
        )
    missing = [key for key in ("optimizer", "scheduler") if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: holds weights only (no {' or '.join(missing)}: averaged?); resume from last.pt")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        check_optimizer_state(optimizer)
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"{path}: does not fit this model ({first[-1].strip() if first else type(e).__name__}); "
            "resume with the settings the run was started with"
        ) from None
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return TrainState.from_checkpoint(ckpt, path)


def check_optimizer_state(optimizer) -> None:
    """Refuse optimizer state whose tensors are not shaped like their parameters: torch's load_state_dict does not
    compare them, and Adam's first step would broadcast a (1, N) moment with an (N, 1) one into N² numbers."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state {key} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}"
                    )


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write atomically (runtime.files.atomic_write): a crash or a full disk never leaves half a checkpoint."""
    path = Path(path)
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError without errno
        kept = f"{path.name} keeps its previous content" if path.exists() else f"{path} was not written"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"
        raise CheckpointError(f"{path}: {reason}: {why_writing_failed(path.parent)}; {kept}") from e


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
    fsync_directory(dest.parent)


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint of this project, or a CheckpointError naming the file and why it cannot be used."""
    path = Path(path)
    check_torch_version()
    other = "use another checkpoint of the run (last.pt, best.pt, step_<N>.pt) or train again"
    if not path.is_file():
        hint = "train first (make train) or pass eval.checkpoint=last / a path to a .pt file"
        raise CheckpointError(f"{path}: no checkpoint here; {hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, … for a damaged file
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: unreadable ({size:,} bytes: truncated, corrupt or not a PyTorch file; {type(e).__name__}); "
            + other
        ) from None
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("model"), dict)
        or not isinstance(ckpt.get("ema", {}), dict)
    ):
        raise CheckpointError(f"{path}: a PyTorch file, not a checkpoint of this project (no model weights); {other}")
    if ckpt.get("format", 1) > FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt['format']}, newer than this version reads (<= {FORMAT}); "
            "update the project (git pull && make install)"
        )
    return ckpt


def check_torch_version(version: str | None = None) -> None:
    """Refuse to read checkpoints on a torch whose `weights_only` loading is known to be bypassable."""
    version = version or torch.__version__
    numbers = tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())
    if numbers < SAFE_TORCH:
        raise CheckpointError(
            f"torch {version} cannot load checkpoints safely (its weights_only loading has known bypasses); "
            f"install torch>={'.'.join(map(str, SAFE_TORCH))} (make install)"
        )


def repair_best(run_dir: str | Path, state: TrainState) -> bool:
    """After a crash between writing last.pt and linking it as best.pt, make best.pt that checkpoint again;
    True if it had to.  (The only window: best.pt is linked right after last.pt is written.)"""
    run_dir = Path(run_dir)
    best = run_dir / "best.pt"
    if state.best_step != state.step or state.best_bleu < 0:
        return False
    if best.is_file() and TrainState.from_checkpoint(load_checkpoint(best, mmap=True), best).step == state.step:
        return False
    link_checkpoint(run_dir / "last.pt", best)
    return True


def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's step_<N>.pt files, oldest (smallest N) first."""
    paths = [p for p in Path(run_dir).glob("step_*.pt") if p.stem[len("step_") :].isdigit()]
    return sorted(paths, key=lambda p: int(p.stem[len("step_") :]))


def keep_numbered(run_dir: str | Path, step: int, keep_last: int) -> None:
    """step_<N>.pt, the state just saved as last.pt, keeping the newest `keep_last` of them (0: none)."""
    if keep_last <= 0:
        return
    run_dir = Path(run_dir)
    link_checkpoint(run_dir / "last.pt", run_dir / f"step_{step}.pt")
    for old in numbered_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


def keep_checkpoints(run_dir: str | Path, step: int, keep_last: int, improved: bool) -> None:
    """After last.pt is written at a validation: its numbered copy (keep_numbered) and, if it scored best, best.pt."""
    keep_numbered(run_dir, step, keep_last)
    if improved:
        link_checkpoint(Path(run_dir) / "last.pt", Path(run_dir) / "best.pt")


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """`best` / `last` inside a run directory, or an explicit path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found; pass RUN=<a directory written by make train>")
    path = Path(which) if which.endswith(".pt") else run_dir / f"{which}.pt"
    if not which.endswith(".pt"):
        refuse_link(path, "checkpoint")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint here; train first (make train) or choose eval.checkpoint=last|best|<file.pt>"
        )
    return path
