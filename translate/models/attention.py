"""Attention scorers for the RNN decoder, from additive to multi-head.

All share one stateless interface, so the decoder can swap them by name:

    keys = attn.project_keys(memory)                  # once per sentence: (B, S, M) -> (B, S, K)
    context, weights = attn(query, keys, memory, mask, position)
        query (B, Q) decoder state, memory (B, S, M) encoder outputs,
        mask (B, S) bool True on real tokens, position (B,) long: the index of the
        target word being predicted (only local_m looks at it)
        -> context (B, M), weights (B, S): sum to 1 over real tokens, exactly 0 on padding

Nothing is cached on the module: projected keys travel in the decoder state.
"""

import math

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim with masked-out positions at exactly zero weight."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2015:  e_j = vᵀ tanh(W q + U h_j),  α = softmax(e),  c = Σ_j α_j h_j."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)  # W
        self.key_proj = nn.Linear(memory_dim, attention_dim)  # U (and the bias)
        self.energy = nn.Linear(attention_dim, 1, bias=False)  # v

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (B, S, A)

    def forward(self, query, keys, memory, mask, position=None):
        scores = self.energy(torch.tanh(self.query_proj(query).unsqueeze(1) + keys)).squeeze(-1)  # (B, S)
        weights = masked_softmax(scores, mask)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class DotAttention(nn.Module):
    """Luong et al. 2015 (dot):  e_j = qᵀ h_j.  Needs query and memory of one size."""

    scale = 1.0

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0):
        super().__init__()
        if query_dim != memory_dim:
            raise ValueError(
                f"dot attention needs decoder size ({query_dim}) == encoder output size ({memory_dim}); "
                "use model.attention=general or model.bidirectional=false"
            )

    def project_keys(self, memory):
        return memory

    def forward(self, query, keys, memory, mask, position=None):
        scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1) * self.scale  # (B, S)
        weights = masked_softmax(scores, mask)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class GeneralAttention(DotAttention):
    """Luong et al. 2015 (general, bilinear):  e_j = qᵀ W_a h_j;  keys W_a h_j projected once."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0):
        nn.Module.__init__(self)
        self.key_proj = nn.Linear(memory_dim, query_dim, bias=False)  # W_a

    def project_keys(self, memory):
        return self.key_proj(memory)  # (B, S, Q)


class ScaledDotAttention(GeneralAttention):
    """Vaswani et al. 2017, one head:  e_j = qᵀ W_k h_j / √d,  keeping the softmax out of saturation."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0):
        super().__init__(query_dim, memory_dim)
        self.scale = 1.0 / math.sqrt(query_dim)


class MultiHeadAttention(nn.Module):
    """Vaswani et al. 2017:  head_i = softmax(q W_qⁱ (H W_kⁱ)ᵀ / √d_h) H W_vⁱ,  c = [head_1; …; head_h] W_o.

    Returned weights are the mean over heads, (B, S).
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, heads: int = 4):
        super().__init__()
        if attention_dim % heads:
            raise ValueError(f"model.attention_dim={attention_dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, attention_dim // heads
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_proj = nn.Linear(memory_dim, attention_dim, bias=False)
        self.value_proj = nn.Linear(memory_dim, attention_dim, bias=False)
        self.out_proj = nn.Linear(attention_dim, memory_dim, bias=False)

    def _split(self, x):  # (B, S, A) -> (B, h, S, d_h)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def project_keys(self, memory):
        return torch.cat([self.key_proj(memory), self.value_proj(memory)], dim=-1)  # (B, S, 2A): keys ‖ values

    def forward(self, query, keys, memory, mask, position=None):
        k, v = (self._split(t) for t in keys.chunk(2, dim=-1))  # (B, h, S, d_h)
        q = self._split(self.query_proj(query).unsqueeze(1))  # (B, h, 1, d_h)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, h, 1, S)
        weights = masked_softmax(scores, mask[:, None, None, :])
        context = (weights @ v).transpose(1, 2).reshape(query.shape[0], -1)  # (B, A)
        return self.out_proj(context), weights.mean(dim=1).squeeze(1)


class LocalAttention(GeneralAttention):
    """Luong et al. 2015 (local-p): attend only to a window [p − D, p + D] around a predicted centre

        p = (S − 1) · sigmoid(v_pᵀ tanh(W_p q))          S = real source length
        e_j = qᵀ W_a h_j − (j − p)² / (2σ²),  σ = D / 2   for |j − p| ≤ D, else −∞
        α = softmax(e)                                   (the Gaussian-weighted alignment, renormalised)

    Cost per query is O(D) in principle; here the window is a mask over the full source.
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, window: int = 5):
        super().__init__(query_dim, memory_dim)
        self.window = window
        self.centre = nn.Sequential(nn.Linear(query_dim, attention_dim, bias=False), nn.Tanh(), nn.Linear(attention_dim, 1, bias=False))

    def forward(self, query, keys, memory, mask, position=None):
        last = (mask.sum(1, keepdim=True) - 1).to(query.dtype)  # (B, 1)
        centre = last * torch.sigmoid(self.centre(query))  # (B, 1)
        distance = torch.arange(mask.shape[1], device=mask.device, dtype=query.dtype) - centre  # (B, S)
        sigma = self.window / 2
        scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1) - distance.square() / (2 * sigma**2)
        weights = masked_softmax(scores, mask & (distance.abs() <= self.window))
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class MonotonicLocalAttention(GeneralAttention):
    """Luong et al. 2015 (local-m): the window follows the target position, p = min(t, S − 1)

        e_j = qᵀ W_a h_j  for |j − p| ≤ D, else −∞;   α = softmax(e)

    Source and target are assumed roughly monotonically aligned; no Gaussian, no predicted centre.
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int = 0, window: int = 5):
        super().__init__(query_dim, memory_dim)
        self.window = window

    def forward(self, query, keys, memory, mask, position=None):
        if position is None:
            raise ValueError("local_m attention needs the target position of each query")
        centre = torch.minimum(position, mask.sum(1) - 1).unsqueeze(1)  # (B, 1)
        distance = torch.arange(mask.shape[1], device=mask.device) - centre  # (B, S)
        scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        weights = masked_softmax(scores, mask & (distance.abs() <= self.window))
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


SCORERS = {
    "additive": AdditiveAttention,
    "dot": DotAttention,
    "general": GeneralAttention,
    "scaled_dot": ScaledDotAttention,
    "multihead": MultiHeadAttention,
    "local": LocalAttention,
    "local_m": MonotonicLocalAttention,
}


def build_attention(name: str, query_dim: int, memory_dim: int, attention_dim: int, heads: int = 4, window: int = 5) -> nn.Module:
    if name not in SCORERS:
        raise ValueError(f"unknown model.attention={name!r}; choose one of {', '.join(SCORERS)}")
    if name == "multihead":
        return MultiHeadAttention(query_dim, memory_dim, attention_dim, heads)
    if name in ("local", "local_m"):
        return SCORERS[name](query_dim, memory_dim, attention_dim, window)
    return SCORERS[name](query_dim, memory_dim, attention_dim)
