"""Attention: the scaled dot-product function and the multi-head class of the Transformer, and the RNN scorers.

    scaled_dot_product_attention(q, k, v, mask)     Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
    MultiHeadAttention                              Concat(head_1..head_h) W^O, used by the Transformer
                                                    and by the RNN's `multihead` scorer

The RNN scorers share one stateless interface, so the decoder can swap them by name:

    keys = attn.project_keys(memory)                  # once per sentence: (B, S, M) -> (B, S, K)
    context, weights = attn(query, keys, memory, mask, position)
        query (B, Q) decoder state, memory (B, S, M) encoder outputs,
        mask (B, S) bool True on real tokens, position (B,) long: the index of the
        target word being predicted (only local_m looks at it)
        -> context (B, M), weights (B, S): sum to 1 over real tokens, exactly 0 on padding

Each scorer class is one scoring equation e_j; all of them share α = softmax(e) and c = Σ_j α_j h_j
(`Scorer.forward`).  Nothing is cached on a module: projected keys travel in the decoder state.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from translate.models.dropout import dropout
from translate.models.hard_attention import GumbelHardAttention, HardAttention


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim with masked-out positions (mask False) at exactly zero weight."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def attention_weights(q, k, mask=None, is_causal: bool = False) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k):  q (B, h, T, d_k), k (B, h, S, d_k) -> (B, h, T, S); mask True where allowed,
    or a float mask added to the scores (`additive_mask`)."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None and mask.dtype != torch.bool:
        return torch.softmax(scores + mask, dim=-1)
    if is_causal:  # query t sees keys 0..t, as in scaled_dot_product_attention
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    return torch.softmax(scores, dim=-1) if mask is None else masked_softmax(scores, mask)


def written_out_attention(q, k, v, mask=None, is_causal: bool = False, dropout_p: float = 0.0):
    """softmax(Q Kᵀ / √d_k) V as matmul, softmax, matmul -> (output, weights); arguments as below."""
    weights = attention_weights(q, k, mask, is_causal)
    return dropout(weights, dropout_p) @ v, weights


def additive_mask(bias, mask=None, is_causal: bool = False) -> torch.Tensor:
    """A float mask for the scores: `bias` (…, T, S) where `mask` (bool, True where allowed) and, if is_causal,
    key ≤ query allow, −∞ elsewhere; broadcast to both."""
    if is_causal:  # query t sees keys 0..t, as is_causal does
        causal = torch.ones(bias.shape[-2], bias.shape[-1], dtype=torch.bool, device=bias.device).tril()
        mask = causal if mask is None else mask & causal
    return bias if mask is None else torch.where(mask, bias, float("-inf"))


def scaled_dot_product_attention(
    q, k, v, mask=None, is_causal: bool = False, dropout_p: float = 0.0, need_weights: bool = False, bias=None
):
    """Vaswani et al. 2017, 3.2.1:  Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V.

    q (B, h, T, d_k), k, v (B, h, S, d_k); mask bool, broadcastable to (B, h, T, S), True where allowed
    -> (B, h, T, d_k), and the weights (B, h, T, S) if need_weights (else None).  `bias`, a float broadcastable
    to (B, h, T, S) (relative positions, translate/models/positions.py), is added to the scores:
    softmax(Q Kᵀ / √d_k + bias) V, with the masks folded into it as −∞ (`additive_mask`).

    `torch.nn.functional.scaled_dot_product_attention`, which never forms the weights, except when they
    are wanted and in bf16 on a CPU, where its fused kernel is 2–3× slower than matmul, softmax, matmul
    (docs/performance.md).
    """
    if bias is not None:
        mask, is_causal = additive_mask(bias.to(q.dtype), mask, is_causal), False
    if need_weights or (q.dtype == torch.bfloat16 and q.device.type == "cpu"):
        out, weights = written_out_attention(q, k, v, mask, is_causal, dropout_p)
        return out, weights if need_weights else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal), None


class KV(NamedTuple):
    """Projected keys and values of one attention layer, (B, h, S, d_k) each; travels in the decoding state."""

    k: torch.Tensor
    v: torch.Tensor


class MultiHeadAttention(nn.Module):
    """Vaswani et al. 2017, 3.2.2:  MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    project_kv(memory (B, S, M)) -> KV, each (B, h, S, d_k)
    forward(x (B, T, Q), kv, mask, is_causal, need_weights) -> (B, T, out_dim), weights (B, h, T, S) or None
    forward is attend(project_q(x), kv, …): a caller that changes q (rotary positions) or adds a `bias` to the
    scores calls the two itself.
    The Transformer uses it with query, memory and output sizes all d_model; the RNN's `multihead`
    scorer with the decoder state as the one query and the encoder outputs as memory.
    """

    def __init__(
        self, query_dim: int, memory_dim: int, model_dim: int, heads: int, out_dim: int, bias: bool = True, dropout=0.0
    ):
        super().__init__()
        if model_dim % heads:
            raise ValueError(f"attention size {model_dim} is not divisible by {heads} heads; change model.heads")
        self.heads, self.d_k, self.dropout = heads, model_dim // heads, dropout
        self.q_proj = nn.Linear(query_dim, model_dim, bias=bias)  # W^Q, the h heads side by side
        self.k_proj = nn.Linear(memory_dim, model_dim, bias=bias)  # W^K
        self.v_proj = nn.Linear(memory_dim, model_dim, bias=bias)  # W^V
        self.out_proj = nn.Linear(model_dim, out_dim, bias=bias)  # W^O

    def _split(self, x):  # (B, T, h·d_k) -> (B, h, T, d_k)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def project_kv(self, memory) -> KV:
        return KV(self._split(self.k_proj(memory)), self._split(self.v_proj(memory)))

    def project_q(self, x):  # (B, T, Q) -> (B, h, T, d_k)
        return self._split(self.q_proj(x))

    def forward(self, x, kv: KV, mask=None, is_causal: bool = False, need_weights: bool = False):
        return self.attend(self.project_q(x), kv, mask, is_causal, need_weights)

    def attend(self, q, kv: KV, mask=None, is_causal: bool = False, need_weights: bool = False, bias=None):
        dropout = self.dropout if self.training else 0.0
        heads, weights = scaled_dot_product_attention(q, kv.k, kv.v, mask, is_causal, dropout, need_weights, bias)
        return self.out_proj(heads.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)), weights


# ---- the RNN decoder's scorers ------------------------------------------------------------------------------


class Scorer(nn.Module):
    """What every RNN scorer shares:  α = softmax(e) over the allowed source positions,  c = Σ_j α_j h_j."""

    def project_keys(self, memory):  # (B, S, M) -> the keys scores() reads, once per sentence
        return memory

    def scores(self, query, keys, mask, position) -> tuple[torch.Tensor, torch.Tensor]:
        """-> e (B, S) and the positions allowed to be attended (B, S) bool."""
        raise NotImplementedError

    def forward(self, query, keys, memory, mask, position=None):
        scores, allowed = self.scores(query, keys, mask, position)
        weights = masked_softmax(scores, allowed)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class AdditiveAttention(Scorer):
    """Bahdanau et al. 2015:  e_j = vᵀ tanh(W q + U h_j)."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)  # W
        self.key_proj = nn.Linear(memory_dim, attention_dim)  # U (and the bias)
        self.energy = nn.Linear(attention_dim, 1, bias=False)  # v

    def project_keys(self, memory):
        return self.key_proj(memory)  # (B, S, A)

    def scores(self, query, keys, mask, position):
        return self.energy(torch.tanh(self.query_proj(query).unsqueeze(1) + keys)).squeeze(-1), mask


def dot(keys, query):  # (B, S, K) · (B, K) -> (B, S)
    return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)


class DotAttention(Scorer):
    """Luong et al. 2015 (dot):  e_j = qᵀ h_j.  Needs query and memory of one size."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0):
        super().__init__()
        if query_dim != memory_dim:
            raise ValueError(
                f"dot attention needs decoder size ({query_dim}) == encoder output size ({memory_dim}); "
                "use model.attention=general or model.bidirectional=false"
            )

    def scores(self, query, keys, mask, position):
        return dot(keys, query), mask


class GeneralAttention(Scorer):
    """Luong et al. 2015 (general, bilinear):  e_j = qᵀ W_a h_j;  keys W_a h_j projected once."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0):
        super().__init__()
        self.key_proj = nn.Linear(memory_dim, query_dim, bias=False)  # W_a

    def project_keys(self, memory):
        return self.key_proj(memory)  # (B, S, Q)

    def scores(self, query, keys, mask, position):
        return dot(keys, query), mask


class ScaledDotAttention(GeneralAttention):
    """Vaswani et al. 2017, one head:  e_j = qᵀ W_k h_j / √d,  keeping the softmax out of saturation."""

    def scores(self, query, keys, mask, position):
        return dot(keys, query) * (1.0 / math.sqrt(query.shape[-1])), mask


class LocalAttention(GeneralAttention):
    """Luong et al. 2015 (local-p): attend only to a window [p − D, p + D] around a predicted centre

        p = (S − 1) · sigmoid(v_pᵀ tanh(W_p q))          S = real source length
        e_j = qᵀ W_a h_j − (j − p)² / (2σ²),  σ = D / 2   for |j − p| ≤ D, else −∞

    Cost per query is O(D) in principle; here the window is a mask over the full source.
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, window: int = 5):
        super().__init__(query_dim, memory_dim)
        self.window = window
        self.centre = nn.Sequential(
            nn.Linear(query_dim, attention_dim, bias=False), nn.Tanh(), nn.Linear(attention_dim, 1, bias=False)
        )

    def scores(self, query, keys, mask, position):
        last = (mask.sum(1, keepdim=True) - 1).to(query.dtype)  # (B, 1)
        centre = last * torch.sigmoid(self.centre(query))  # (B, 1)
        distance = torch.arange(mask.shape[1], device=mask.device, dtype=query.dtype) - centre  # (B, S)
        sigma = self.window / 2
        return dot(keys, query) - distance.square() / (2 * sigma**2), mask & (distance.abs() <= self.window)


class MonotonicLocalAttention(GeneralAttention):
    """Luong et al. 2015 (local-m): the window follows the target position, p = min(t, S − 1)

        e_j = qᵀ W_a h_j  for |j − p| ≤ D, else −∞

    Source and target are assumed roughly monotonically aligned; no Gaussian, no predicted centre.
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0, window: int = 5):
        super().__init__(query_dim, memory_dim)
        self.window = window

    def scores(self, query, keys, mask, position):
        if position is None:
            raise ValueError("local_m attention needs the target position of each query")
        centre = torch.minimum(position, mask.sum(1) - 1).unsqueeze(1)  # (B, 1)
        distance = torch.arange(mask.shape[1], device=mask.device) - centre  # (B, S)
        return dot(keys, query), mask & (distance.abs() <= self.window)


class MultiHeadScorer(nn.Module):
    """MultiHeadAttention with the decoder state as its one query and the encoder outputs as keys and values:
    c = Concat(head_1..head_h) W^O.  Its weights are the mean over heads, (B, S)."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, heads: int = 4):
        super().__init__()
        self.attention = MultiHeadAttention(query_dim, memory_dim, attention_dim, heads, out_dim=memory_dim, bias=False)

    def project_keys(self, memory):
        return self.attention.project_kv(memory)  # KV, (B, h, S, d_h) each

    def forward(self, query, keys: KV, memory, mask, position=None):
        context, weights = self.attention(query.unsqueeze(1), keys, mask[:, None, None, :], need_weights=True)
        return context.squeeze(1), weights.mean(dim=1).squeeze(1)


SCORERS = {
    "additive": AdditiveAttention,
    "dot": DotAttention,
    "general": GeneralAttention,
    "scaled_dot": ScaledDotAttention,
    "multihead": MultiHeadScorer,
    "local": LocalAttention,
    "local_m": MonotonicLocalAttention,
    "hard": HardAttention,  # one position, sampled from the additive scorer's α (translate/models/hard_attention.py)
    "hard_gumbel": GumbelHardAttention,
}


def build_attention(
    name: str,
    query_dim: int,
    memory_dim: int,
    attention_dim: int,
    heads: int = 4,
    window: int = 5,
    reinforce_weight: float = 1.0,
    entropy_weight: float = 0.01,
    baseline_decay: float = 0.9,
    temperature: float = 1.0,
) -> nn.Module:
    if name not in SCORERS:
        raise ValueError(f"unknown model.attention={name!r}; choose one of {', '.join(SCORERS)}")
    if name == "hard":
        energy = AdditiveAttention(query_dim, memory_dim, attention_dim)
        return HardAttention(energy, reinforce_weight, entropy_weight, baseline_decay)
    if name == "hard_gumbel":
        return GumbelHardAttention(AdditiveAttention(query_dim, memory_dim, attention_dim), temperature)
    if name == "multihead":
        return MultiHeadScorer(query_dim, memory_dim, attention_dim, heads)
    if name in ("local", "local_m"):
        return SCORERS[name](query_dim, memory_dim, attention_dim, window)
    return SCORERS[name](query_dim, memory_dim, attention_dim)
