"""Train a model: `python -m translate.train model=rnn_attention trainer.max_epochs=5` (any Hydra override)."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from translate.config import register_configs
from translate.trainer import Trainer

log = logging.getLogger(__name__)
register_configs()


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train into `run_dir` (resolved config, tokenizer, checkpoints, TensorBoard events)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir)
    result = trainer.fit()
    trainer.writer.close()
    log.info("done: best valid BLEU %.2f; run directory %s", trainer.best_bleu, run_dir)
    return result


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.resume) if cfg.resume else Path(HydraConfig.get().runtime.output_dir)
    train(cfg, run_dir)


if __name__ == "__main__":
    main()
