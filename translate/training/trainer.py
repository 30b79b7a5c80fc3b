"""The training loop: step, accumulate, clip, schedule, log, validate, checkpoint.

Everything that decides the next step is saved to `last.pt` at every validation — weights,
optimizer, schedule, and one `TrainState` (counters, epoch and position in its batch order,
best score, patience, RNG states of every rank) — so a killed run resumes exactly.

Callbacks (`Trainer(…, callbacks=[f])`) see every update: f(trainer, UpdateReport), after the update and before
its logging and validation; the benchmarks measure through them.  Each run logs its target tokens/s, MFU (model
FLOPs over the measured matmul peak, translate/training/throughput.py) and peak memory.

Data parallel (translate/runtime/ranks.py): every rank runs this loop on its share of each step's
batches through DistributedDataParallel; rank 0 alone validates and writes, the others wait for it.
"""

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from translate.data.batching import (
    EpochBatches,
    collate_examples,
    epoch_joining_probability,
    joining_probability,
    rank_shares,
    training_batches,
)
from translate.data.pipeline import prepare_data
from translate.data.tokenizer import PAD
from translate.evaluation.validation import attention_images, validate
from translate.models import build_model, count_parameters
from translate.runtime.allocator import describe_allocator
from translate.runtime.checkpoints import (
    TrainState,
    keep_checkpoints,
    load_checkpoint,
    repair_best,
    save_checkpoint,
)
from translate.runtime.device import (
    autocast,
    resolve_device,
    resolve_precision,
    restore_rng_states,
    rng_states,
    seed_everything,
    set_threads,
)
from translate.runtime.ranks import Distributed
from translate.training.progress import NonFiniteLossError, TrainingProgress, event_writers, show_validation
from translate.training.throughput import measure_throughput
from translate.training.update import Updater

log = logging.getLogger(__name__)


def tokens_per_update(tc, world_size: int) -> int:
    """The token budget of one update: ranks × trainer.accumulate × trainer.batch_tokens (each batch's cap)."""
    return world_size * tc.accumulate * tc.batch_tokens


def log_start(trainer: "Trainer", why: str) -> None:
    """The start of training: the model, device, precision (`why` it was chosen) and allocator; the ranks,
    accumulation and tokens per update."""
    tc, ranks = trainer.tc, trainer.dist.world_size
    precision = f"{trainer.precision} ({why}), allocator {describe_allocator()}"
    params, name = f"{trainer.num_parameters:,}", trainer.cfg.model.name
    log.info("model %s: %s parameters on %s, precision %s", name, params, trainer.device, precision)
    world = f"world size {ranks} rank{'' if ranks == 1 else 's'}, accumulate {tc.accumulate}"
    tokens = f"batch_tokens {tc.batch_tokens}: about {tokens_per_update(tc, ranks):,} target tokens per update"
    log.info("%s, %s (batch_tokens caps each batch)", world, tokens)


@dataclass(frozen=True)
class UpdateReport:
    """What a callback learns of one update."""

    step: int  # updates done, this one included
    tokens: int  # target tokens of the update, every rank's
    padded_tokens: int  # target positions of this rank's batches, padding included
    batch_seconds: float  # this rank's time building the update's batches


class Trainer:
    """Trains `cfg.model` on `cfg.data` into `run_dir`: fit() runs the loop, validate() scores and checkpoints."""

    def __init__(
        self,
        cfg,
        run_dir: str | Path,
        dist: Distributed | None = None,
        device: torch.device | None = None,
        callbacks: Sequence[Callable[["Trainer", UpdateReport], None]] = (),
    ):
        self.cfg, self.tc, self.run_dir, self.callbacks = cfg, cfg.trainer, Path(run_dir), list(callbacks)
        self.dist = dist or Distributed()
        self.main = self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.tc.seed)
        set_threads(self.tc.threads)
        self.device = device or resolve_device(self.tc.device)
        self.precision, why = resolve_precision(self.tc.precision, self.device)  # an unknown one stops here
        self.autocast = lambda: autocast(self.device, self.precision)

        own = self.run_dir / "tokenizer.model"  # a resumed run keeps its own tokenizer, whatever the cache holds
        own = own if cfg.get("resume") and own.exists() else None
        self.data = self.dist.main_first(lambda: prepare_data(cfg.data, own))  # rank 0 builds the caches
        if self.main:
            self.data.tokenizer.save(self.run_dir / "tokenizer.model")
        self.concat_prob = joining_probability(self.tc.concat_prob, cfg.data.joinable, cfg.data.name)
        self.model = build_model(cfg.model, len(self.data.tokenizer), PAD).to(self.device)
        self.num_parameters = count_parameters(self.model)
        self.update = Updater(self.model, self.tc, self.device, self.dist, self.autocast, self.precision)
        self.stop_requested, self.interrupted = (lambda: False), False
        self.flops_per_token = self.peak_gflops = None  # measured when fit() starts (throughput.py)
        self.state = TrainState()
        if cfg.get("resume"):
            self.load_state(Path(cfg.resume) / "last.pt")
        state = self.state
        self.writer, self.time_writer = event_writers(self.run_dir, state.step, state.train_seconds, self.main)
        log_start(self, why)

    # ---- state -------------------------------------------------------------------------------
    def load_state(self, path: Path) -> None:
        self.state = self.update.restore(load_checkpoint(path, self.device), path, len(self.data.tokenizer))
        restore_rng_states(self.state.rng, self.dist.rank)
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
        checkpoint = self.update.checkpoint(self.state, config, len(self.data.tokenizer))
        save_checkpoint(checkpoint, self.run_dir / f"{name}.pt")

    def close(self) -> None:
        self.writer.close()
        self.time_writer.close()

    # ---- training ----------------------------------------------------------------------------
    def epoch_batches(self) -> EpochBatches:
        """This epoch's step batches of examples (tuples of pair indices joined into one), each of
        ranks × accumulate × trainer.batch_tokens tokens; fixed by seed and epoch."""
        tc, step_tokens = self.tc, tokens_per_update(self.tc, self.dist.world_size)
        lengths, epoch = self.data.store.lengths, self.state.epoch
        joining = epoch_joining_probability(self.concat_prob, tc.concat_ramp_epochs, epoch)
        return training_batches(lengths, step_tokens, joining, tc.concat_max, tc.seed, epoch)

    def my_batches(self, step_batch: list) -> list:
        """This rank's micro-batches of a step batch, as (batch, weight) (data.batching.rank_shares)."""
        shares = rank_shares(step_batch, self.dist.rank, self.dist.world_size, self.tc.accumulate)
        return [(self.collate(examples), weight) for examples, weight in shares]

    def collate(self, examples: list[tuple[int, ...]]):
        return collate_examples(self.data.store, examples).to(self.device)

    def agree(self, tokens: int) -> tuple[int, bool]:
        """One all-reduce per step: the step's target tokens over all ranks, and whether any rank must stop
        (a signal, or its clock past max_minutes) — so every rank takes the same steps."""
        late = bool(self.tc.max_minutes and self.state.train_seconds >= 60 * self.tc.max_minutes)
        total, signalled, late = self.dist.sum([tokens, float(self.stop_requested()), float(late)])
        self.interrupted = signalled > 0
        over = bool(self.tc.max_steps and self.state.step >= self.tc.max_steps)
        return int(total), self.interrupted or late > 0 or over

    def fit(self, stop=None) -> dict:
        """Train until max_epochs / max_steps / max_minutes or patience runs out, or `stop.requested` (a
        GracefulStop) turns true on any rank (then `interrupted`; such a run is neither validated nor saved here);
        returns the last validation."""
        tc, state, last_valid, stopping, progress = self.tc, self.state, {}, False, None
        self.stop_requested = (lambda: stop.requested) if stop is not None else (lambda: False)
        while state.epoch < tc.max_epochs and not stopping:
            order = self.epoch_batches()
            if progress is None:  # what MFU is reported against, measured once on the next batch's sentences
                next_batch = order[min(state.batch_in_epoch, len(order) - 1)] if order else []
                self.flops_per_token, self.peak_gflops = measure_throughput(self, next_batch)
                started = time.perf_counter() - state.train_seconds
                progress = TrainingProgress(self.writer, self.device, self.dist, self.flops_per_token, self.peak_gflops)
            with progress.epoch(state.epoch, len(order), state.batch_in_epoch):
                while state.batch_in_epoch < len(order):
                    building = time.perf_counter()
                    batches = self.my_batches(order[state.batch_in_epoch])
                    building = time.perf_counter() - building
                    my_tokens = sum(batch.num_tgt_tokens for batch, weight in batches if weight)
                    tokens, stopping = self.agree(my_tokens)
                    if stopping:
                        break
                    nll, grad_norm, skipped = self.update.step(batches, tokens)
                    state.skipped_steps += skipped
                    state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
                    state.tokens_trained += tokens
                    state.train_seconds = time.perf_counter() - started
                    progress.add(nll, my_tokens, tokens)
                    report_update(self, tokens, batches, building)
                    if state.step % tc.log_every == 0:
                        loud, kept = state.step % (10 * tc.log_every) == 0, state.step - state.step % tc.valid_every
                        lr = self.update.scheduler.get_last_lr()[0]
                        progress.report(state.step, state.epoch, lr, grad_norm, loud, kept)
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
        summary = validate_and_save(self, rng) if self.main else {}
        state = self.state
        shared = (state.best_bleu, state.best_step, state.bad_validations, state.valid_seconds)
        state.best_bleu, state.best_step, state.bad_validations, state.valid_seconds = self.dist.broadcast(shared)
        return summary


def validate_and_save(trainer: Trainer, rng: list[dict]) -> dict:
    """Rank 0's validation: loss / perplexity over all pairs, greedy BLEU over the first N, shown and logged;
    last.pt saved, best.pt kept by BLEU."""
    started, state, tc, tokenizer = time.perf_counter(), trainer.state, trainer.tc, trainer.data.tokenizer
    valid, model = trainer.data.valid, trainer.update.inference_model  # the moving average, if the run keeps one
    result = validate(model, tokenizer, valid, tc.loss_chunk, tc.valid_bleu_sentences, autocast=trainer.autocast)
    if not math.isfinite(result.loss):
        raise NonFiniteLossError(f"non-finite validation loss at step {state.step}; lower trainer.lr (last.pt kept)")
    improved, seconds = state.record_validation(result.bleu), time.perf_counter() - started
    state.valid_seconds += seconds
    state.train_seconds += seconds  # its clock was read before this validation (the last one is after every step)
    head = None if tc.attention_head < 0 else tc.attention_head
    images = attention_images(model, tokenizer, result, tc.attention_maps, head, f"step {state.step}")
    writers = (trainer.writer, trainer.time_writer)
    show_validation(writers, state.step, state.train_seconds, seconds, improved, result, valid, tc.num_samples, images)
    trainer.save("last", rng)
    keep_checkpoints(trainer.run_dir, state.step, tc.keep_last, improved)
    return result.summary(state.step)


def report_update(trainer: Trainer, tokens: int, batches: list, batch_seconds: float) -> None:
    """Each callback's view of the update just made (UpdateReport)."""
    if trainer.callbacks:
        padded = sum(batch.tgt_out.numel() for batch, weight in batches if weight)
        report = UpdateReport(trainer.state.step, tokens, padded, batch_seconds)
        for callback in trainer.callbacks:
            callback(trainer, report)
