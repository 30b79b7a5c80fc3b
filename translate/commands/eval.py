"""Evaluate a trained run: `translate eval run=<run dir> [eval.src=… eval.ref=…] [data.dir=…]`.

Decodes the test split (or any pair of plain-text files) and scores it with sacreBLEU: BLEU, chrF,
chrF++ and TER with their signatures, BLEU by source length on the set and on its long-sentence probe
(translate/evaluation/evaluator.py: what it writes into <run>/eval/ and TensorBoard).  The run's files are
data: its split is read from where the project and this command say (data.dir=…), never from where they say.
"""

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.evaluation.evaluator import evaluate, format_result
from translate.runtime.errors import one_line_errors

log = logging.getLogger(__name__)
register_configs()


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    result = evaluate(cfg.run, cfg.eval, data_location=cfg.data)
    print(format_result(result))
    print(f"wrote {Path(cfg.run) / 'eval' / (result['name'] + '.json')}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
