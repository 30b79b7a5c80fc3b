"""Structured config schemas, registered with Hydra's ConfigStore.

Every YAML file under ``configs/`` is merged onto one of these dataclasses, so
an unknown key (``model.hiden_dim=…``) or a wrong type is an error at start-up,
not a silently ignored setting.  Config groups mirror code modules:
``data`` → ``translate/data``, ``model`` → ``translate/models``,
``trainer`` → ``translate/training/trainer.py``, ``eval`` → ``translate/evaluation/evaluator.py``.
"""

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from translate.data.corpus import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs"  # the YAML groups every command composes its settings from
SCHEDULES = ("inverse_sqrt", "constant")  # trainer.schedule: translate.training.optim.learning_rate_factor


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    model_type: str = "unigram"  # unigram | bpe | char | word (SentencePiece)
    character_coverage: float = 1.0
    input_sentence_size: int = 1_000_000  # sentences sampled for training SentencePiece
    cache_dir: str = "data/cache/tokenizers"  # relative to the project root


@dataclass
class SyntheticConfig:
    """data=synthetic: copy or reverse random symbol sequences; a controlled test of the bottleneck."""

    task: str = "reverse"  # reverse | copy
    symbols: int = 32  # distinct tokens ("s0" … "s31"), each one word
    min_len: int = 1
    max_len: int = 60
    train_size: int = 50_000
    valid_size: int = 500
    test_size: int = 1000
    seed: int = 7  # train, valid and test use seed, seed + 1, seed + 2


@dataclass
class DataConfig:
    name: str = "multi30k"  # multi30k | files | wmt14 | iwslt2017 | synthetic (configs/data/)
    src_lang: str = "de"
    tgt_lang: str = "en"
    format: str = "text"  # files: text ({split}.{lang}) | tsv ({split}.tsv) | jsonl ({split}.jsonl), each maybe .gz
    # Where the files come from, first match wins: `dir`, $TRANSLATE_DATA_DIR,
    # ../shared/data/multi30k, then a one-off download of `url` into `download_dir`.
    dir: str | None = None
    url: str | None = (  # pinned to a commit: configs/data/multi30k.yaml lists the files' SHA-256
        "https://raw.githubusercontent.com/multi30k/dataset/c9be912dc05a3ebf9ae5bb5f7f58c1791cda43ab/data/task1/raw/"
        "{split}.{lang}.gz"
    )
    download_dir: str = "data/multi30k"  # relative to the project root
    hub: str | None = None  # a Hugging Face dataset (or a save_to_disk directory) with a `translation` column
    hub_config: str | None = None  # its configuration, e.g. iwslt2017-de-en
    hub_revision: str | None = None  # the hub dataset's commit (a pinned revision); required to load from the hub
    sha256: dict[str, str] = field(
        default_factory=dict
    )  # file name -> checksum, checked after download and on each use
    max_download_mb: int = 1024  # a downloaded file larger than this is refused
    download_minutes: float = 30.0  # total time one file's download may take
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    train_limit: int | None = None  # keep only the first N training pairs (tests, quick runs)
    valid_limit: int | None = None
    test_limit: int | None = None
    max_tokens: int = 128  # training pairs with more subword tokens on either side are dropped (and counted)
    # encoded training splits (translate/data/store.py), beside the tokenizers; relative to the project
    store_dir: str = "${data.tokenizer.cache_dir}/../stores"
    joinable: bool = True  # whether two pairs joined are a valid pair (trainer.concat_prob); not for reversal
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    """One schema for all model families; each family reads the fields it needs."""

    name: str = "transformer"  # rnn | rnn_attention | transformer
    dropout: float = 0.1
    tie_embeddings: bool = True  # one embedding for source, target and output layer (joint vocabulary)
    enc_layers: int = 3  # the default family's (transformer); configs/model/rnn*.yaml set 1
    dec_layers: int = 3
    # rnn, rnn_attention
    cell: str = "gru"  # gru | lstm
    emb_dim: int = 256
    hidden_dim: int = 256
    bidirectional: bool = True
    attention: str = "additive"  # additive (Bahdanau); see translate/models/attention.py
    attention_dim: int = 256
    window: int = 5  # attention=local: half-width D of the window around the predicted centre
    # attention=hard (translate/models/hard_attention.py): REINFORCE weight λ_r, entropy bonus λ_e, and the decay
    # of the moving-average baseline of log p(y|x,s) per target token; attention=hard_gumbel: the temperature τ
    hard_reinforce_weight: float = 1.0
    hard_entropy_weight: float = 0.01
    hard_baseline_decay: float = 0.9
    gumbel_temperature: float = 1.0
    # transformer
    d_model: int = 256
    heads: int = 4
    ff_dim: int = 1024
    # dropout on the attention weights; SDPA's fused CPU kernel has none, so > 0 takes a path ~2x slower
    # (docs/performance.md)
    attention_dropout: float = 0.0
    pre_norm: bool = True  # pre-LN (stable without long warm-up) or post-LN (Vaswani et al. 2017)
    # where a token is (translate/models/positions.py): sinusoidal (absolute, added to the embeddings) | rotary |
    # alibi | t5 | shaw (relative, in self-attention: no table, so inputs longer than the training's are placed)
    positions: str = "sinusoidal"
    t5_buckets: int = 32  # positions=t5: buckets of relative distance (half per direction in the encoder)
    t5_max_distance: int = 128  # positions=t5: distances beyond share the last bucket
    shaw_clip: int = 16  # positions=shaw: relative distances clipped to [-k, k]


@dataclass
class TrainerConfig:
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on CPU; 0 = all cores
    # fp32 | bf16 | fp16 (CUDA, with loss scaling): autocast for the forward pass; weights and optimizer stay fp32
    precision: str = "auto"  # bf16 where the hardware computes in it (AVX512-BF16, AMX, recent GPUs), else fp32
    batch_tokens: int = 4096  # padded source-or-target tokens per batch, whichever is larger
    accumulate: int = 1  # batches per update (gradient accumulation); the update sees ranks × accumulate batches
    # long inputs: each training example is, with this probability, its pair joined to 1..concat_max-1 random others
    # (sentences side by side). Without it both attention models lose most of their BLEU past 20 words; with it they
    # hold 41-44 up to 60+ words and lose nothing on ordinary sentences (test BLEU +1.9 and +0.2), chosen on the
    # validation set's long-sentence probe (docs/results/long_inputs.md); 0 = the corpus's pairs only
    concat_prob: float = 0.5
    concat_max: int = 5  # at most this many pairs joined into one example
    concat_ramp_epochs: int = 0  # length curriculum: the joining probability rises over this many epochs; 0 = none
    max_epochs: int = 30
    max_steps: int = 0  # 0 = no limit
    max_minutes: float = 30.0  # wall-clock budget, validation included; 0 = no limit (trainer=gpu lifts it)
    optimizer: str = "adam"
    adam_impl: str = "fused"  # fused | foreach | for_loop: the kernel behind Adam's update (docs/performance.md)
    compile: bool = False  # torch.compile the model for training (docs/performance.md has what it buys on CPU)
    loss_chunk: int = 1024  # output layer and loss fused, this many targets at a time; 0 = all logits at once
    release_memory: bool = True  # glibc malloc: trim the heap after each step (less RSS, slower); tcmalloc: no-op
    # peak of the inverse-sqrt schedule; 2e-3 chosen on validation BLEU (docs/performance/time_to_bleu.md):
    # 38.78 against 37.65 at 1e-3 for the Transformer in 30 minutes, and higher for all three models at 800 updates
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.0
    schedule: str = "inverse_sqrt"  # one of SCHEDULES
    warmup_steps: int = 250
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 = no clipping
    # an exponential moving average of the weights (Polyak averaging), updated after every step, its decay warming
    # up to this (translate/training/update.py); validation, best.pt's selection and every later use (eval,
    # translate, export, average) take it. Chosen on validation BLEU from a 30-minute run's checkpoints
    # (docs/performance/time_to_bleu.md); 0 = the raw weights
    ema_decay: float = 0.999
    log_every: int = 10
    valid_every: int = 100  # steps; validation also runs at the end of training
    valid_bleu_sentences: int = 0  # greedy-decode the first N validation pairs for BLEU; 0 = all
    patience: int = 0  # stop after this many validations without a better BLEU; 0 = never
    # numbered checkpoints step_<N>.pt kept besides last.pt and best.pt, one per validation (hard links to
    # last.pt where the file system allows, so no extra writing); 0 = none.  `make average` needs k of them
    keep_last: int = 1
    num_samples: int = 3  # validation translations logged to TensorBoard as text
    attention_maps: int = 2  # validation sentences whose attention is drawn in TensorBoard at each validation
    attention_head: int = -1  # Transformer: which head to draw; -1 = mean over heads


@dataclass
class EvalConfig:
    split: str = "test"  # test | valid | train, resolved through the run's data config
    src: str | None = None  # score any plain-text pair instead of a split
    ref: str | None = None
    name: str | None = None  # output name under <run>/eval/; default: the split or the src file stem
    checkpoint: str = "best"  # best | last | a path to a .pt file
    batch_tokens: int = 6000
    beam_size: int = 1  # 1 = greedy search
    length_penalty: float = 0.6  # GNMT alpha: beam hypotheses ranked by log P / ((5 + length) / 6)^alpha; 0 = raw log P
    n_best: int = 1  # hypotheses returned per sentence (<= beam_size); evaluation scores the best
    max_len_ratio: float = 2.0  # output length limit: ratio × source tokens + max_len_offset
    max_len_offset: int = 10
    length_buckets: list[int] = field(default_factory=lambda: [0, 10, 15, 20, 1000])
    probe_k: int = 5  # long-sentence probe: join k = 1..probe_k consecutive pairs; 0 = no probe
    probe_per_k: int = 0  # probe inputs per k; 0 = the whole test set for every k
    probe_length_buckets: list[int] = field(default_factory=lambda: [0, 10, 20, 30, 40, 50, 60, 1000])
    device: str = "auto"
    # make translate and the server: a line (a request text) of several sentences is translated sentence by sentence,
    # the translations joined by a space (translate/decoding/sentences.py); make eval never splits (it scores lines)
    split_sentences: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # a run directory to continue from its last.pt; `auto`: continue this run's directory if it
    # holds last.pt, and skip training if it is finished (lets a cut comparison pick up again)
    resume: str | None = None
    evaluate: bool = False  # evaluate the best checkpoint (test split and probe) after training
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class DataLocation:
    """Where `make eval` reads a run's split from, if not from the project's configs/data/<name>.yaml: a run's own
    stored locations are never followed (translate/config/stored.py)."""

    dir: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    hub_revision: str | None = None


@dataclass
class EvaluateConfig:
    run: str = "???"  # the run directory written by training
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataLocation = field(default_factory=DataLocation)


@dataclass
class TranslateConfig:
    run: str = "???"  # the run directory written by training
    eval: EvalConfig = field(
        default_factory=EvalConfig
    )  # decoding settings: checkpoint, beam_size, length_penalty, n_best, …
    attention: str | None = None  # a .png file: draw the attention of the (single) input sentence
    engine: str = "torch"  # torch | ct2: the PyTorch model, or its CTranslate2 export (make export)
    quantization: str = "none"  # engine=ct2: which export, <run>/ct2 (none) or <run>/ct2-<quantization>


@dataclass
class ServeConfig:
    run: str | None = None  # a run directory to serve (make serve RUN=…), first
    runs: list[str] = field(default_factory=list)  # more run directories (make serve RUNS="…")
    host: str = "127.0.0.1"  # this machine only; 0.0.0.0 serves the network (with a warning)
    port: int = 8000
    eval: EvalConfig = field(default_factory=EvalConfig)  # checkpoint, device and the default decoding settings
    max_texts: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_body_kb: int = 1024  # request body size
    max_beam: int = 16
    max_queue: int = 256  # requests waiting; more get 503 with Retry-After
    batch_tokens: int = 4000  # source tokens × beam a batch of requests may hold
    max_wait_ms: float = 5.0  # how long the worker waits for requests to join a batch
    # the server's bounds (docs/security.md, "The server's bounds"; each answered in JSON)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names accepted besides the bound address's
    max_connections: int = 0  # open connections, more closed at once (503); 0: from RLIMIT_NOFILE, at most 1024
    limit_concurrency: int = 512  # connections or requests at once, more answered 503 (uvicorn's limit_concurrency)
    header_timeout_s: float = 10.0  # a request's headers complete within this, else 408 and the connection closed
    max_header_kb: int = 64  # a request's headers, else 431 and the connection closed
    body_timeout_s: float = 30.0  # a request's whole body within this of its headers, else 408 and closed
    write_timeout_s: float = 30.0  # a client that takes nothing of its answer this long is cut off
    graceful_timeout_s: float = 20.0  # SIGTERM: how long queued requests may wait, then 503; a batch begun is answered
    max_answer_kb: int = 32768  # one answer's JSON (attention maps), bounded before decoding, else 413


@dataclass
class AverageConfig:
    run: str = "???"  # the run directory written by training
    last: int = 5  # average the newest `last` numbered checkpoints step_<N>.pt (see trainer.keep_last)
    out: str = "averaged"  # written to <run>/<out>.pt; use it with eval.checkpoint=<out>


@dataclass
class ExportConfig:
    run: str = "???"  # the run directory written by training (a transformer)
    checkpoint: str = "best"  # best | last | averaged | a path to a .pt file
    # ct2: <run>/ct2[-<quantization>] for CTranslate2 | hf: <run>/hf, a stock transformers model and tokenizer
    format: str = "ct2"
    # CTranslate2 weight type: none (float32) | int8 | int8_float32 | int8_float16 | int8_bfloat16 | int16 | float16
    # | bfloat16; written to <run>/ct2 (none) or <run>/ct2-<quantization>
    quantization: str = "none"


# The defaults above are `make train`'s (configs/ holds no other values for them).  A run saved before a setting
# existed lacks its key and was trained as below, not with today's default: read only through saved_train_config.
BEFORE_IT_EXISTED = {"trainer": {"concat_prob": 0.0, "concat_max": 3, "ema_decay": 0.0}}


def saved_train_config(saved: dict) -> DictConfig:
    """A run's saved training config on today's schema: keys it lacks take what the run was trained with."""
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), BEFORE_IT_EXISTED, saved)


MAX_SUFFIX = 120  # characters of overrides in a directory name (file systems allow 255 per name)


def overrides_suffix(overrides, exclude_keys) -> str:
    """`_key=value,…` of the command-line overrides not in exclude_keys, for a directory name, or "" if none.

    Values are written as Hydra's sweeper writes them into each job's overrides (2e-3 -> 0.002),
    so a multirun and every one of its jobs resolve the same sweep directory; `/` becomes `_`.
    A list longer than MAX_SUFFIX characters becomes `overrides-<hash>` (each run's config.yaml has them all).
    """
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    kept = [o for o in parsed if o.key_or_group not in exclude_keys]
    items = sorted(
        o.input_line if o.is_sweep_override() else f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in kept
    )
    suffix = ",".join(items).replace("/", "_")
    if len(suffix) > MAX_SUFFIX:
        suffix = f"overrides-{hashlib.sha1(suffix.encode()).hexdigest()[:10]}"
    return f"_{suffix}" if suffix else ""


def run_directory(resume: str | None, new: str) -> str:
    """hydra.run.dir: the directory of the run being resumed (resume=<dir>), else a new one."""
    return new if resume in (None, "auto") else resume


def launch_time(pattern: str) -> str:
    """${launch_time:%Y-…}: $TRANSLATE_LAUNCH_TIME (seconds since the epoch) if set — one time for every rank of
    `make train NPROC=N`, so all name the same run directory — else now."""
    stamp = os.environ.get("TRANSLATE_LAUNCH_TIME")
    return (datetime.fromtimestamp(int(stamp)) if stamp else datetime.now()).strftime(pattern)


def register_configs() -> None:
    OmegaConf.register_new_resolver("launch_time", launch_time, replace=True)
    OmegaConf.register_new_resolver("overrides_suffix", overrides_suffix, replace=True)
    OmegaConf.register_new_resolver("run_directory", run_directory, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="translate_schema", node=TranslateConfig)
    cs.store(name="average_schema", node=AverageConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="export_schema", node=ExportConfig)
