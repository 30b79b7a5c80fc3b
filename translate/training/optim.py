"""The optimizer and the learning-rate schedule a TrainerConfig names."""

import math

import torch

from translate.config.schema import SCHEDULES
from translate.runtime.device import ADAM_KERNELS


def build_optimizer(model: torch.nn.Module, tc) -> torch.optim.Optimizer:
    if tc.optimizer != "adam":
        raise ValueError(f"unknown trainer.optimizer={tc.optimizer!r}; choose adam")
    if tc.adam_impl not in ADAM_KERNELS:
        raise ValueError(f"unknown trainer.adam_impl={tc.adam_impl!r}; choose fused, foreach or for_loop")
    kernel = ADAM_KERNELS[tc.adam_impl]
    return torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, **kernel)


def learning_rate_factor(schedule: str, warmup: int):
    """Multiplier of the base lr at a step: linear warm-up, then constant or ∝ 1/√step (Vaswani et al. 2017)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown trainer.schedule={schedule!r}; choose inverse_sqrt or constant")

    def factor(step: int) -> float:
        step = max(step, 1)
        if step < warmup:
            return step / warmup
        return math.sqrt(warmup / step) if schedule == "inverse_sqrt" and warmup > 0 else 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, tc) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(tc.schedule, tc.warmup_steps))
