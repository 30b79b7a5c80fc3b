"""Evaluate a trained run: `python -m translate.evaluate run=<run dir> [eval.src=… eval.ref=…] [data.dir=…]`.

Decodes the test split (or any pair of plain-text files), detokenizes, and
scores with sacreBLEU against the raw references: BLEU with its signature,
chrF, loss and perplexity, and BLEU per source-length bucket, on the set and on its
long-sentence probe.  Writes into <run>/eval/: <name>.json, the hypotheses <name>.hyp, the
probe <name>_probe.{src,ref,hyp}, the figure <name>_bleu_by_length.png; and into the run's
TensorBoard the scores, sample translations, attention images and the same figure.  The run's files are data:
its split is read from where the project and this command say (data.dir=…), never from where they say.
"""

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import register_configs
from translate.evaluation.evaluator import evaluate, format_result
from translate.runtime.errors import one_line_errors

log = logging.getLogger(__name__)
register_configs()


@hydra.main(version_base=None, config_path="../configs", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    result = evaluate(cfg.run, cfg.eval, data_location=cfg.data)
    print(format_result(result))
    print(f"wrote {Path(cfg.run) / 'eval' / (result['name'] + '.json')}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
