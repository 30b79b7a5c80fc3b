"""The decoding contract every model keeps, so search, validation and evaluation never ask which model it is.

    state = model.encode(src, src_mask)                     src (B, S) ids, src_mask (B, S) bool, True on real tokens
    logits, state = model.decode_step(state, prev)          prev (B,) the previous target token -> logits (B, V)
    features = model.features(src, src_mask, tgt_in)        teacher forcing: tgt_in (B, T) -> (B, T, E)
    logits = model.generator(features)                      the output layer, (…, E) -> (…, V)
    logits = model(src, src_mask, tgt_in)                   generator(features(…)): (B, T, V)

A decoding state is a dict whose tensors — alone, in lists, or in NamedTuples — all have the batch
in dim 0, so search can keep, drop or repeat sentences with `index_select(0, …)` without knowing
the model (`translate.decoding.search.select`).  Nothing of a sentence is kept on the modules.
`max_positions` is the longest sequence (source with its EOS, or target) the model can place, or None.
`attention_heads`: how many heads `attention_maps(…, head=h)` can pick from (1 for the RNNs).

Attention, for the models that have it (`has_attention`):
    features(…, return_attention=True)                -> (features, weights (B, T, S))
    attention_maps(src, src_mask, tgt_in, head)       -> {name: (B, T, S)}, every map worth drawing
Search collects no attention: teacher-forced on what it wrote, a model gives the maps its search saw
(translate/decoding/attention_maps.py).
Weights sum to 1 over the real source tokens and are 0 on padding.  A model without attention
refuses these requests with `NoAttentionError`.
"""

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

DecodingState = dict[str, Any]


class NoAttentionError(ValueError):
    pass


@runtime_checkable
class Seq2SeqModel(Protocol):
    """What search, validation and evaluation may call on a model (see the module docstring for shapes)."""

    has_attention: bool
    max_positions: int | None
    generator: nn.Linear

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> DecodingState: ...

    def decode_step(self, state: DecodingState, prev: torch.Tensor) -> tuple[torch.Tensor, DecodingState]: ...

    def features(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, return_attention: bool = False
    ): ...

    def attention_maps(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, head: int | None = None
    ) -> dict[str, torch.Tensor]: ...

    def __call__(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, return_attention: bool = False
    ): ...


class EncoderDecoder(nn.Module):
    """The parts of the contract that are the same for every model."""

    has_attention = False
    max_positions: int | None = None  # every model of this project sets one (the RNNs' is a cap, not a table)
    attention_heads = 1  # maps per attention layer: the Transformer's heads

    def forward(self, src, src_mask, tgt_in, return_attention: bool = False):
        """Teacher forcing: logits (B, T, V) [, attention (B, T, S)]."""
        if not return_attention:
            return self.generator(self.features(src, src_mask, tgt_in))
        features, weights = self.features(src, src_mask, tgt_in, return_attention=True)
        return self.generator(features), weights

    def no_attention(self) -> NoAttentionError:
        return NoAttentionError(
            f"model {type(self).__name__} has no attention: the source reaches its decoder as one fixed vector"
        )
