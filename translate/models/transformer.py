"""The encoder-decoder Transformer (Vaswani et al. 2017), one class per part of the paper.

Attention is `MultiHeadAttention` of translate/models/attention.py, used two ways: `SelfAttention`
and `CrossAttention` (Section 3.2.3).  Incremental decoding keeps each layer's keys and values
(`KV`) in the decoding *state*, never on the modules, so search can reorder it freely:

    state = model.encode(src, src_mask)                 # + cross-attention keys/values, once
    logits, state = model.decode_step(state, prev)      # appends one position to the self-attention cache
    logits = model(src, src_mask, tgt_in)               # teacher forcing, causal mask
    features = model.features(src, src_mask, tgt_in)    # the same before the output layer `model.generator`

Positions (`model.positions`, translate/models/positions.py): sinusoidal vectors added to the embeddings (3.5),
or a relative scheme that each self-attention layer applies to its queries and keys (rotary) or scores
(alibi, t5, shaw) at their absolute positions; a cached key keeps the position it was computed at.
"""

import math

import torch
from torch import nn

from translate.models.attention import KV, MultiHeadAttention
from translate.models.base import EncoderDecoder
from translate.models.dropout import Dropout
from translate.models.positions import MAX_POSITIONS, Positions, layer_positions, scheme_name, stack_positions
from translate.models.positions import Sinusoidal as PositionalEncoding  # Section 3.5


class SelfAttention(MultiHeadAttention):
    """Section 3.2.3: queries, keys and values all come from the layer's input x (B, T, D).

    In the decoder each position sees itself and the positions before it: causally masked when the
    whole target is given, or, decoding step by step, through `cache`, the keys and values of the
    earlier positions.  Returns (B, T, D) and the keys and values including x's (the next cache).
    With a relative scheme `positions`, x's queries and keys sit at positions start.. (start = the cached
    keys): rotated there before the keys are cached, and the scores biased by query and key positions.
    """

    def __init__(self, d_model: int, heads: int, attention_dropout: float):
        super().__init__(d_model, d_model, d_model, heads, out_dim=d_model, dropout=attention_dropout)

    def forward(
        self, x, mask=None, causal: bool = False, cache: KV | None = None, positions: Positions | None = None
    ) -> tuple[torch.Tensor, KV]:
        kv, bias = self.project_kv(x), None
        q = self.project_q(x)  # after k, v: the order x's gradients are summed in, as before positions existed
        if positions is not None:
            start = 0 if cache is None else cache.k.shape[2]
            here = torch.arange(start, start + x.shape[1], device=x.device)
            q, kv = positions.rotate(q, here), KV(positions.rotate(kv.k, here), kv.v)
        if cache is not None:  # step by step: every cached position and this one
            kv = KV(torch.cat([cache.k, kv.k], dim=2), torch.cat([cache.v, kv.v], dim=2))
        if positions is not None:
            bias = positions.bias(q, here, torch.arange(kv.k.shape[2], device=x.device))
        return self.attend(q, kv, mask, is_causal=causal and cache is None, bias=bias)[0], kv


class CrossAttention(MultiHeadAttention):
    """Section 3.2.3, encoder-decoder attention: queries from the decoder (B, T, D), keys and values from
    the encoder output, projected once per sentence (`project_kv`).  Returns (B, T, D) and the weights
    (B, h, T, S) if need_weights."""

    def __init__(self, d_model: int, heads: int, attention_dropout: float):
        super().__init__(d_model, d_model, d_model, heads, out_dim=d_model, dropout=attention_dropout)

    def forward(self, x, memory: KV, src_mask, need_weights: bool = False):
        return super().forward(x, memory, src_mask, need_weights=need_weights)


class FeedForward(nn.Module):
    """Section 3.3:  FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), Dropout(dropout), nn.Linear(ff_dim, d_model))

    def forward(self, x):
        return self.net(x)


class Residual(nn.Module):
    """Section 5.4, around every sublayer f:
    post-LN  LayerNorm(x + Dropout(f(x)));  pre-LN  x + Dropout(f(LayerNorm(x))).

    `inner(x)` is what f reads; `forward(x, f_out)` adds f's output back.
    """

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(d_model), Dropout(dropout), pre_norm

    def inner(self, x):
        return self.norm(x) if self.pre_norm else x

    def forward(self, x, sublayer_out):
        x = x + self.dropout(sublayer_out)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.Module):
    """Section 3.1: self-attention, then a position-wise feed-forward network.  x (B, S, D), mask (B, 1, 1, S)."""

    def __init__(self, d_model, heads, ff_dim, dropout, pre_norm, attention_dropout):
        super().__init__()
        self.self_attn, self.ff = (
            SelfAttention(d_model, heads, attention_dropout),
            FeedForward(d_model, ff_dim, dropout),
        )
        self.res1, self.res2 = Residual(d_model, dropout, pre_norm), Residual(d_model, dropout, pre_norm)

    def forward(self, x, mask, positions: Positions | None = None):
        x = self.res1(x, self.self_attn(self.res1.inner(x), mask, positions=positions)[0])
        return self.res2(x, self.ff(self.res2.inner(x)))


class DecoderLayer(nn.Module):
    """Section 3.1: masked self-attention, attention over the encoder output, feed-forward.

    forward(x (B, T, D), memory, src_mask, cache=None) -> (B, T, D), the self-attention cache, the
    cross-attention weights (B, h, T, S) or None.  With `cache` (the keys and values of the earlier
    positions) it decodes step by step.
    """

    def __init__(self, d_model, heads, ff_dim, dropout, pre_norm, attention_dropout):
        super().__init__()
        self.self_attn = SelfAttention(d_model, heads, attention_dropout)
        self.cross_attn = CrossAttention(d_model, heads, attention_dropout)
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.res1, self.res2, self.res3 = (Residual(d_model, dropout, pre_norm) for _ in range(3))

    def forward(self, x, memory: KV, src_mask, cache: KV | None = None, need_weights: bool = False, positions=None):
        out, cache = self.self_attn(self.res1.inner(x), causal=True, cache=cache, positions=positions)
        x = self.res1(x, out)
        out, weights = self.cross_attn(self.res2.inner(x), memory, src_mask, need_weights)
        x = self.res2(x, out)
        return self.res3(x, self.ff(self.res3.inner(x))), cache, weights


class Transformer(EncoderDecoder):
    """Encoder-decoder Transformer with a joint (optionally tied) embedding.

    Decoding state: src_mask (B, S); memory, a KV per decoder layer (its cross-attention keys and
    values of the encoder output); cache, a KV per decoder layer (self-attention, one position per step).
    Positions: `positions`, the sinusoidal table (None with a relative scheme), or `encoder_positions` and
    `decoder_positions`, the relative scheme of each stack (None with sinusoidal).
    """

    has_attention = True

    def __init__(self, cfg, vocab_size: int, pad_id: int):
        super().__init__()
        d, args = cfg.d_model, (cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.pre_norm, cfg.attention_dropout)
        self.d_model, self.attention_heads = d, cfg.heads
        self.embedding = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.tgt_embedding = self.embedding if cfg.tie_embeddings else nn.Embedding(vocab_size, d, padding_idx=pad_id)
        scheme = scheme_name(cfg)
        self.positions = PositionalEncoding(d) if scheme == "sinusoidal" else None
        self.dropout = Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*args) for _ in range(cfg.enc_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*args) for _ in range(cfg.dec_layers))
        self.encoder_norm = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        self.generator = nn.Linear(d, vocab_size, bias=False)
        self._reset_parameters(pad_id)
        if cfg.tie_embeddings:
            self.generator.weight = self.embedding.weight
        # relative schemes: built after the initialisation above, with their own (sinusoidal builds nothing here)
        self.encoder_positions = stack_positions(cfg, cfg.enc_layers, causal=False)
        self.decoder_positions = stack_positions(cfg, cfg.dec_layers, causal=True)

    @property
    def max_positions(self) -> int:  # the sinusoidal table's length; relative schemes have none: the project's cap
        return MAX_POSITIONS if self.positions is None else self.positions.pe.shape[0]

    def _reset_parameters(self, pad_id):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for emb in dict.fromkeys([self.embedding, self.tgt_embedding]):  # in this order (a set's follows id())
            nn.init.normal_(emb.weight, std=self.d_model**-0.5)
            nn.init.zeros_(emb.weight[pad_id])

    def _embed(self, embedding, tokens, start=0):  # Section 3.4: embeddings scaled by √d_model
        x = embedding(tokens) * math.sqrt(self.d_model)
        return self.dropout(x if self.positions is None else self.positions(x, start))

    def encode(self, src, src_mask) -> dict:
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.embedding, src)
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, mask, layer_positions(self.encoder_positions, i))
        x = self.encoder_norm(x)
        memory = [layer.cross_attn.project_kv(x) for layer in self.decoder_layers]
        return {"src_mask": src_mask, "memory": memory, "cache": [KV(m.k[:, :, :0], m.v[:, :, :0]) for m in memory]}

    def _decode(self, state, tgt, incremental: bool, need_weights: bool = False):
        """-> features (B, T, D) before the output layer, the state with the extended cache,
        the cross-attention of each layer [(B, h, T, S)] or None."""
        start = state["cache"][0].k.shape[2] if incremental else 0
        x, mask = self._embed(self.tgt_embedding, tgt, start), state["src_mask"][:, None, None, :]
        caches, weights = [], []
        for i, (layer, memory, cache) in enumerate(zip(self.decoder_layers, state["memory"], state["cache"])):
            positions = layer_positions(self.decoder_positions, i)
            x, cache, layer_weights = layer(x, memory, mask, cache if incremental else None, need_weights, positions)
            caches.append(cache)
            weights.append(layer_weights)
        return self.decoder_norm(x), {**state, "cache": caches}, weights if need_weights else None

    def decode_step(self, state, prev):
        features, state, _ = self._decode(state, prev.unsqueeze(1), incremental=True, need_weights=False)
        return self.generator(features.squeeze(1)), state

    def features(self, src, src_mask, tgt_in, return_attention: bool = False):
        """Teacher forcing -> (B, T, D) [, last layer's cross-attention, mean over heads (B, T, S)]."""
        features, _, weights = self._decode(
            self.encode(src, src_mask), tgt_in, incremental=False, need_weights=return_attention
        )
        return (features, weights[-1].mean(dim=1)) if return_attention else features

    def attention_maps(self, src, src_mask, tgt_in, head: int | None = None) -> dict[str, torch.Tensor]:
        """Cross-attention of every decoder layer for a teacher-forced target: {"layerN": (B, T, S)},
        one head or (head=None) the mean over heads."""
        weights = self._decode(self.encode(src, src_mask), tgt_in, incremental=False, need_weights=True)[2]
        return {f"layer{i + 1}": w.mean(dim=1) if head is None else w[:, head] for i, w in enumerate(weights)}
