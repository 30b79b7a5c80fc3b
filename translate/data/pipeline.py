"""Corpus -> tokenizer -> token store: everything training needs of the data, made in one call.

    data = prepare_data(cfg.data)       # a DataConfig
    data.tokenizer                      # SentencePiece, trained on the training split once and cached
    data.store                          # the training pairs encoded once, memory-mapped (data.store.TokenStore)
    data.valid                          # the raw validation pairs

`make prepare` runs it alone; training runs it first (and finds both caches ready the second time).
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from translate.data.corpus import (
    FORMATS,
    PROJECT_ROOT,
    CorpusError,
    JsonlFile,
    Pairs,
    PairSource,
    SyntheticSplit,
    TextFiles,
    TrainingPairs,
    TsvFile,
    split_file,
)
from translate.data.remote import HubSplit, resolve_data_dir
from translate.data.store import FORMAT, TokenStore, open_or_build
from translate.data.tokenizer import Tokenizer, train_or_load

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    store: TokenStore
    valid: Pairs


def split_source(cfg, role: str) -> PairSource:
    """The source of one split of a `DataConfig` by role (train | valid | test)."""
    split = getattr(cfg, f"{role}_split")
    if cfg.name == "synthetic":
        return SyntheticSplit(cfg.synthetic, role)
    if cfg.hub:
        return HubSplit(cfg.hub, cfg.hub_config, split, cfg.src_lang, cfg.tgt_lang, revision=cfg.hub_revision)
    if cfg.format not in FORMATS:
        raise CorpusError(f"unknown data.format={cfg.format!r}; choose {', '.join(FORMATS)}")
    directory = resolve_data_dir(cfg, [split])  # only this split's files: evaluating never fetches training data
    if cfg.format == "tsv":
        return TsvFile(split_file(directory, f"{split}.tsv"))
    if cfg.format == "jsonl":
        return JsonlFile(split_file(directory, f"{split}.jsonl"), cfg.src_lang, cfg.tgt_lang)
    return TextFiles(split_file(directory, f"{split}.{cfg.src_lang}"), split_file(directory, f"{split}.{cfg.tgt_lang}"))


def load_split(cfg, role: str) -> Pairs:
    """A small split (valid, test) of a `DataConfig`, read whole and cut to its limit; empty is an error."""
    source = split_source(cfg, role)
    pairs = Pairs.read(source, getattr(cfg, f"{role}_limit"))
    if not len(pairs):
        raise CorpusError(
            f"{source.origin}: the {role} split is empty; give it sentence pairs (or another data.{role}_split)"
        )
    log.info(
        "%s %s %s->%s: %s pairs from %s", cfg.name, role, cfg.src_lang, cfg.tgt_lang, f"{len(pairs):,}", source.origin
    )
    return pairs


def store_key(pairs: TrainingPairs, tokenizer: Tokenizer, max_tokens: int | None) -> str:
    """What a store's content depends on: the corpus, the tokenizer, the length filter and the format."""
    what = {"format": FORMAT, "corpus": pairs.identity(), "tokenizer": tokenizer.digest(), "max_tokens": max_tokens}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(cfg, tokenizer_file: str | Path | None = None) -> PreparedData:
    """Read the validation and test splits (a broken test split stops the run before training), train or reuse
    the tokenizer on the training split — or take `tokenizer_file` (a resumed run's own) — and encode the
    training split into its store once, on all cores."""
    valid = load_split(cfg, "valid")
    load_split(cfg, "test")
    train = TrainingPairs(split_source(cfg, "train"), cfg.train_limit)
    if tokenizer_file is not None:
        tokenizer = Tokenizer(tokenizer_file)
    else:
        tokenizer = train_or_load(train.sentences(), cfg.tokenizer, PROJECT_ROOT, train.identity())
    store_dir = (PROJECT_ROOT / cfg.store_dir).resolve() / store_key(train, tokenizer, cfg.max_tokens)
    store = open_or_build(store_dir, train, tokenizer, cfg.max_tokens, len(os.sched_getaffinity(0)))
    store.report_filtering()
    return PreparedData(tokenizer, store, valid)
