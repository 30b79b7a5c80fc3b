"""SentencePiece: one joint subword vocabulary for source and target.

Trained once on the training split only, then cached under a hash of the
training text and the settings, so every later run with the same data reuses it.
"""

import hashlib
import logging
import tempfile
from pathlib import Path

import sentencepiece as spm

from translate.data.corpus import CorpusError
from translate.files import copy_file

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """Raw text <-> subword ids, with fixed ids for pad/unk/bos/eos."""

    pad_id, unk_id, bos_id, eos_id = PAD, UNK, BOS, EOS

    def __init__(self, model_file: str | Path):
        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int)

    def pieces(self, texts: list[str]) -> list[list[str]]:
        return self.sp.encode(texts, out_type=str)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def id_to_piece(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def save(self, path: str | Path) -> None:
        copy_file(self.model_file, path)


def _fingerprint(texts: list[str], cfg) -> str:
    h = hashlib.sha256()
    for key in ("vocab_size", "model_type", "character_coverage", "input_sentence_size"):
        h.update(f"{key}={getattr(cfg, key)};".encode())
    for line in texts:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def train_or_load(texts: list[str], cfg, root: Path) -> Tokenizer:
    """The tokenizer for `texts` and `cfg` (a TokenizerConfig), trained once and cached."""
    cache = root / cfg.cache_dir / _fingerprint(texts, cfg)
    model_file = cache / "spm.model"
    if model_file.exists():
        log.info("tokenizer: reusing %s", model_file)
        return Tokenizer(model_file)
    log.info("tokenizer: training SentencePiece %s, %d pieces, on %d lines", cfg.model_type, cfg.vocab_size, len(texts))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        try:
            train_sentencepiece(texts, cfg, Path(tmp) / "spm")
        except RuntimeError as e:  # SentencePiece says what is wrong after its source position
            reason = str(e).split("] ", 1)[-1].strip()
            raise CorpusError(
                f"SentencePiece cannot learn data.tokenizer.vocab_size={cfg.vocab_size} pieces from "
                f"{len(texts):,} lines: {reason}"
            ) from None
        try:
            Path(tmp).rename(cache)  # atomic: a concurrent run either sees the whole cache or none
        except OSError:
            if not model_file.exists():
                raise
    return Tokenizer(model_file)


def train_sentencepiece(texts: list[str], cfg, prefix: Path) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(prefix),
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        minloglevel=2,
    )
