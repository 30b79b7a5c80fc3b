"""Export a Transformer run: `translate export run=<run dir> [quantization=int8] [format=hf]`.

Writes <run>/ct2/ or <run>/ct2-<quantization>/ for CTranslate2 (translate/decoding/ct2_export.py: the layout and
how our weights map onto CTranslate2's specification; `make translate RUN=… engine=ct2` decodes with it), or with
format=hf <run>/hf/, a stock `transformers` model and tokenizer (translate/decoding/hf_export.py).
"""

import json
import logging

import hydra
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.decoding.ct2_export import METADATA, directory_size, export_run
from translate.decoding.hf_export import export_hf
from translate.evaluation.model_card import model_card
from translate.runtime.errors import one_line_errors

register_configs()


# ---- the specification ------------------------------------------------------------------------------------------


# ---- export -----------------------------------------------------------------------------------------------------


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> None:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    check_config(cfg)
    if cfg.format == "hf":
        target = export_hf(cfg.run, cfg.checkpoint, readme=model_card)
        print(
            f"wrote {target}: a transformers model and tokenizer, {directory_size(target) / 1e6:.1f} MB; "
            f"load with AutoModelForSeq2SeqLM.from_pretrained and AutoTokenizer.from_pretrained('{target}')"
        )
        return
    target = export_run(cfg.run, cfg.checkpoint, cfg.quantization)
    metadata = json.loads((target / METADATA).read_text(encoding="utf-8"))
    size = directory_size(target)
    print(
        f"wrote {target}: CTranslate2 model of {metadata['checkpoint_file']} (step {metadata['step']}), "
        f"quantization {cfg.quantization}, {size / 1e6:.1f} MB; "
        f"translate with: make translate RUN={cfg.run} engine=ct2"
        + ("" if cfg.quantization == "none" else f" quantization={cfg.quantization}")
        + ("" if cfg.checkpoint == "best" else f" eval.checkpoint={cfg.checkpoint}")
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
