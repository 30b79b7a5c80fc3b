"""The training loop: step, accumulate, clip, schedule, log, validate, checkpoint.

Everything that decides the next step is saved to `last.pt` at every validation — weights,
optimizer, schedule, and one `TrainState` (counters, epoch and position in its batch order,
best score, patience, RNG states of every rank) — so a killed run resumes exactly.

Data parallel (translate/distributed.py): every rank runs this loop on its share of each step's
batches through DistributedDataParallel; rank 0 alone validates and writes, the others wait for it.
"""

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from translate.checkpoint import (
    CheckpointError,
    TrainState,
    keep_numbered,
    link_checkpoint,
    load_checkpoint,
    repair_best,
    restore_training,
    save_checkpoint,
    training_checkpoint,
)
from translate.data.batching import collate_examples, split_batch, training_batches
from translate.data.prepare import prepare_data
from translate.data.tokenizer import PAD
from translate.distributed import Distributed
from translate.loss import TrainingLoss
from translate.models import build_model, count_parameters
from translate.optim import build_optimizer, build_scheduler
from translate.progress import NonFiniteLossError, NullWriter, TrainingProgress
from translate.runtime import (
    autocast,
    heap_trimmer,
    resolve_device,
    restore_rng_states,
    rng_states,
    seed_everything,
    set_threads,
)
from translate.validate import attention_images, validate, write_validation

log = logging.getLogger(__name__)


class Trainer:
    """Trains `cfg.model` on `cfg.data` into `run_dir`: fit() runs the loop, validate() scores and checkpoints."""

    def __init__(self, cfg, run_dir: str | Path, dist: Distributed | None = None, device: torch.device | None = None):
        self.cfg, self.tc, self.run_dir = cfg, cfg.trainer, Path(run_dir)
        self.dist, self.main = dist or Distributed(), (dist or Distributed()).is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.tc.seed)
        set_threads(self.tc.threads)
        self.device = device or resolve_device(self.tc.device)
        self.autocast = lambda: autocast(self.device, self.tc.precision)
        self.autocast()  # an unknown precision stops here, before the data is read

        if not self.main:
            self.dist.barrier()  # rank 0 builds the tokenizer (and its cache) first; the others read it
        self.data = prepare_data(cfg.data)
        if self.main:
            self.data.tokenizer.save(self.run_dir / "tokenizer.model")
            self.dist.barrier()
        self.concat_prob = self.tc.concat_prob if cfg.data.joinable else 0.0
        if self.tc.concat_prob > 0 and not cfg.data.joinable:
            log.warning(
                "data.joinable=false (%s): joined pairs are not pairs; trainer.concat_prob ignored", cfg.data.name
            )
        self.model = build_model(cfg.model, len(self.data.tokenizer), PAD).to(self.device)
        self.num_parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, self.tc)
        self.scheduler = build_scheduler(self.optimizer, self.tc)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.tc.precision == "fp16")
        self.stop_requested, self.interrupted = (lambda: False), False
        self.trim_heap = heap_trimmer() if self.tc.release_memory and self.device.type == "cpu" else lambda: None
        self.state = TrainState()
        if cfg.get("resume"):
            self.load_state(Path(cfg.resume) / "last.pt")
        features = torch.compile(self.model.features, dynamic=True) if self.tc.compile else None
        self.training_loss = TrainingLoss(self.model, self.tc.label_smoothing, PAD, self.tc.loss_chunk, features)
        if self.dist.enabled:  # after loading: DDP starts every rank from rank 0's weights
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.training_loss = DistributedDataParallel(self.training_loss, device_ids=ids)
        self.writer, self.time_writer = self.event_writers() if self.main else (NullWriter(), NullWriter())
        log.info("model %s: %s parameters on %s", cfg.model.name, f"{self.num_parameters:,}", self.device)

    def event_writers(self) -> tuple[SummaryWriter, SummaryWriter]:
        # events after the checkpoint (of a killed run) are dropped by TensorBoard: no step appears twice
        resumed, events = self.state.step > 0, self.run_dir / "tensorboard"
        writer = SummaryWriter(str(events), purge_step=self.state.step + 1 if resumed else None)
        # BLEU over training seconds has its own x axis, so its own event files (and purge point)
        seconds = int(self.state.train_seconds) + 1 if resumed else None
        return writer, SummaryWriter(str(events / "by_time"), purge_step=seconds)

    # ---- state -------------------------------------------------------------------------------
    def load_state(self, path: Path) -> None:
        ckpt = load_checkpoint(path, self.device)
        if ckpt.get("vocab_size", len(self.data.tokenizer)) != len(self.data.tokenizer):
            raise CheckpointError(
                f"{path}: its vocabulary has {ckpt['vocab_size']} pieces, this run's tokenizer "
                f"{len(self.data.tokenizer)}; resume with the run's data settings"
            )
        self.state = restore_training(ckpt, self.model, self.optimizer, self.scheduler, path, self.scaler)
        ranks = self.state.rng.get("ranks")  # saved by a data-parallel run: one state per rank
        restore_rng_states(ranks[min(self.dist.rank, len(ranks) - 1)] if ranks else self.state.rng)
        if self.main and path.name == "last.pt" and repair_best(self.run_dir, self.state):
            log.warning("best.pt was not linked before the run stopped: it is last.pt (step %d) again", self.state.step)
        state = self.state
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, state.step, state.epoch, state.batch_in_epoch)

    def save(self, name: str, rng: list[dict] | None = None) -> None:
        """Every rank calls it (their RNG states are gathered); rank 0 writes `<name>.pt`."""
        rng = rng or self.dist.gather(rng_states())
        if not self.main:
            return
        self.state.rng = rng[0] if len(rng) == 1 else {"ranks": rng}
        config = OmegaConf.to_container(self.cfg, resolve=True)
        ckpt = training_checkpoint(
            self.model, self.optimizer, self.scheduler, self.state, config, len(self.data.tokenizer), self.scaler
        )
        save_checkpoint(ckpt, self.run_dir / f"{name}.pt")

    def close(self) -> None:
        self.writer.close()
        self.time_writer.close()

    # ---- training ----------------------------------------------------------------------------
    def loss(self, batch):
        """Label-smoothed cross-entropy summed over target tokens: (loss, nll), both sums."""
        with self.autocast():
            return self.training_loss(batch)

    def epoch_batches(self) -> list[list[tuple[int, ...]]]:
        """This epoch's step batches of examples (tuples of pair indices joined into one), each of
        ranks × accumulate × trainer.batch_tokens tokens; fixed by seed and epoch."""
        tc, shares = self.tc, self.dist.world_size * self.tc.accumulate
        return training_batches(
            self.data.train_lengths,
            tc.batch_tokens * shares,
            self.concat_prob,
            tc.concat_max,
            tc.seed,
            self.state.epoch,
        )

    def my_batches(self, step_batch: list) -> list:
        """This rank's `accumulate` micro-batches of a step batch, as (batch, weight): a share left empty (a
        batch of fewer examples than shares) trains on a copy of the first example with weight 0."""
        k = self.tc.accumulate
        shares = split_batch(step_batch, self.dist.world_size * k)[self.dist.rank * k : (self.dist.rank + 1) * k]
        return [(self.collate(share), 1.0) if share else (self.collate(step_batch[:1]), 0.0) for share in shares]

    def collate(self, examples: list[tuple[int, ...]]):
        return collate_examples(self.data.train_src, self.data.train_tgt, examples).to(self.device)

    def out_of_time(self) -> bool:
        return bool(self.tc.max_minutes and self.state.train_seconds >= 60 * self.tc.max_minutes)

    def agree(self, tokens: int) -> tuple[int, bool]:
        """One all-reduce per step: the step's target tokens over all ranks, and whether any rank must stop
        (a signal, or its clock past max_minutes) — so every rank takes the same steps."""
        total, signalled, late = self.dist.sum([tokens, float(self.stop_requested()), float(self.out_of_time())])
        self.interrupted = signalled > 0
        over = bool(self.tc.max_steps and self.state.step >= self.tc.max_steps)
        return int(total), self.interrupted or late > 0 or over

    def train_step(self, batches: list, tokens: int):
        """One update on this rank's (micro-batch, weight) pairs, the loss normalised by the `tokens` of the whole
        step (all ranks); returns the summed NLL and the gradient norm (tensors: no host sync)."""
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
        if self.scaler.is_enabled():
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped if a gradient overflowed; the scale then shrinks
            self.scaler.update()
            self.state.skipped_steps += int(self.scaler.get_scale() < scale_before)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.trim_heap()
        return nll_sum, grad_norm

    def fit(self, stop=None) -> dict:
        """Train until max_epochs / max_steps / max_minutes or patience runs out, or `stop.requested` (a
        GracefulStop) turns true on any rank (then `interrupted`; such a run is neither validated nor saved here);
        returns the last validation."""
        tc, state, last_valid, stopping = self.tc, self.state, {}, False
        started = time.perf_counter() - state.train_seconds
        progress = TrainingProgress(self.writer, self.device, self.dist)
        self.stop_requested = (lambda: stop.requested) if stop is not None else (lambda: False)
        while state.epoch < tc.max_epochs and not stopping:
            order = self.epoch_batches()
            with progress.epoch(state.epoch, len(order), state.batch_in_epoch):
                while state.batch_in_epoch < len(order):
                    batches = self.my_batches(order[state.batch_in_epoch])
                    my_tokens = sum(batch.num_tgt_tokens for batch, weight in batches if weight)
                    tokens, stopping = self.agree(my_tokens)
                    if stopping:
                        break
                    nll, grad_norm = self.train_step(batches, tokens)
                    state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
                    state.tokens_trained += tokens
                    state.train_seconds = time.perf_counter() - started
                    progress.add(nll, my_tokens, tokens)
                    if state.step % tc.log_every == 0:
                        loud, kept = state.step % (10 * tc.log_every) == 0, state.step - state.step % tc.valid_every
                        progress.report(state.step, state.epoch, self.scheduler.get_last_lr()[0], grad_norm, loud, kept)
                    if state.step % tc.valid_every == 0:
                        last_valid = self.validate()
                        if tc.patience and state.bad_validations >= tc.patience:
                            log.info("no BLEU improvement in %d validations: stopping", tc.patience)
                            return last_valid
            if not stopping:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if state.step % tc.valid_every and not self.interrupted:  # the final state is validated and saved
            last_valid = self.validate()
        return last_valid

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> dict:
        """Every rank calls it: rank 0 validates and saves while the others wait; the outcome (best score,
        patience) is then shared.  Returns rank 0's validation summary ({} elsewhere)."""
        rng = self.dist.gather(rng_states())
        summary = self.validate_and_save(rng) if self.main else {}
        state = self.state
        shared = (state.best_bleu, state.best_step, state.bad_validations, state.valid_seconds)
        state.best_bleu, state.best_step, state.bad_validations, state.valid_seconds = self.dist.broadcast(shared)
        return summary

    def validate_and_save(self, rng: list[dict]) -> dict:
        """Validation loss / perplexity over all pairs, greedy BLEU over the first N; keeps best.pt by BLEU."""
        started, state, tc, tokenizer = time.perf_counter(), self.state, self.tc, self.data.tokenizer
        result = validate(
            self.model, tokenizer, self.data.valid, tc.loss_chunk, tc.valid_bleu_sentences, None, self.autocast
        )
        if not math.isfinite(result.loss):
            raise NonFiniteLossError(
                f"non-finite validation loss at step {state.step}; lower trainer.lr (last.pt kept)"
            )
        improved, seconds = state.record_validation(result.bleu), time.perf_counter() - started
        state.valid_seconds += seconds
        head = None if tc.attention_head < 0 else tc.attention_head
        images = attention_images(self.model, tokenizer, result, tc.attention_maps, head, f"step {state.step}")
        write_validation(self.writer, "valid", state.step, result, self.data.valid, tc.num_samples, images)
        self.time_writer.add_scalar("valid/bleu_by_train_second", result.bleu, int(state.train_seconds))
        self.writer.add_scalar("valid/seconds", seconds, state.step)
        self.writer.flush()
        self.time_writer.flush()
        scores = f"loss {result.loss:.3f} ppl {result.ppl:.2f} BLEU {result.bleu:.2f} chrF {result.scores['chrf']:.2f}"
        log.info("step %d valid %s%s (%.1fs)", state.step, scores, " *best*" if improved else "", seconds)
        self.save("last", rng)
        keep_numbered(self.run_dir, state.step, tc.keep_last)
        if improved:
            link_checkpoint(self.run_dir / "last.pt", self.run_dir / "best.pt")
        return result.summary(state.step)
