"""Dropout (Srivastava et al. 2014) with a cheaper mask on CPUs.

PyTorch draws a CPU dropout mask with `bernoulli_`, one generator call and one float comparison per element:
on the reference Transformer that is a quarter of a training step (docs/performance.md, the profile).  Here the
mask comes from 16-bit random numbers, four to a 64-bit draw of the same generator (so `torch.manual_seed` and
the saved RNG state govern it as before), and an element is kept when its number is at least p·2¹⁶ rounded: the
drop probability is p to within 2⁻¹⁷, and the kept elements are scaled by the exact 1 / (1 − p′) of that
rounded p′, so the expectation is unchanged.  On other devices PyTorch's own dropout is used.
"""

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask that keeps each element with probability 1 − p′ (p′ = p rounded to 1/65536), and p′."""
    threshold = round(p * LEVELS)
    count = torch.Size(shape).numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    halves = words.view(torch.int16)[:count].view(shape)  # uniform on [-32768, 32767]
    return halves >= threshold - LEVELS // 2, threshold / LEVELS


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of `x` (any shape): zero each element with probability p, scale the rest by 1/(1-p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep, rounded = keep_mask(x.shape, p, x.device)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - rounded))


class Dropout(nn.Module):
    """`nn.Dropout` with the mask of `dropout` above."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
