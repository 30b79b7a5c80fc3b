"""Train a model: `translate train model=rnn_attention trainer.max_epochs=5` (any Hydra override)."""

import logging
import os
import shlex
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.evaluation.evaluator import evaluate, format_result
from translate.runtime.checkpoints import CheckpointError
from translate.runtime.errors import one_line_errors
from translate.runtime.lock import run_lock
from translate.runtime.ranks import Distributed, from_environment, one_log_per_job, shutdown
from translate.runtime.signals import TrainingStopped
from translate.training.run import SUMMARY, prepare_run_dir, train

log = logging.getLogger(__name__)
register_configs()


def next_commands(run_dir: Path) -> str:
    """What to run on a finished run: its evaluation and TensorBoard, as commands to copy."""
    path = os.path.relpath(run_dir) if Path.cwd() in run_dir.resolve().parents else str(run_dir)
    return f"next:\n  make eval RUN={path}\n  make tensorboard    # then open http://localhost:6006"


def resume_command(run_dir: Path) -> str:
    """The command that continues a stopped run: the same overrides, resume=<run dir>."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return "the same make compare / -m command again (resume=auto picks up every run)"
    kept = [o for o in hydra_cfg.overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    return shlex.join(["make", "train", *([f"NPROC={ranks}"] if ranks > 1 else []), *kept, f"resume={run_dir}"])


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    dist, device = from_environment(cfg.trainer.device)
    one_log_per_job(dist.rank)  # after Hydra's logging setup (each job of a multirun has its own)
    try:
        train_once(cfg, dist, device)
    finally:
        shutdown()


def train_once(cfg: DictConfig, dist: Distributed, device) -> None:
    """The checks and the lock on rank 0, training on every rank; rank 0's decisions are every rank's."""
    run_dir, auto = Path(HydraConfig.get().runtime.output_dir), cfg.resume == "auto"
    if cfg.resume and not auto:
        run_dir = Path(cfg.resume)
        if not (run_dir / "last.pt").is_file():
            raise CheckpointError(f"resume={run_dir}: no last.pt there; give a run directory written by make train")
    run_dir = Path(dist.broadcast(str(run_dir)))  # each rank's Hydra may have stamped another second
    with run_lock(run_dir) if dist.is_main else nullcontext():
        finished = dist.is_main and prepare_run_dir(cfg, run_dir, auto)
        cfg.resume, finished = dist.broadcast((cfg.resume, finished))
        if finished:
            log.info("%s is finished (%s exists): not training again", run_dir, SUMMARY)
        else:
            try:
                train(cfg, run_dir, dist, device)
            except TrainingStopped as stopped:
                if dist.is_main:
                    log.warning("%s; %s holds it", stopped, run_dir / "last.pt")
                    print(f"{stopped}; last.pt saved. resume:\n  {resume_command(run_dir)}", file=sys.stderr)
                sys.exit(stopped.exit_code)
    if dist.is_main:
        if cfg.evaluate and not (run_dir / "eval" / "test.json").exists():
            print(format_result(evaluate(run_dir, cfg.eval, data=cfg.data)))
        print(next_commands(run_dir))


if __name__ == "__main__":
    main()
