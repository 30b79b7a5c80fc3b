"""Where a model looked while writing its translations: the one extractor of attention maps.

    maps = attention_maps(model, sources, targets)               per sentence {name: (T + 1, S + 1) weights}
    maps = attention_maps(model, sources, targets, heads=[2])    one head (trainer.attention_head) instead of the mean

The model is teacher-forced on the translations it wrote, all in one batch: the maps are those its search saw
(tests/test_attention_maps.py checks it against maps collected step by step while searching).  Validation's
TensorBoard images, `make translate attention=…` and the server's answers all come from here.
"""

import torch

from translate.data.batching import collate
from translate.decoding.search import source_limit
from translate.models.base import Seq2SeqModel


@torch.no_grad()
def attention_maps(
    model: Seq2SeqModel, sources: list[list[int]], targets: list[list[int]], heads: list[int | None] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Per sentence {map name: (T + 1, S + 1) float32 on the CPU}: rows the target tokens then EOS, columns the
    source tokens then EOS, as the model reads them (the source cut at its limit, the target at its positions).

    `heads`: None for the mean over heads (`<name>`) and, with several heads, each head (`<name>/head<h>`, from 1);
    or a list of heads, None meaning their mean.  Every map the model draws (`model.attention_maps`)."""
    limit = source_limit(model)
    sources = [ids[:limit] for ids in sources]
    targets = [ids[: (model.max_positions or len(ids) + 1) - 1] for ids in targets]
    if heads is None:
        heads = [None] + (list(range(model.attention_heads)) if model.attention_heads > 1 else [])
    batch = collate(sources, targets, list(range(len(sources)))).to(next(model.parameters()).device)
    maps = {}
    for head in heads:
        for name, weights in model.attention_maps(batch.src, batch.src_mask, batch.tgt_in, head).items():
            maps[name if head is None else f"{name}/head{head + 1}"] = weights.float().cpu()
    return [
        {name: w[i, : len(tgt) + 1, : len(src) + 1] for name, w in maps.items()}
        for i, (src, tgt) in enumerate(zip(sources, targets))
    ]
