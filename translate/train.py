"""Train a model: `python -m translate.train model=rnn_attention trainer.max_epochs=5` (any Hydra override)."""

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from translate.config import register_configs
from translate.evaluate import evaluate, format_result
from translate.trainer import Trainer

log = logging.getLogger(__name__)
register_configs()
SUMMARY = "train_summary.json"


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train into `run_dir` (resolved config, tokenizer, checkpoints, TensorBoard events, summary)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir)
    trainer.fit()
    trainer.writer.close()
    summary = trainer.summary()
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "done: best valid BLEU %.2f after %d steps, %.1f min; run directory %s",
        trainer.best_bleu,
        trainer.step,
        summary["train_minutes"],
        run_dir,
    )
    return summary


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir, auto = Path(HydraConfig.get().runtime.output_dir), cfg.resume == "auto"
    if auto:
        cfg.resume = str(run_dir) if (run_dir / "last.pt").exists() else None
    elif cfg.resume:
        run_dir = Path(cfg.resume)
    if auto and (run_dir / SUMMARY).exists():
        log.info("%s is finished (%s exists): not training again", run_dir, SUMMARY)
    else:
        train(cfg, run_dir)
    if cfg.evaluate and not (run_dir / "eval" / "test.json").exists():
        print(format_result(evaluate(run_dir, cfg.eval)))


if __name__ == "__main__":
    main()
