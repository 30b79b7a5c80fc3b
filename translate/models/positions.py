"""Where a token is: the Transformer's position schemes (`model.positions`), one class per equation.

    sinusoidal   x_p + PE(p), a fixed vector added to each embedding                  Vaswani et al. 2017 (absolute)
    rotary       q_i, k_j turned by angles ∝ i and j:  (R_i q)ᵀ (R_j k) = qᵀ R_{j−i} k  Su et al. 2021
    alibi        score_ij − m_h |i − j|                                                 Press et al. 2022
    t5           score_ij + b_h[bucket(j − i)], b learned                               Raffel et al. 2020
    shaw         score_ij + q_i w_{clip(j − i)}ᵀ / √d_k, w learned                       Shaw et al. 2018

The relative schemes add nothing to the embeddings and act in every self-attention layer only (never in
cross-attention), through two methods that read the absolute positions of the queries and keys (1-D long):

    q = scheme.rotate(q, positions)                 (B, h, T, d_k), rotary only; keys are rotated before caching
    bias = scheme.bias(q, queries, keys)            (…, h, T, S) float added to the scores Q Kᵀ / √d_k, or None

so step-by-step decoding places its one query at `start`, the number of cached keys, and gives exactly what
the teacher-forced pass gives.  Their scores depend on i − j only, so no table limits the length: the
Transformer keeps the project's cap MAX_POSITIONS.  A stack (encoder, or the causal decoder) holds one scheme
shared by its layers (`stack_positions`), or, for shaw, one per layer (`layer_positions`).
"""

import math

import torch
from torch import nn

MAX_POSITIONS = 1024  # the longest sequence every model of this project places (the sinusoidal table's length)


class Positions(nn.Module):
    """What the Transformer asks of a relative scheme; each method leaves the attention as it is unless overridden."""

    def rotate(self, x, positions):  # x (B, h, T, d_k), positions (T,) -> x
        return x

    def bias(self, q, queries, keys) -> torch.Tensor | None:  # q (B, h, T, d_k), queries (T,), keys (S,)
        return None


class Sinusoidal(nn.Module):
    """Vaswani et al. 2017, 3.5:  PE(pos, 2i) = sin(pos / 10000^{2i/d}),  PE(pos, 2i+1) = cos(pos / 10000^{2i/d}),
    added to the embeddings; a table of `max_len` positions."""

    def __init__(self, d_model: int, max_len: int = MAX_POSITIONS):
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


class Rotary(Positions):
    """Su et al. 2021 (RoPE): at position p each pair (a, b) of a query's or key's coordinates is turned by p θ_i,

        R_p (a, b) = (a cos pθ_i − b sin pθ_i,  a sin pθ_i + b cos pθ_i),    θ_i = 10000^{−2i/d_k},  i < d_k/2

    so (R_i q)ᵀ (R_j k) = qᵀ R_{j−i} k depends on i − j only.  The pairs are coordinates (i, i + d_k/2), a fixed
    permutation of the paper's (2i, 2i + 1) that the learned W^Q, W^K absorb.  Angles in float32."""

    def __init__(self, d_k: int, base: float = 10000.0):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"rotary positions turn pairs of coordinates: the head size d_model/heads={d_k} is odd")
        inverse = base ** (-torch.arange(0, d_k, 2, dtype=torch.float32) / d_k)
        self.register_buffer("theta", inverse, persistent=False)

    def rotate(self, x, positions):
        angles = positions.to(torch.float32)[:, None] * self.theta  # (T, d_k/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        a, b = x.chunk(2, dim=-1)
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class ALiBi(Positions):
    """Press et al. 2022 (attention with linear biases): no position embedding; head h's scores fall linearly
    with the distance,

        score_ij − m_h |i − j|,    m_h = 2^{−8h/H},  h = 1..H

    In the causal decoder only j ≤ i is seen, where |i − j| = i − j; the encoder is symmetric.  The slopes
    follow the formula for any H (the paper's interpolation for H not a power of two is not used)."""

    def __init__(self, heads: int):
        super().__init__()
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)
        self.register_buffer("slopes", slopes, persistent=False)

    def bias(self, q, queries, keys):
        distance = (queries[:, None] - keys[None, :]).abs().to(torch.float32)  # (T, S)
        return -self.slopes[:, None, None] * distance  # (h, T, S)


class T5Bias(Positions):
    """Raffel et al. 2020 (T5): one learned scalar per head and bucket of the relative distance j − i,

        score_ij + b_h[bucket(j − i)]

    bucket: with n buckets for a direction, distances below n/2 each get their own, then log-spaced buckets
    up to `max_distance`; all farther share the last,

        bucket(d) = d  if d < n/2,  else  min(n − 1,  n/2 + ⌊log(d / (n/2)) / log(max_distance / (n/2)) · n/2⌋)

    Bidirectional (encoder): half the buckets for keys before the query, half for keys after.  Causal
    (decoder): all buckets for the past, d = max(i − j, 0).  b (buckets × heads) starts at zero and is shared
    by the layers of a stack."""

    def __init__(self, heads: int, buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = buckets, max_distance, bidirectional
        self.table = nn.Embedding(buckets, heads)  # b
        nn.init.zeros_(self.table.weight)

    def bucket(self, relative):  # relative = j − i (T, S) long -> bucket index (T, S)
        n, offset = self.buckets, 0
        if self.bidirectional:
            n //= 2
            offset, distance = (relative > 0).long() * n, relative.abs()
        else:
            distance = (-relative).clamp(min=0)
        exact = n // 2
        log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(self.max_distance / exact)
        far = (exact + (log_ratio * (n - exact)).long()).clamp(max=n - 1)
        return offset + torch.where(distance < exact, distance, far)

    def bias(self, q, queries, keys):
        return self.table(self.bucket(keys[None, :] - queries[:, None])).permute(2, 0, 1)  # (h, T, S)


class ShawKeys(Positions):
    """Shaw et al. 2018, relative position representations in the keys (one layer's):

        e_ij = q_i (k_j + w_{clip(j − i)})ᵀ / √d_k,    clip(d) = max(−k, min(k, d))

    2k + 1 learned vectors w of size d_k, shared by the heads, starting at zero; the bias is q_i w_{clip(j−i)}ᵀ / √d_k.
    (The paper's value term a^V is left out.)"""

    def __init__(self, d_k: int, clip: int = 16):
        super().__init__()
        self.clip = clip
        self.table = nn.Parameter(torch.zeros(2 * clip + 1, d_k))  # w_{−k} … w_k

    def bias(self, q, queries, keys):
        index = (keys[None, :] - queries[:, None]).clamp(-self.clip, self.clip) + self.clip  # (T, S)
        per_distance = q @ self.table.to(q.dtype).T / math.sqrt(q.shape[-1])  # (B, h, T, 2k + 1)
        return per_distance.gather(-1, index.expand(*q.shape[:2], -1, -1))  # (B, h, T, S)


POSITIONS = {"sinusoidal": Sinusoidal, "rotary": Rotary, "alibi": ALiBi, "t5": T5Bias, "shaw": ShawKeys}


def scheme_name(cfg) -> str:
    """cfg.positions, checked; a config written before the choice existed (no `positions`) is sinusoidal."""
    name = getattr(cfg, "positions", "sinusoidal")
    if name not in POSITIONS:
        raise ValueError(f"unknown model.positions={name!r}; choose one of {', '.join(POSITIONS)}")
    return name


def stack_positions(cfg, layers: int, causal: bool) -> nn.Module | None:
    """The relative scheme of one stack (the encoder, or the causal decoder) of a ModelConfig: one module shared by
    its `layers`, an nn.ModuleList of one per layer (shaw), or None (sinusoidal, which lives in the embeddings)."""
    name, d_k = scheme_name(cfg), cfg.d_model // cfg.heads
    if name == "rotary":
        return Rotary(d_k)
    if name == "alibi":
        return ALiBi(cfg.heads)
    if name == "t5":
        buckets, distance = getattr(cfg, "t5_buckets", 32), getattr(cfg, "t5_max_distance", 128)
        return T5Bias(cfg.heads, buckets, distance, bidirectional=not causal)
    if name == "shaw":
        return nn.ModuleList(ShawKeys(d_k, getattr(cfg, "shaw_clip", 16)) for _ in range(layers))
    return None


def layer_positions(stack: nn.Module | None, layer: int) -> Positions | None:
    """The scheme layer `layer` of a stack uses."""
    return stack[layer] if isinstance(stack, nn.ModuleList) else stack
