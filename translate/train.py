"""Train a model: `python -m translate.train model=rnn_attention trainer.max_epochs=5` (any Hydra override)."""

import json
import logging
import os
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from translate.config import register_configs, train_config
from translate.evaluate import evaluate, format_result
from translate.trainer import Trainer

log = logging.getLogger(__name__)
register_configs()
SUMMARY = "train_summary.json"
# where and how visibly a run goes: a run may continue with these changed
RUNTIME_KEYS = {"data.dir", "data.download_dir", "data.tokenizer.cache_dir", "trainer.device", "trainer.threads"}
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


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """resume=auto continues or skips the run in `run_dir` only if it was started with the same settings."""
    if not (run_dir / "config.yaml").exists():
        return
    saved = OmegaConf.to_container(train_config(run_dir / "config.yaml"), resolve=True)
    current = OmegaConf.to_container(cfg, resolve=True)
    changed = changed_settings(*({k: c[k] for k in ("data", "model", "trainer")} for c in (saved, current)))
    if changed:
        raise ValueError(
            f"{run_dir} holds a run with other settings: {', '.join(changed)}; "
            "remove that directory or write elsewhere "
            "(hydra.sweep.dir=… for make compare, hydra.run.dir=… for make train)"
        )


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train into `run_dir` (resolved config, tokenizer, checkpoints, TensorBoard events, summary)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir)
    trainer.fit()
    trainer.writer.close()
    summary = run_summary(trainer)
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    bleu, steps, minutes = summary["best_valid_bleu"], summary["steps"], summary["train_minutes"]
    log.info("done: best valid BLEU %.2f after %d steps, %.1f min; run directory %s", bleu, steps, minutes, run_dir)
    return summary


def run_summary(trainer: Trainer) -> dict:
    """What a comparison reports about a training run."""
    state = trainer.state
    step_seconds = max(state.train_seconds - state.valid_seconds, 1e-9)
    return {
        "model": trainer.cfg.model.name,
        "parameters": trainer.num_parameters,
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / len(trainer.epoch_batches()), 2),
        "train_minutes": round(state.train_seconds / 60, 2),
        "valid_minutes": round(state.valid_seconds / 60, 2),
        "target_tokens": state.tokens_trained,
        "tokens_per_s": round(state.tokens_trained / step_seconds, 1),
        "best_valid_bleu": state.best_bleu,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
    }


def next_commands(run_dir: Path) -> str:
    """What to run on a finished run: its evaluation and TensorBoard, as commands to copy."""
    path = os.path.relpath(run_dir) if Path.cwd() in run_dir.resolve().parents else str(run_dir)
    return f"next:\n  make eval RUN={path}\n  make tensorboard    # then open http://localhost:6006"


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir, auto = Path(HydraConfig.get().runtime.output_dir), cfg.resume == "auto"
    if auto:
        check_same_run(cfg, run_dir)
        cfg.resume = str(run_dir) if (run_dir / "last.pt").exists() else None
    elif cfg.resume:
        run_dir = Path(cfg.resume)
    if auto and (run_dir / SUMMARY).exists():
        log.info("%s is finished (%s exists): not training again", run_dir, SUMMARY)
    else:
        train(cfg, run_dir)
    if cfg.evaluate and not (run_dir / "eval" / "test.json").exists():
        print(format_result(evaluate(run_dir, cfg.eval)))
    print(next_commands(run_dir))


if __name__ == "__main__":
    main()
