"""The training loop: step, clip, schedule, log, validate, checkpoint.

Everything that decides the next step is saved to `last.pt` at every validation — weights,
optimizer, schedule, and one `TrainState` (counters, epoch and position in its batch order,
best score, patience, RNG states) — so a killed run resumes exactly.
"""

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
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
from translate.data.batching import collate_examples, training_batches
from translate.data.prepare import prepare_data
from translate.data.tokenizer import PAD
from translate.loss import sequence_loss
from translate.models import build_model, count_parameters
from translate.optim import build_optimizer, build_scheduler
from translate.progress import NonFiniteLossError, TrainingProgress
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

    def __init__(self, cfg, run_dir: str | Path):
        self.cfg, self.tc, self.run_dir = cfg, cfg.trainer, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.tc.seed)
        set_threads(self.tc.threads)
        self.device = resolve_device(self.tc.device)
        self.autocast = lambda: autocast(self.device, self.tc.precision)
        self.autocast()  # an unknown precision stops here, before the data is read

        self.data = prepare_data(cfg.data)
        self.data.tokenizer.save(self.run_dir / "tokenizer.model")
        self.concat_prob = self.tc.concat_prob if cfg.data.joinable else 0.0
        if self.tc.concat_prob > 0 and not cfg.data.joinable:
            log.warning(
                "data.joinable=false (%s): joined pairs are not pairs; trainer.concat_prob ignored", cfg.data.name
            )
        self.model = build_model(cfg.model, len(self.data.tokenizer), PAD).to(self.device)
        self.num_parameters = count_parameters(self.model)
        self.optimizer, self.features = build_optimizer(self.model, self.tc), self.model.features
        self.scheduler = build_scheduler(self.optimizer, self.tc)
        if self.tc.compile:
            self.features = torch.compile(self.model.features, dynamic=True)
        self.stop_requested = lambda: False
        self.trim_heap = heap_trimmer() if self.tc.release_memory and self.device.type == "cpu" else lambda: None
        self.state = TrainState()
        if cfg.get("resume"):
            self.load_state(Path(cfg.resume) / "last.pt")
        # events after the checkpoint (of a killed run) are dropped by TensorBoard: no step appears twice
        resumed, events = self.state.step > 0, self.run_dir / "tensorboard"
        self.writer = SummaryWriter(str(events), purge_step=self.state.step + 1 if resumed else None)
        # BLEU over training seconds has its own x axis, so its own event files (and purge point)
        seconds = int(self.state.train_seconds) + 1 if resumed else None
        self.time_writer = SummaryWriter(str(events / "by_time"), purge_step=seconds)
        log.info("model %s: %s parameters on %s", cfg.model.name, f"{self.num_parameters:,}", self.device)

    # ---- state -------------------------------------------------------------------------------
    def load_state(self, path: Path) -> None:
        ckpt = load_checkpoint(path, self.device)
        if ckpt.get("vocab_size", len(self.data.tokenizer)) != len(self.data.tokenizer):
            raise CheckpointError(
                f"{path}: its vocabulary has {ckpt['vocab_size']} pieces, this run's tokenizer "
                f"{len(self.data.tokenizer)}; resume with the run's data settings"
            )
        self.state = restore_training(ckpt, self.model, self.optimizer, self.scheduler, path)
        restore_rng_states(self.state.rng)
        if path.name == "last.pt" and repair_best(self.run_dir, self.state):
            log.warning("best.pt was not linked before the run stopped: it is last.pt (step %d) again", self.state.step)
        state = self.state
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, state.step, state.epoch, state.batch_in_epoch)

    def save(self, name: str) -> None:
        self.state.rng = rng_states()
        config = OmegaConf.to_container(self.cfg, resolve=True)
        ckpt = training_checkpoint(
            self.model, self.optimizer, self.scheduler, self.state, config, len(self.data.tokenizer)
        )
        save_checkpoint(ckpt, self.run_dir / f"{name}.pt")

    def close(self) -> None:
        self.writer.close()
        self.time_writer.close()

    # ---- training ----------------------------------------------------------------------------
    def loss(self, batch):
        """Label-smoothed cross-entropy summed over target tokens: (loss, nll), both sums."""
        features = self.features if self.model.training else self.model.features
        with self.autocast():
            return sequence_loss(self.model, batch, self.tc.label_smoothing, PAD, self.tc.loss_chunk, features)

    def epoch_batches(self) -> list[list[tuple[int, ...]]]:
        """This epoch's batches of examples (tuples of pair indices joined into one); fixed by seed and epoch."""
        tc = self.tc
        return training_batches(
            self.data.train_lengths, tc.batch_tokens, self.concat_prob, tc.concat_max, tc.seed, self.state.epoch
        )

    def collate(self, examples: list[tuple[int, ...]]):
        return collate_examples(self.data.train_src, self.data.train_tgt, examples).to(self.device)

    def out_of_budget(self) -> bool:
        tc, state = self.tc, self.state
        return bool(
            self.stop_requested()
            or (tc.max_steps and state.step >= tc.max_steps)
            or (tc.max_minutes and state.train_seconds >= 60 * tc.max_minutes)
        )

    def train_step(self, batch):
        """One update on a batch; returns the summed NLL and the gradient norm (tensors: no host sync)."""
        self.model.train()
        loss, nll = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / batch.num_tgt_tokens).backward()
        clip = self.tc.clip_norm if self.tc.clip_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.trim_heap()
        return nll, grad_norm

    def fit(self, stop=None) -> dict:
        """Train until max_epochs / max_steps / max_minutes or patience runs out, or `stop.requested` (a
        GracefulStop) turns true; returns the last validation.  A stopped run is neither validated nor saved here."""
        tc, state, last_valid = self.tc, self.state, {}
        started, progress = time.perf_counter() - state.train_seconds, TrainingProgress(self.writer, self.device)
        self.stop_requested = (lambda: stop.requested) if stop is not None else (lambda: False)
        while state.epoch < tc.max_epochs and not self.out_of_budget():
            order = self.epoch_batches()
            with progress.epoch(state.epoch, len(order), state.batch_in_epoch):
                while state.batch_in_epoch < len(order) and not self.out_of_budget():
                    batch = self.collate(order[state.batch_in_epoch])
                    nll, grad_norm = self.train_step(batch)
                    state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
                    state.tokens_trained += batch.num_tgt_tokens
                    state.train_seconds = time.perf_counter() - started
                    progress.add(nll, batch.num_tgt_tokens)
                    if state.step % tc.log_every == 0:
                        loud, kept = state.step % (10 * tc.log_every) == 0, state.step - state.step % tc.valid_every
                        progress.report(state.step, state.epoch, self.scheduler.get_last_lr()[0], grad_norm, loud, kept)
                    if state.step % tc.valid_every == 0:
                        last_valid = self.validate()
                        if tc.patience and state.bad_validations >= tc.patience:
                            log.info("no BLEU improvement in %d validations: stopping", tc.patience)
                            return last_valid
            if state.batch_in_epoch >= len(order):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if state.step % tc.valid_every and not self.stop_requested():  # the final state is validated and saved
            last_valid = self.validate()
        return last_valid

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> dict:
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
        self.save("last")
        keep_numbered(self.run_dir, state.step, tc.keep_last)
        if improved:
            link_checkpoint(self.run_dir / "last.pt", self.run_dir / "best.pt")
        return result.summary(state.step)
