"""The ranges and choices of the config values, checked at start-up before any data is read.

The schemas in `translate/config/schema.py` fix each key's name and type (Hydra refuses unknown keys);
these rules fix what values make sense: sizes above zero, probabilities in [0, 1], one of the
known names.  `check_config` reports every value that breaks a rule in one line, with the default.
"""

import re
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import OmegaConf

from translate.config.schema import (
    SCHEDULES,
    AverageConfig,
    ExportConfig,
    ServeConfig,
    TrainConfig,
    TranslateConfig,
)
from translate.data.corpus import FORMATS
from translate.models import MODELS, build_model
from translate.models.attention import SCORERS
from translate.models.positions import POSITIONS
from translate.models.rnn import CELLS
from translate.runtime.device import ADAM_KERNELS, PRECISIONS
from translate.runtime.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
PROBABILITY: Rule = (lambda v: 0 <= v <= 1, "must be a probability in [0, 1]")
LIMIT: Rule = (lambda v: v is None or 0 < v <= 10**9, "must be in 1..10^9, or null for all")
DEVICE: Rule = (lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None, "must be auto, cpu, cuda or cuda:N")
BETAS: Rule = (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)")
# a name that becomes part of a file name (languages, splits, eval.name, out=): no separators, no `..`
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
NAME: Rule = (
    lambda v: v is None or (SAFE_NAME.fullmatch(v) is not None and ".." not in v),
    "must be a plain name: letters, digits, _ . - (it becomes part of a file name)",
)
BUCKETS: Rule = (
    lambda v: 2 <= len(v) <= 101 and all(a < b for a, b in zip(v, v[1:])) and 0 <= v[0] and v[-1] <= 10**6,
    "must be 2 to 101 increasing bounds in 0..10^6",
)
# Every size a config gives has a ceiling as well as a floor: a stored config (a checkpoint from anyone) goes
# through these rules too, and nothing it says may size an allocation unchecked (docs/security.md)
MAX_SYNTHETIC_WORDS = 20_000_000  # words of one synthetic split (size × max_len); the default train split: 3 M


SECONDS: Rule = (lambda v: 0 < v <= 3600, "must be in (0, 3600] seconds")


def between(low, high) -> Rule:
    return (lambda v: low <= v <= high, f"must be in {low:,}..{high:,}")


def one_of(*choices: str) -> Rule:
    return (lambda v: v in choices, f"must be one of {', '.join(choices)}")


RULES: dict[str, Rule] = {
    "data.max_tokens": between(1, 65_536),
    "data.tokenizer.vocab_size": between(1, 1_000_000),
    "data.tokenizer.input_sentence_size": between(1, 10**9),
    **dict.fromkeys(["data.max_download_mb", "data.download_minutes"], POSITIVE),
    "data.format": one_of(*FORMATS),
    **dict.fromkeys(["data.name", "data.src_lang", "data.tgt_lang", "eval.name", "out"], NAME),
    **dict.fromkeys(["data.train_split", "data.valid_split", "data.test_split"], NAME),
    "data.tokenizer.model_type": one_of("unigram", "bpe", "char", "word"),
    "data.tokenizer.character_coverage": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    **dict.fromkeys(["data.train_limit", "data.valid_limit", "data.test_limit"], LIMIT),
    "data.synthetic.task": one_of("reverse", "copy"),
    "data.synthetic.symbols": between(1, 100_000),
    **{f"data.synthetic.{k}": between(1, 10_000) for k in ("min_len", "max_len")},
    **{f"data.synthetic.{split}_size": between(1, 10_000_000) for split in ("train", "valid", "test")},
    "model.name": one_of(*MODELS),
    "model.cell": one_of(*CELLS),
    "model.attention": one_of(*SCORERS),
    "model.positions": one_of(*POSITIONS),
    "model.t5_buckets": (lambda v: v >= 4 and v % 2 == 0, "must be an even number >= 4"),
    **dict.fromkeys(["model.t5_max_distance", "model.shaw_clip"], POSITIVE),
    **{f"model.{k}": POSITIVE for k in ("emb_dim", "hidden_dim", "enc_layers", "dec_layers", "attention_dim")},
    **{f"model.{k}": POSITIVE for k in ("d_model", "heads", "ff_dim", "window")},
    **dict.fromkeys(["model.dropout", "model.attention_dropout"], PROBABILITY),
    **dict.fromkeys(["model.hard_reinforce_weight", "model.hard_entropy_weight"], NON_NEGATIVE),
    "model.hard_baseline_decay": (lambda v: 0 <= v < 1, "must be in [0, 1): the baseline's decay, e.g. 0.9"),
    "model.gumbel_temperature": POSITIVE,
    "trainer.device": DEVICE,
    "trainer.precision": one_of(*PRECISIONS),
    "trainer.optimizer": one_of("adam"),
    "trainer.adam_impl": one_of(*ADAM_KERNELS),
    "trainer.schedule": one_of(*SCHEDULES),
    **{f"trainer.{k}": POSITIVE for k in ("batch_tokens", "max_epochs", "concat_max", "lr", "log_every")},
    "trainer.valid_every": POSITIVE,
    "trainer.accumulate": POSITIVE,
    **{f"trainer.{k}": NON_NEGATIVE for k in ("threads", "max_steps", "max_minutes", "weight_decay", "warmup_steps")},
    "trainer.concat_ramp_epochs": NON_NEGATIVE,
    **{f"trainer.{k}": NON_NEGATIVE for k in ("clip_norm", "valid_bleu_sentences", "patience", "keep_last")},
    **{f"trainer.{k}": NON_NEGATIVE for k in ("num_samples", "attention_maps", "loss_chunk")},
    **dict.fromkeys(["trainer.label_smoothing", "trainer.concat_prob"], PROBABILITY),
    "trainer.betas": BETAS,
    "trainer.ema_decay": (lambda v: 0 <= v < 1, "must be in [0, 1): 0 = off, e.g. 0.999"),
    "trainer.attention_head": (lambda v: v >= -1, "must be a head's index, or -1 for their mean"),
    "eval.device": DEVICE,
    "eval.split": one_of("test", "valid", "train"),
    "eval.batch_tokens": between(1, 10**8),
    **{f"eval.{k}": between(1, 256) for k in ("beam_size", "n_best")},
    "eval.max_len_ratio": (lambda v: 0 < v <= 100, "must be in (0, 100]"),
    "eval.max_len_offset": between(0, 10_000),
    "eval.probe_k": between(0, 50),
    "eval.probe_per_k": between(0, 10**6),
    "eval.length_penalty": NON_NEGATIVE,
    **dict.fromkeys(["eval.length_buckets", "eval.probe_length_buckets"], BUCKETS),
    # serve
    **{k: POSITIVE for k in ("max_texts", "max_chars", "max_body_kb", "max_beam", "max_queue", "batch_tokens")},
    "port": (lambda v: 0 < v < 65536, "must be a TCP port, 1-65535"),
    "max_wait_ms": NON_NEGATIVE,
    "max_connections": between(0, 1 << 20),  # 0: derived from the file-descriptor limit
    **{k: between(1, 1 << 20) for k in ("limit_concurrency", "max_header_kb", "max_answer_kb")},
    **dict.fromkeys(["header_timeout_s", "body_timeout_s", "write_timeout_s", "graceful_timeout_s"], SECONDS),
    # translate and export (decoding/ct2_export.py): the engine, and CTranslate2's weight types
    "engine": one_of("torch", "ct2"),
    "format": one_of("ct2", "hf"),
    "quantization": one_of(
        "none", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16"
    ),
}
ABSENT = object()
# each command's schema, where a broken value's default is looked up (the first that has the key)
SCHEMAS = [OmegaConf.structured(s) for s in (TrainConfig, ServeConfig, TranslateConfig, ExportConfig, AverageConfig)]


def default_of(key: str):
    return next((v for s in SCHEMAS if (v := OmegaConf.select(s, key, default=ABSENT)) is not ABSENT), None)


def broken_rules(cfg) -> list[str]:
    """`key=value (what is wrong, default d)` for each value of `cfg` that breaks a rule; keys it lacks are skipped."""
    broken = []
    for key, (holds, what) in RULES.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT:
            continue
        value = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        try:
            ok = holds(value)
        except TypeError:
            ok = False
        if not ok:
            broken.append(f"{key}={value} ({what}; default {default_of(key)})")
    return broken


def broken_relations(cfg) -> list[str]:
    """Values fine alone but not together."""
    broken = []
    synthetic, ec = OmegaConf.select(cfg, "data.synthetic"), OmegaConf.select(cfg, "eval")
    if synthetic is not None and synthetic.min_len > synthetic.max_len:
        broken.append(f"data.synthetic.min_len={synthetic.min_len} > data.synthetic.max_len={synthetic.max_len}")
    for split in ("train", "valid", "test"):
        size = synthetic[f"{split}_size"] if synthetic is not None else 0
        if synthetic is not None and size * synthetic.max_len > MAX_SYNTHETIC_WORDS:
            broken.append(
                f"data.synthetic.{split}_size={size} × max_len={synthetic.max_len} words > {MAX_SYNTHETIC_WORDS:,} "
                "(one split's ceiling)"
            )
    if ec is not None and ec.n_best > ec.beam_size:
        broken.append(f"eval.n_best={ec.n_best} > eval.beam_size={ec.beam_size} (n-best lists need a beam that wide)")
    model, tc = OmegaConf.select(cfg, "model"), OmegaConf.select(cfg, "trainer")
    if model is not None and tc is not None and model.name == "transformer" and tc.attention_head >= model.heads:
        broken.append(f"trainer.attention_head={tc.attention_head} but model.heads={model.heads} (-1 = their mean)")
    if model is not None and model.get("positions") == "t5" and model.t5_max_distance <= model.t5_buckets // 2:
        half = model.t5_buckets // 2
        broken.append(f"model.t5_max_distance={model.t5_max_distance} <= model.t5_buckets/2={half} (the exact ones)")
    return broken


def model_errors(cfg) -> list[str]:
    """Build the model on the meta device (no memory, no data) so that sizes that do not fit together show now."""
    model_cfg = OmegaConf.select(cfg, "model")
    if model_cfg is None:
        return []
    try:
        with torch.device("meta"):
            build_model(model_cfg, max(8, OmegaConf.select(cfg, "data.tokenizer.vocab_size", default=8)))
    except (ValueError, RuntimeError) as e:
        return [str(e)]
    return []


def check_config(cfg) -> None:
    """Raise one ConfigError naming every broken value of `cfg` (a train, evaluate or translate config)."""
    broken = broken_rules(cfg)
    broken += broken_relations(cfg) if not broken else []
    broken += model_errors(cfg) if not broken else []
    if broken:
        raise ConfigError(f"bad setting{'s' if len(broken) > 1 else ''}: {'; '.join(broken)}")
