"""Corpus -> tokenizer -> encoded splits: everything training needs of the data, made in one call.

data = prepare_data(cfg.data)      # a DataConfig
data.tokenizer                      # SentencePiece, trained on the training split once and cached
data.train_src, data.train_tgt      # subword ids per training pair (over-long pairs dropped and counted)
data.train_lengths                  # the padded cost of each pair: max(source, target) + 1
data.valid                          # the raw validation pairs
"""

import logging
from dataclasses import dataclass

from translate.data.corpus import PROJECT_ROOT, CorpusError, Pairs, load_corpus
from translate.data.tokenizer import Tokenizer, train_or_load

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train_src: list[list[int]]
    train_tgt: list[list[int]]
    train_lengths: list[int]
    valid: Pairs


def encode_split(
    tokenizer: Tokenizer, pairs: Pairs, max_tokens: int | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Subword ids per side; with `max_tokens`, over-long pairs are dropped and counted."""
    src, tgt = tokenizer.encode(pairs.src), tokenizer.encode(pairs.tgt)
    if max_tokens:
        keep = [i for i in range(len(src)) if len(src[i]) <= max_tokens and len(tgt[i]) <= max_tokens]
        if src and not keep:
            raise CorpusError(f"all {len(src)} training pairs are longer than data.max_tokens={max_tokens}; raise it")
        if len(keep) < len(src):
            log.warning("dropped %d training pairs longer than data.max_tokens=%d", len(src) - len(keep), max_tokens)
        src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    return src, tgt


def prepare_data(cfg) -> PreparedData:
    """Read the corpus named by `cfg` (all three splits, so a broken test split stops the run before training),
    train or reuse its tokenizer, and encode the training pairs."""
    corpus = load_corpus(cfg)
    tokenizer = train_or_load(corpus["train"].src + corpus["train"].tgt, cfg.tokenizer, PROJECT_ROOT)
    train_src, train_tgt = encode_split(tokenizer, corpus["train"], cfg.max_tokens)
    lengths = [max(len(s), len(t)) + 1 for s, t in zip(train_src, train_tgt)]
    return PreparedData(tokenizer, train_src, train_tgt, lengths, corpus["valid"])
