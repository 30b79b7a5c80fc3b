"""The training loop: where corpus, tokenizer, batches, model and evaluation meet.

Everything that decides the next step (model, optimizer, schedule, RNG states,
epoch and position in its batch order, counters, best score, patience) is one
trainer state, saved to `last.pt` as a whole, so a killed run resumes exactly.
"""

import ctypes
import ctypes.util
import logging
import math
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from translate.checkpoint import link_checkpoint, load_checkpoint, numbered_checkpoints, save_checkpoint
from translate.data.batching import bucketed_batch_order, collate, concatenation_plan
from translate.data.corpus import PROJECT_ROOT, load_corpus
from translate.data.tokenizer import BOS, EOS, PAD, Tokenizer, train_or_load
from translate.loss import linear_cross_entropy, smoothed_cross_entropy
from translate.metrics import corpus_scores
from translate.models import build_model, count_parameters
from translate.plots import attention_figure
from translate.search import translate_ids

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device=cpu")
    return torch.device(name)


def learning_rate_factor(schedule: str, warmup: int):
    """Multiplier of the base lr at a step: linear warm-up, then constant or ∝ 1/√step (Vaswani et al. 2017)."""
    if schedule not in ("inverse_sqrt", "constant"):
        raise ValueError(f"unknown trainer.schedule={schedule!r}; choose inverse_sqrt or constant")

    def factor(step: int) -> float:
        step = max(step, 1)
        if step < warmup:
            return step / warmup
        return math.sqrt(warmup / step) if schedule == "inverse_sqrt" and warmup > 0 else 1.0

    return factor


def heap_trimmer():
    """glibc's malloc_trim, or a no-op where there is none.  Batch shapes change every step, so glibc's heap
    fragments and keeps freed pages; giving them back after each step cuts peak RSS by up to a quarter
    and costs 12–15 % of the step's speed (docs/performance.md)."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim else (lambda: None)


def build_optimizer(model: torch.nn.Module, tc) -> torch.optim.Optimizer:
    if tc.optimizer != "adam":
        raise ValueError(f"unknown trainer.optimizer={tc.optimizer!r}; choose adam")
    if tc.adam_impl not in ("fused", "foreach", "for_loop"):
        raise ValueError(f"unknown trainer.adam_impl={tc.adam_impl!r}; choose fused, foreach or for_loop")
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[tc.adam_impl]
    return torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, **impl)


def encode_split(tokenizer: Tokenizer, pairs, max_tokens: int | None = None):
    """Subword ids per side; with `max_tokens`, over-long pairs are dropped and counted."""
    src, tgt = tokenizer.encode(pairs.src), tokenizer.encode(pairs.tgt)
    if max_tokens:
        keep = [i for i in range(len(src)) if len(src[i]) <= max_tokens and len(tgt[i]) <= max_tokens]
        if len(keep) < len(src):
            log.warning("dropped %d training pairs longer than data.max_tokens=%d", len(src) - len(keep), max_tokens)
        src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    return src, tgt


class Trainer:
    def __init__(self, cfg, run_dir: str | Path):
        self.cfg, self.tc, self.run_dir = cfg, cfg.trainer, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.tc.seed)
        random.seed(self.tc.seed)
        if self.tc.threads > 0:
            torch.set_num_threads(self.tc.threads)
        self.device = resolve_device(self.tc.device)
        if self.tc.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown trainer.precision={self.tc.precision!r}; choose fp32 or bf16")

        corpus = load_corpus(cfg.data)
        self.tokenizer = train_or_load(corpus["train"].src + corpus["train"].tgt, cfg.data.tokenizer, PROJECT_ROOT)
        self.tokenizer.save(self.run_dir / "tokenizer.model")
        self.train_src, self.train_tgt = encode_split(self.tokenizer, corpus["train"], cfg.data.max_tokens)
        self.train_lengths = [max(len(s), len(t)) + 1 for s, t in zip(self.train_src, self.train_tgt)]
        self.valid = corpus["valid"]
        self.valid_src, self.valid_tgt = encode_split(self.tokenizer, self.valid)

        if self.tc.concat_prob > 0 and not cfg.data.joinable:
            log.warning("data %s: joined pairs are not valid pairs (data.joinable=false); trainer.concat_prob ignored", cfg.data.name)
        self.model = build_model(cfg.model, len(self.tokenizer), PAD).to(self.device)
        self.num_parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, self.tc)
        self.features = torch.compile(self.model.features, dynamic=True) if self.tc.compile else self.model.features
        self.trim_heap = heap_trimmer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, learning_rate_factor(self.tc.schedule, self.tc.warmup_steps))
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_bleu, self.bad_validations, self.train_seconds = -1.0, 0, 0.0
        self.valid_seconds, self.tokens_trained = 0.0, 0
        if cfg.get("resume"):
            self.load_state(Path(cfg.resume) / "last.pt")
        log.info("model %s: %s parameters on %s", cfg.model.name, f"{self.num_parameters:,}", self.device)

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_bleu": self.best_bleu,
            "bad_validations": self.bad_validations,
            "train_seconds": self.train_seconds,
            "valid_seconds": self.valid_seconds,
            "tokens_trained": self.tokens_trained,
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "vocab_size": len(self.tokenizer),
        }

    def load_state(self, path: Path) -> None:
        ckpt = load_checkpoint(path, self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        for key in ("step", "epoch", "batch_in_epoch", "best_bleu", "bad_validations", "train_seconds", "valid_seconds", "tokens_trained"):
            setattr(self, key, ckpt[key])
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate((3, tuple(ckpt["python_rng"]), None))
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def save(self, name: str) -> None:
        save_checkpoint(self.state_dict(), self.run_dir / f"{name}.pt")

    def save_numbered(self) -> None:
        """step_<N>.pt, the state just saved as last.pt, keeping the newest `trainer.keep_last` (0: none)."""
        if self.tc.keep_last <= 0:
            return
        link_checkpoint(self.run_dir / "last.pt", self.run_dir / f"step_{self.step}.pt")
        for old in numbered_checkpoints(self.run_dir)[: -self.tc.keep_last]:
            old.unlink(missing_ok=True)

    # ---- training ----------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast when trainer.precision=bf16 (CPUs with AVX512-BF16 / AMX, recent GPUs), else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tc.precision == "bf16")

    def loss(self, batch):
        """Label-smoothed cross-entropy summed over target tokens: returns (loss, nll), both sums."""
        forward = self.features if self.model.training else self.model.features
        target, smoothing = batch.tgt_out.flatten(), self.tc.label_smoothing
        with self.autocast():
            features = forward(batch.src, batch.src_mask, batch.tgt_in).flatten(0, 1)  # (N, D)
            if self.tc.loss_chunk:
                return linear_cross_entropy(features, self.model.generator.weight, target, smoothing, PAD, self.tc.loss_chunk)
            logits = self.model.generator(features)
        return smoothed_cross_entropy(logits, target, smoothing, PAD)

    def epoch_batches(self) -> list[list[tuple[int, ...]]]:
        """This epoch's batches of examples (tuples of training-pair indices joined into one); fixed by seed and epoch."""
        tc = self.tc
        prob = tc.concat_prob if self.cfg.data.joinable else 0.0
        plan = concatenation_plan(len(self.train_src), prob, tc.concat_max, tc.seed, self.epoch)
        lengths = [sum(self.train_lengths[i] for i in example) for example in plan]
        return [[plan[j] for j in batch] for batch in bucketed_batch_order(lengths, tc.batch_tokens, tc.seed, self.epoch)]

    def collate(self, examples: list[tuple[int, ...]]):
        join = lambda side, example: [t for i in example for t in side[i]]  # noqa: E731
        return collate(
            [join(self.train_src, e) for e in examples], [join(self.train_tgt, e) for e in examples], [e[0] for e in examples]
        ).to(self.device)

    def out_of_budget(self) -> bool:
        return bool(
            (self.tc.max_steps and self.step >= self.tc.max_steps)
            or (self.tc.max_minutes and self.train_seconds >= 60 * self.tc.max_minutes)
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
        if self.tc.release_memory and self.device.type == "cpu":
            self.trim_heap()
        return nll, grad_norm

    def fit(self) -> dict:
        """Train until max_epochs / max_steps / max_minutes or patience runs out; returns the last validation."""
        tc, last_valid = self.tc, {}
        started = time.perf_counter() - self.train_seconds
        window = {"loss": torch.zeros((), device=self.device), "tokens": 0, "since": time.perf_counter()}
        while self.epoch < tc.max_epochs and not self.out_of_budget():
            order = self.epoch_batches()
            bar = tqdm(total=len(order), initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}", dynamic_ncols=True, mininterval=1.0)
            while self.batch_in_epoch < len(order) and not self.out_of_budget():
                batch = self.collate(order[self.batch_in_epoch])
                nll, grad_norm = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                window["loss"] += nll
                window["tokens"] += batch.num_tgt_tokens
                self.tokens_trained += batch.num_tgt_tokens
                self.train_seconds = time.perf_counter() - started
                bar.update(1)
                if self.step % tc.log_every == 0:
                    self._log_train(window, grad_norm, bar)
                if self.step % tc.valid_every == 0:
                    last_valid = self.validate()
                    if tc.patience and self.bad_validations >= tc.patience:
                        log.info("no BLEU improvement in %d validations: stopping", tc.patience)
                        bar.close()
                        return last_valid
            bar.close()
            if self.batch_in_epoch >= len(order):
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.step % tc.valid_every:  # the final state is always validated and saved
            last_valid = self.validate()
        return last_valid

    def _log_train(self, window, grad_norm, bar) -> None:
        now = time.perf_counter()
        loss = window["loss"].item() / max(1, window["tokens"])  # the only host sync of the loop
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss at step {self.step}; lower trainer.lr or set trainer.clip_norm "
                f"(last.pt keeps step {self.step - self.step % self.tc.valid_every})"
            )
        tokens_per_s = window["tokens"] / max(now - window["since"], 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        for tag, value in (("loss", loss), ("lr", lr), ("tokens_per_s", tokens_per_s), ("grad_norm", float(grad_norm))):
            self.writer.add_scalar(f"train/{tag}", value, self.step)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        log.debug("step %d loss %.3f lr %.2e %.0f tok/s grad norm %.2f", self.step, loss, lr, tokens_per_s, float(grad_norm))
        if self.step % (10 * self.tc.log_every) == 0:
            log.info("step %d epoch %d loss %.3f lr %.2e %.0f target tok/s", self.step, self.epoch + 1, loss, lr, tokens_per_s)
        window.update(loss=torch.zeros((), device=self.device), tokens=0, since=now)

    def summary(self) -> dict:
        """What a comparison reports about this training run."""
        step_seconds = max(self.train_seconds - self.valid_seconds, 1e-9)
        return {
            "model": self.cfg.model.name,
            "parameters": self.num_parameters,
            "steps": self.step,
            "epochs": round(self.epoch + self.batch_in_epoch / len(self.epoch_batches()), 2),
            "train_minutes": round(self.train_seconds / 60, 2),
            "valid_minutes": round(self.valid_seconds / 60, 2),
            "target_tokens": self.tokens_trained,
            "tokens_per_s": round(self.tokens_trained / step_seconds, 1),
            "best_valid_bleu": self.best_bleu,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }

    # ---- validation ----------------------------------------------------------------------------
    def _log_attention_maps(self, hyps) -> None:
        """Attention heatmaps (source × greedy output) for the first few validation sentences."""
        if not self.model.has_attention:
            return
        head = None if self.tc.attention_head < 0 else self.tc.attention_head
        for i in range(min(self.tc.attention_maps, len(hyps))):
            batch = collate([self.valid_src[i]], [hyps[i].tokens], [i]).to(self.device)
            src_pieces = self.tokenizer.id_to_piece(self.valid_src[i]) + ["</s>"]
            tgt_pieces = self.tokenizer.id_to_piece(hyps[i].tokens) + ["</s>"]
            for name, weights in self.model.attention_maps(batch.src, batch.src_mask, batch.tgt_in, head).items():
                fig = attention_figure(weights[0].float().cpu().numpy(), src_pieces, tgt_pieces, f"step {self.step}, {name}")
                self.writer.add_figure(f"attention/sentence{i}/{name}", fig, self.step)

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss / perplexity over all pairs, greedy BLEU over the first N; keep best.pt by BLEU."""
        started = time.perf_counter()
        self.model.eval()
        nll, tokens = torch.zeros((), device=self.device), 0
        for start in range(0, len(self.valid_src), 64):
            idx = list(range(start, min(start + 64, len(self.valid_src))))
            batch = collate([self.valid_src[i] for i in idx], [self.valid_tgt[i] for i in idx], idx).to(self.device)
            nll += self.loss(batch)[1]
            tokens += batch.num_tgt_tokens
        n = self.tc.valid_bleu_sentences or len(self.valid_src)
        with self.autocast():
            hyps = translate_ids(self.model, self.valid_src[:n], BOS, EOS)
        hypotheses = self.tokenizer.decode([h.tokens for h in hyps])
        scores = corpus_scores(hypotheses, self.valid.tgt[:n])
        loss = nll.item() / max(1, tokens)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"non-finite validation loss at step {self.step}; lower trainer.lr (best.pt and last.pt kept)")
        result = {"step": self.step, "loss": loss, "ppl": math.exp(min(loss, 50)), "bleu": scores["bleu"], "chrf": scores["chrf"]}
        improved = scores["bleu"] > self.best_bleu
        self.best_bleu, self.bad_validations = (scores["bleu"], 0) if improved else (self.best_bleu, self.bad_validations + 1)
        seconds = time.perf_counter() - started
        self.valid_seconds += seconds
        for tag in ("loss", "ppl", "bleu", "chrf"):
            self.writer.add_scalar(f"valid/{tag}", result[tag], self.step)
        self.writer.add_scalar("valid/bleu_by_train_second", scores["bleu"], int(self.train_seconds))  # x: wall-clock seconds
        self.writer.add_scalar("valid/seconds", seconds, self.step)
        samples = "\n\n".join(
            f"**src** {self.valid.src[i]}  \n**ref** {self.valid.tgt[i]}  \n**hyp** {hypotheses[i]}"
            for i in range(min(self.tc.num_samples, n))
        )
        self.writer.add_text("valid/samples", samples, self.step)
        self._log_attention_maps(hyps)
        self.writer.flush()
        log.info(
            "step %d valid loss %.3f ppl %.2f BLEU %.2f chrF %.2f%s (%.1fs)",
            self.step,
            loss,
            result["ppl"],
            scores["bleu"],
            scores["chrf"],
            " *best*" if improved else "",
            seconds,
        )
        self.save("last")
        self.save_numbered()
        if improved:
            link_checkpoint(self.run_dir / "last.pt", self.run_dir / "best.pt")
        return result
