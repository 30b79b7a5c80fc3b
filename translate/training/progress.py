"""What the training loop shows while it runs: the mean loss since the last report, target tokens/s, MFU, peak
memory, the learning rate and gradient norm, as TensorBoard scalars, on the progress bar and, every tenth report,
in the log."""

import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from translate.evaluation.validation import write_validation
from translate.training.throughput import peak_memory_mib

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


class NullWriter:
    """A SummaryWriter that writes nothing: the data-parallel ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def event_writers(run_dir: Path, step: int, train_seconds: float, enabled: bool = True):
    """The run's TensorBoard writers: by step, and by training second (`tensorboard/by_time`, its own x axis,
    so its own event files).  After a resume (step > 0) the events a killed run wrote past its checkpoint
    are dropped by TensorBoard (purge_step): no step appears twice.  NullWriters where not `enabled`."""
    if not enabled:
        return NullWriter(), NullWriter()
    resumed, events = step > 0, run_dir / "tensorboard"
    writer = SummaryWriter(str(events), purge_step=step + 1 if resumed else None)
    return writer, SummaryWriter(str(events / "by_time"), purge_step=int(train_seconds) + 1 if resumed else None)


class TrainingProgress:
    """Sums the training NLL on the device between reports, so the loop syncs with the host only when it reports."""

    def __init__(self, writer, device: torch.device, dist=None, flops_per_token=None, peak_gflops=None):
        """`dist` (translate.runtime.ranks.Distributed): the loss reported is the mean over every rank's tokens,
        shown and written by rank 0 alone.  MFU is reported where `flops_per_token` and `peak_gflops` (one rank's
        matmul peak) are known: every rank's tokens/s × FLOPs per token ÷ (ranks × peak)."""
        self.writer, self.device, self.dist = writer, device, dist
        ranks = dist.world_size if dist is not None else 1
        self.flops_per_s_at_peak = peak_gflops * 1e9 * ranks if flops_per_token and peak_gflops else None
        self.flops_per_token = flops_per_token
        self.enabled = dist is None or dist.is_main
        self.bar = None
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.nll, self.tokens, self.all_tokens, self.since = torch.zeros((), device=self.device), 0, 0, now

    def epoch(self, epoch: int, steps: int, done: int) -> tqdm:
        self.bar = tqdm(
            total=steps,
            initial=done,
            desc=f"epoch {epoch + 1}",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not self.enabled,
        )
        return self.bar

    def add(self, nll: torch.Tensor, tokens: int, all_tokens: int | None = None) -> None:
        """This rank's NLL sum over its `tokens`; `all_tokens`, those of every rank (for tokens/s)."""
        self.nll += nll
        self.tokens += tokens
        self.all_tokens += tokens if all_tokens is None else all_tokens
        self.bar.update(1)

    def report(self, step: int, epoch: int, lr: float, grad_norm: torch.Tensor, loud: bool, kept_step: int) -> None:
        """Scalars for `step`; a non-finite loss stops training (last.pt keeps `kept_step`)."""
        now = time.perf_counter()
        nll, tokens = self.dist.sum([self.nll.item(), self.tokens]) if self.dist else (self.nll.item(), self.tokens)
        loss = nll / max(1, tokens)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss at step {step}; lower trainer.lr or set trainer.clip_norm "
                f"(last.pt keeps step {kept_step})"
            )
        tokens_per_s = self.all_tokens / max(now - self.since, 1e-9)
        memory = peak_memory_mib(self.device)
        scalars = {"loss": loss, "lr": lr, "tokens_per_s": tokens_per_s, "grad_norm": float(grad_norm)}
        scalars["peak_memory_mib"] = memory
        mfu = self.flops_per_token * tokens_per_s / self.flops_per_s_at_peak if self.flops_per_s_at_peak else None
        if mfu is not None:
            scalars["mfu"] = mfu
        for tag, value in scalars.items():
            self.writer.add_scalar(f"train/{tag}", value, step)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        if loud and self.enabled:
            usage = f", MFU {mfu:.1%}" if mfu is not None else ""
            log.info(
                "step %d epoch %d loss %.3f lr %.2e %.0f target tok/s%s, peak memory %.0f MiB",
                *(step, epoch + 1, loss, lr, tokens_per_s, usage, memory),
            )
        self._reset(now)


def show_validation(
    writers, step: int, train_seconds: float, seconds: float, improved: bool, result, pairs, num_samples: int, images
) -> None:
    """A validation during training: TensorBoard (by step; BLEU also by training second) and the log."""
    writer, time_writer = writers
    write_validation(writer, "valid", step, result, pairs, num_samples, images)
    time_writer.add_scalar("valid/bleu_by_train_second", result.bleu, int(train_seconds))
    writer.add_scalar("valid/seconds", seconds, step)
    writer.flush()
    time_writer.flush()
    scores = f"loss {result.loss:.3f} ppl {result.ppl:.2f} BLEU {result.bleu:.2f} chrF {result.scores['chrf']:.2f}"
    log.info("step %d valid %s%s (%.1fs)", step, scores, " *best*" if improved else "", seconds)
