"""One update: a step's micro-batches through the training loss — wrapped in DistributedDataParallel when there
are several ranks — with fp16 loss scaling, gradient clipping, the optimizer, the learning-rate schedule and,
with trainer.ema_decay > 0, the weights' exponential moving average (torch.optim.swa_utils.AveragedModel)."""

import logging
from contextlib import nullcontext

import torch
from torch.optim.swa_utils import AveragedModel

from translate.data.tokenizer import PAD
from translate.models.loss import TrainingLoss, sequence_loss
from translate.runtime.checkpoints import restore_training, training_checkpoint
from translate.runtime.device import heap_trimmer
from translate.runtime.ranks import Distributed
from translate.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


def warmed_up_decay(decay: float, t: int) -> float:
    """The moving average's decay after t updates, min(decay, (1 + t) / (10 + t)) (as TensorFlow's
    ExponentialMovingAverage with num_updates): a short run's average follows its recent weights instead of
    keeping its random start."""
    return min(decay, (1 + t) / (10 + t))


def moving_average(decay: float):
    """AveragedModel's update for an exponential moving average with the warmed-up decay. The first update copies
    the weights (AveragedModel)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1 - warmed_up_decay(decay, int(updates)))

    return update


class Updater:
    """Owns what changes the weights: optimizer, schedule, GradScaler and the (possibly DDP-wrapped) loss."""

    def __init__(self, model, tc, device: torch.device, dist: Distributed, autocast, precision: str):
        self.model, self.tc, self.dist, self.autocast = model, tc, dist, autocast
        self.optimizer = build_optimizer(model, tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.trim_heap = heap_trimmer() if tc.release_memory and device.type == "cpu" else lambda: None
        features = torch.compile(model.features, dynamic=True) if tc.compile else None
        # every rank loads the same checkpoint afterwards, in place, so wrapping first keeps them equal
        self.training_loss = dist.wrap(TrainingLoss(model, tc.label_smoothing, PAD, tc.loss_chunk, features), device)
        # every rank averages the same weights, so every rank holds the same average
        ema = tc.ema_decay
        self.ema = AveragedModel(model, multi_avg_fn=moving_average(ema)) if ema else None
        if self.ema is not None:
            log.info("validation and every later use: the weights' moving average (decay %s)", ema)

    @property
    def inference_model(self):
        """The weights validation and every later use decode with: the moving average if there is one."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, state, config: dict, vocab_size: int) -> dict:
        """A training checkpoint of the model, this updater's optimizer, schedule and scaler, and `state`."""
        return training_checkpoint(
            self.model, self.optimizer, self.scheduler, state, config, vocab_size, self.scaler, self.ema
        )

    def restore(self, ckpt: dict, path, vocab_size: int):
        """Load a training checkpoint into the model, optimizer, schedule and scaler; its TrainState."""
        return restore_training(
            ckpt, self.model, self.optimizer, self.scheduler, path, self.scaler, vocab_size, self.ema
        )

    def loss(self, batch, eager: bool = False):
        """Label-smoothed cross-entropy summed over target tokens: (loss, nll), both sums; with model.attention=hard
        the loss also holds its REINFORCE and entropy terms (translate/models/loss.py `reinforce_term`, which updates
        the baseline), nll never.  `eager`: through the model's own features even where trainer.compile compiled
        them, and on this rank alone (to count FLOPs)."""
        with self.autocast():
            if not eager:
                return self.training_loss(batch)
            return sequence_loss(self.model, batch, self.tc.label_smoothing, PAD, self.tc.loss_chunk)

    def step(self, batches: list, tokens: int):
        """One update on this rank's (micro-batch, weight) pairs, the loss normalised by the `tokens` of the whole
        step (all ranks).  Returns the summed NLL and the gradient norm (tensors: no host sync) and whether the
        GradScaler skipped the update (fp16 gradients overflowed)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nll_sum, per_rank = 0.0, tokens / self.dist.world_size  # DDP averages the ranks' gradients: undo the mean
        for i, (batch, weight) in enumerate(batches):
            last = i == len(batches) - 1  # DDP synchronises gradients on the last micro-batch only
            with nullcontext() if last or not self.dist.enabled else self.training_loss.no_sync():
                loss, nll = self.loss(batch)
                self.scaler.scale(loss * weight / per_rank).backward()  # one process: loss / tokens, as ever
            nll_sum = nll_sum + nll * weight
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients for clipping (no-op otherwise)
        clip = self.tc.clip_norm if self.tc.clip_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        skipped = False
        if self.scaler.is_enabled():
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped if a gradient overflowed; the scale then shrinks
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale_before
        else:
            self.optimizer.step()
        if self.ema is not None and not skipped:
            self.ema.update_parameters(self.model)
        self.scheduler.step()
        self.trim_heap()
        return nll_sum, grad_norm, skipped
