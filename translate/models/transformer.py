"""The encoder-decoder Transformer (Vaswani et al. 2017), one class per part of the paper.

Attention runs through `torch.nn.functional.scaled_dot_product_attention` (written out in bf16 on CPU).
Incremental decoding keeps a key/value cache in the decoding *state* (a dict of
tensors, batch in dim 0), never on the modules, so search can reorder it freely:

    state = model.encode(src, src_mask)                 # + cross-attention keys/values, once
    logits, state = model.decode_step(state, prev)      # appends one position to the self-attention cache
    logits = model(src, src_mask, tgt_in)               # teacher forcing, causal mask
    features = model.features(src, src_mask, tgt_in)    # the same before the output layer `model.generator`
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionalEncoding(nn.Module):
    """Section 3.5:  PE(pos, 2i) = sin(pos / 10000^{2i/d}),  PE(pos, 2i+1) = cos(pos / 10000^{2i/d})."""

    def __init__(self, d_model: int, max_len: int = 1024):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x, start: int = 0):  # x (B, T, D)
        if start + x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {start + x.shape[1]} positions exceeds the {self.pe.shape[0]} supported")
        return x + self.pe[start : start + x.shape[1]]


def attention_weights(q, k, mask=None, is_causal: bool = False):
    """softmax(Q Kᵀ / √d_k):  q (B, h, T, d_k), k (B, h, S, d_k) -> (B, h, T, S); mask True where allowed."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def written_out_attention(q, k, v, mask=None, is_causal: bool = False, dropout_p: float = 0.0):
    """softmax(Q Kᵀ / √d_k) V as matmul, softmax, matmul; arguments as in scaled_dot_product_attention."""
    return F.dropout(attention_weights(q, k, mask, is_causal), dropout_p) @ v


def attention(q, k, v, mask=None, is_causal: bool = False, dropout_p: float = 0.0):
    """Section 3.2.1, Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V:  q (B, h, T, d_k), k, v (B, h, S, d_k) -> (B, h, T, d_k).

    `scaled_dot_product_attention`, except in bf16 on a CPU, where its fused kernel is 2–3× slower than
    the written-out form (docs/performance.md).
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        return written_out_attention(q, k, v, mask, is_causal, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


class MultiHeadAttention(nn.Module):
    """Section 3.2.2:  MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V.

    project_kv(x (B, S, D)) -> k, v (B, h, S, d_k);  attend(x (B, T, D), k, v, mask) -> (B, T, D), weights
    mask: bool, broadcastable to (B, h, T, S), True where attention is allowed.
    """

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"model.d_model={d_model} is not divisible by model.heads={heads}")
        self.heads, self.d_k, self.dropout = heads, d_model // heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def _split(self, x):  # (B, T, D) -> (B, h, T, d_k)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def project_kv(self, x):
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def attend(self, x, k, v, mask=None, is_causal: bool = False, need_weights: bool = False):
        q = self._split(self.q_proj(x))
        out = attention(q, k, v, mask, is_causal, dropout_p=self.dropout if self.training else 0.0)
        weights = None
        if need_weights:  # SDPA does not return the weights; recompute them for inspection only
            weights = attention_weights(q, k, mask)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)), weights


class FeedForward(nn.Module):
    """Section 3.3:  FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model))

    def forward(self, x):
        return self.net(x)


class Residual(nn.Module):
    """Section 5.4:  post-LN  LayerNorm(x + Dropout(f(x)));  pre-LN  x + Dropout(f(LayerNorm(x)))."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(d_model), nn.Dropout(dropout), pre_norm

    def forward(self, x, sublayer):
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Section 3.1: self-attention, then a position-wise feed-forward network."""

    def __init__(self, d_model, heads, ff_dim, dropout, pre_norm, attention_dropout):
        super().__init__()
        self.self_attn, self.ff = MultiHeadAttention(d_model, heads, attention_dropout), FeedForward(d_model, ff_dim, dropout)
        self.res1, self.res2 = Residual(d_model, dropout, pre_norm), Residual(d_model, dropout, pre_norm)

    def forward(self, x, mask):  # x (B, S, D), mask (B, 1, 1, S)
        x = self.res1(x, lambda h: self.self_attn.attend(h, *self.self_attn.project_kv(h), mask)[0])
        return self.res2(x, self.ff)


class DecoderLayer(nn.Module):
    """Section 3.1: masked self-attention, attention over the encoder output, feed-forward.

    forward(x (B, T, D), cross_kv, src_mask, self_kv=None): with `self_kv` (cached keys/values of
    earlier positions) it decodes incrementally and returns the extended cache.
    """

    def __init__(self, d_model, heads, ff_dim, dropout, pre_norm, attention_dropout):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.res1, self.res2, self.res3 = (Residual(d_model, dropout, pre_norm) for _ in range(3))

    def forward(self, x, cross_kv, src_mask, self_kv=None, need_weights=False):
        cache, weights = {}, None

        def self_attention(h):
            k, v = self.self_attn.project_kv(h)
            if self_kv is not None:  # incremental: attend to every cached position and this one
                k, v = torch.cat([self_kv[0], k], dim=2), torch.cat([self_kv[1], v], dim=2)
            cache["kv"] = (k, v)
            return self.self_attn.attend(h, k, v, is_causal=self_kv is None)[0]

        def cross_attention(h):
            nonlocal weights
            out, weights = self.cross_attn.attend(h, *cross_kv, src_mask, need_weights=need_weights)
            return out

        x = self.res1(x, self_attention)
        x = self.res2(x, cross_attention)
        return self.res3(x, self.ff), cache["kv"], weights


class Transformer(nn.Module):
    """Encoder-decoder Transformer with a joint (optionally tied) embedding."""

    has_attention = True

    def __init__(self, cfg, vocab_size: int, pad_id: int):
        super().__init__()
        d, args = cfg.d_model, (cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.pre_norm, cfg.attention_dropout)
        self.d_model = d
        self.embedding = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.tgt_embedding = self.embedding if cfg.tie_embeddings else nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.positions, self.dropout = PositionalEncoding(d), nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*args) for _ in range(cfg.enc_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*args) for _ in range(cfg.dec_layers))
        self.encoder_norm = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        self.generator = nn.Linear(d, vocab_size, bias=False)
        self._reset_parameters(pad_id)
        if cfg.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def _reset_parameters(self, pad_id):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for emb in {self.embedding, self.tgt_embedding}:
            nn.init.normal_(emb.weight, std=self.d_model**-0.5)
            nn.init.zeros_(emb.weight[pad_id])

    def _embed(self, embedding, tokens, start=0):  # Section 3.4: embeddings scaled by √d_model
        return self.dropout(self.positions(embedding(tokens) * math.sqrt(self.d_model), start))

    def encode(self, src, src_mask) -> dict:
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.embedding, src)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        memory = self.encoder_norm(x)
        cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]
        return {
            "src_mask": src_mask,
            "cross_k": [k for k, _ in cross],
            "cross_v": [v for _, v in cross],
            "self_k": [k[:, :, :0] for k, _ in cross],
            "self_v": [v[:, :, :0] for _, v in cross],
        }

    def _decode(self, state, tgt, incremental: bool, need_weights: bool = False):
        """-> features (B, T, D) before the output layer, state with the extended cache, cross-attention [(B, h, T, S)] or None."""
        start = state["self_k"][0].shape[2] if incremental else 0
        x, mask = self._embed(self.tgt_embedding, tgt, start), state["src_mask"][:, None, None, :]
        self_k, self_v, weights = [], [], []
        for i, layer in enumerate(self.decoder_layers):
            self_kv = (state["self_k"][i], state["self_v"][i]) if incremental else None
            cross_kv = (state["cross_k"][i], state["cross_v"][i])
            x, (k, v), layer_weights = layer(x, cross_kv, mask, self_kv, need_weights)
            weights.append(layer_weights)
            self_k.append(k)
            self_v.append(v)
        return self.decoder_norm(x), {**state, "self_k": self_k, "self_v": self_v}, weights if need_weights else None

    def decode_step(self, state, prev, need_attention: bool = False):
        features, state, weights = self._decode(state, prev.unsqueeze(1), incremental=True, need_weights=need_attention)
        if need_attention:  # last layer's cross-attention, mean over heads: (B, S)
            state["attention"] = weights[-1].mean(dim=1)[:, -1]
        return self.generator(features.squeeze(1)), state

    def features(self, src, src_mask, tgt_in, return_attention: bool = False):
        """Teacher forcing -> (B, T, D) [, last layer's cross-attention, mean over heads (B, T, S)]."""
        features, _, weights = self._decode(self.encode(src, src_mask), tgt_in, incremental=False, need_weights=return_attention)
        return (features, weights[-1].mean(dim=1)) if return_attention else features

    def forward(self, src, src_mask, tgt_in, return_attention: bool = False):
        """Teacher forcing: logits (B, T, V) [, cross-attention (B, T, S)]."""
        if not return_attention:  # the fused attention path: no weights computed
            return self.generator(self.features(src, src_mask, tgt_in))
        features, weights = self.features(src, src_mask, tgt_in, return_attention=True)
        return self.generator(features), weights

    def attention_maps(self, src, src_mask, tgt_in, head: int | None = None) -> dict[str, torch.Tensor]:
        """Cross-attention of every decoder layer for a teacher-forced target: {"layerN": (B, T, S)},
        one head or (head=None) the mean over heads."""
        weights = self._decode(self.encode(src, src_mask), tgt_in, incremental=False, need_weights=True)[2]
        return {f"layer{i + 1}": w.mean(dim=1) if head is None else w[:, head] for i, w in enumerate(weights)}
