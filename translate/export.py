"""Serve a trained Transformer with CTranslate2: `python -m translate.export run=<run dir> [quantization=int8]`.

Export writes <run>/ct2/ (quantization=none) or <run>/ct2-<quantization>/, a directory CTranslate2 loads
as it is: model.bin and config.json (a `TransformerSpec` filled from our weights), shared_vocabulary.json
(our SentencePiece pieces in id order), a copy of the run's tokenizer.model and export.json (which
checkpoint, which step, which quantization).  It is built in a temporary directory beside the target
and renamed into place, so a reader sees the old export or the new one.  Then

    make translate RUN=<run dir> engine=ct2 [quantization=int8] < in > out

decodes with it (`CT2Model`), under the same rules as our own search (translate/decoding/search.py): source
cut at the model's position limit, output limit ratio × source tokens (EOS included) + offset, greedy
for beam_size 1, else beam search ranked by the GNMT length penalty.  Greedy output is our greedy
output, token for token, up to float rounding in near-ties (tests/test_export.py measures it).

How our Transformer (translate/models/transformer.py) maps onto CTranslate2's specification:

    embedding × √d_model + PE                 scale_embeddings, position_encodings.encodings = our `pe`
                                              buffer (interleaved sin/cos from position 0; CTranslate2's
                                              built-in table is concatenated and starts at 1, so ours is set)
    Residual(LayerNorm) around each sublayer  the sublayer spec's layer_norm, applied before (pre_norm) or
                                              after the residual sum, as ours; ε = 1e-5 as nn.LayerNorm
    self-attention q, k, v projections        linear[0], fused [W_q; W_k; W_v]; linear[1] = W_O
    cross-attention                           linear[0] = W_q, linear[1] = [W_k; W_v], linear[2] = W_O
    FeedForward Linear-ReLU-Linear            ffn.linear_0, Activation.RELU, ffn.linear_1
    final LayerNorm (pre-LN only)             encoder.layer_norm, decoder.layer_norm
    generator (no bias; tied to the embedding) decoder.projection
    source ids + EOS; decoder starts at BOS   config add_source_eos, decoder_start_token = piece of BOS

RNN models have no CTranslate2 specification and are refused.
"""

import json
import logging

import hydra
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import register_configs
from translate.decoding.ct2_export import METADATA, directory_size, export_run
from translate.runtime.errors import one_line_errors

register_configs()


# ---- the specification ------------------------------------------------------------------------------------------


# ---- export -----------------------------------------------------------------------------------------------------


@hydra.main(version_base=None, config_path="../configs", config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> None:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    check_config(cfg)
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
