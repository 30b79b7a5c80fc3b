"""Average checkpoints: `python -m translate.average run=<run dir> [last=5] [out=averaged]`.

The model weights of the newest `last` numbered checkpoints (step_<N>.pt, kept by training
when trainer.keep_last > 0) are averaged, often worth a little BLEU over any single one
(Vaswani et al. 2017 average the last 5 or 20).  Writes <run>/<out>.pt with the layout of
last.pt and best.pt (everything but the weights comes from the newest), atomically, so
`make eval RUN=… eval.checkpoint=averaged` and `make translate RUN=… eval.checkpoint=averaged`
use it.
"""

import logging

import hydra
from omegaconf import DictConfig

from translate.config.schema import register_configs
from translate.runtime.errors import one_line_errors
from translate.training.averaging import average_run

register_configs()


@hydra.main(version_base=None, config_path="../configs", config_name="average")
@one_line_errors
def main(cfg: DictConfig) -> None:
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    path, steps = average_run(cfg.run, cfg.last, cfg.out)
    print(f"wrote {path}: the mean of {len(steps)} checkpoints, steps {', '.join(map(str, steps))}")


if __name__ == "__main__":
    main()
