"""Average checkpoints: `translate average run=<run dir> [last=5] [out=averaged]`.

Writes <run>/<out>.pt, the mean weights of the newest `last` step_<N>.pt (translate/training/averaging.py).
"""

import logging

import hydra
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.runtime.errors import one_line_errors
from translate.training.averaging import average_run

register_configs()


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="average")
@one_line_errors
def main(cfg: DictConfig) -> None:
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    check_config(cfg)
    path, steps = average_run(cfg.run, cfg.last, cfg.out)
    print(f"wrote {path}: the mean of {len(steps)} checkpoints, steps {', '.join(map(str, steps))}")


if __name__ == "__main__":
    main()
