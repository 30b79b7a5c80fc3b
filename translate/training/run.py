"""A training run in its directory: the checks before it starts or resumes, training, its summary.

train(cfg, run_dir, dist, device) -> summary     config.yaml, checkpoints, TensorBoard, train_summary.json
prepare_run_dir(cfg, run_dir, auto)              under the lock: clean up, refuse a run of other settings
"""

import json
import logging
import signal
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from translate.config.stored import run_config, stored_config
from translate.runtime.checkpoints import CheckpointError, load_checkpoint
from translate.runtime.errors import ConfigError
from translate.runtime.files import refuse_planted_links, remove_partial_writes, write_text
from translate.runtime.ranks import Distributed
from translate.runtime.signals import GracefulStop, TrainingStopped
from translate.training.trainer import Trainer

log = logging.getLogger(__name__)


SUMMARY = "train_summary.json"


# where and how visibly a run goes: a run may continue with these changed
# where and how visibly a run goes: a run may continue with these changed
RUNTIME_KEYS = {"data.dir", "data.download_dir", "data.tokenizer.cache_dir", "data.store_dir"}
RUNTIME_KEYS |= {"trainer.device", "trainer.threads"}
RUNTIME_KEYS |= {"trainer.log_every", "trainer.num_samples", "trainer.attention_maps", "trainer.attention_head"}


def changed_settings(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose value differs between two configs, as `key=saved (now current)`, runtime keys left out."""
    changed = []
    for key in sorted(saved.keys() | current.keys()):
        path, old, new = f"{prefix}{key}", saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_settings(old, new, f"{path}.")
        elif old != new and path not in RUNTIME_KEYS:
            changed.append(f"{path}={old} (now {new})")
    return changed


def sections(cfg, keys=("data", "model", "trainer")) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True)
    return {key: container[key] for key in keys}


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """resume=auto continues or skips the run in `run_dir` only if it was started with the same settings."""
    if not (run_dir / "config.yaml").exists():
        return
    saved = run_config(run_dir)
    changed = changed_settings(sections(saved), sections(cfg))
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run with other settings: {', '.join(changed)}; "
            "remove that directory or write elsewhere "
            "(hydra.sweep.dir=… for make compare, hydra.run.dir=… for make train)"
        )


def check_resumable(cfg: DictConfig, checkpoint: Path) -> None:
    """Refuse, before any data is read, to resume a checkpoint of another model or tokenizer; changed trainer
    settings (a longer budget, say) are allowed and listed."""
    saved = stored_config(load_checkpoint(checkpoint, mmap=True).get("config"), checkpoint)
    changed = changed_settings(sections(saved, ("data", "model")), sections(cfg, ("data", "model")))
    if changed:
        saved_values = " ".join(item.split(" (now ")[0] for item in changed)
        raise CheckpointError(
            f"{checkpoint} was trained with other settings: {', '.join(changed)}; "
            f"resume with the run's own: add {saved_values}"
        )
    changed = changed_settings(sections(saved, ("trainer",)), sections(cfg, ("trainer",)))
    if changed:
        log.warning("resuming with changed trainer settings: %s", ", ".join(changed))


def train(cfg: DictConfig, run_dir: Path, dist: Distributed | None = None, device=None) -> dict:
    """Train into `run_dir` (resolved config, tokenizer, checkpoints, TensorBoard events, summary).

    SIGINT or SIGTERM (on any rank) ends training after the current update with last.pt saved: TrainingStopped."""
    dist = dist or Distributed()
    if dist.is_main:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir, dist, device)
    try:
        with GracefulStop() as stop:
            trainer.fit(stop)
            if trainer.interrupted:
                trainer.save("last")
                stop.hand_on()  # a scheduler's own handler (submitit: requeue), now that last.pt is saved
                raise TrainingStopped(stop.signum or signal.SIGTERM, trainer.state.step)
    finally:
        trainer.close()
    summary = run_summary(trainer)
    if dist.is_main:
        write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    bleu, steps, minutes = summary["best_valid_bleu"], summary["steps"], summary["train_minutes"]
    log.info("done: best valid BLEU %.2f after %d steps, %.1f min; run directory %s", bleu, steps, minutes, run_dir)
    return summary


def run_summary(trainer: Trainer) -> dict:
    """What a comparison reports about a training run."""
    state = trainer.state
    step_seconds = max(state.train_seconds - state.valid_seconds, 1e-9)
    return {
        "model": trainer.cfg.model.name,
        "seed": trainer.tc.seed,
        "precision": trainer.precision,
        "parameters": trainer.num_parameters,
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / len(trainer.epoch_batches()), 2),
        "train_minutes": round(state.train_seconds / 60, 2),
        "valid_minutes": round(state.valid_seconds / 60, 2),
        "target_tokens": state.tokens_trained,
        "tokens_per_s": round(state.tokens_trained / step_seconds, 1),
        "best_valid_bleu": state.best_bleu,
        "skipped_steps": state.skipped_steps,
        "device": str(trainer.device),
        "ranks": trainer.dist.world_size,
        "threads": torch.get_num_threads(),
    }


def prepare_run_dir(cfg: DictConfig, run_dir: Path, auto: bool) -> bool:
    """Under the lock: clear what a killed writer left, refuse to resume another run or to overwrite one, and
    set cfg.resume for resume=auto; True if the run is already finished."""
    remove_partial_writes(run_dir)
    refuse_planted_links(run_dir)
    if auto:
        check_same_run(cfg, run_dir)
        cfg.resume = str(run_dir) if (run_dir / "last.pt").exists() else None
    if cfg.resume:
        check_resumable(cfg, run_dir / "last.pt")
    elif (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); continue it with resume={run_dir}, "
            "or train into another directory (hydra.run.dir=…)"
        )
    return auto and (run_dir / SUMMARY).exists()
