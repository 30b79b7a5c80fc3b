"""SentencePiece: one joint subword vocabulary for source and target.

Trained once on the training split only (streamed; SentencePiece samples
`input_sentence_size` sentences of it), then cached under the corpus's identity
and the settings, so every later run with the same data reuses it.
"""

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

from translate.data.corpus import CorpusError
from translate.runtime.files import copy_file

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

    def encode(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=threads)

    def pieces(self, texts: list[str]) -> list[list[str]]:
        return self.sp.encode(texts, out_type=str)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def id_to_piece(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def save(self, path: str | Path) -> None:
        if Path(path).resolve() != self.model_file.resolve():
            copy_file(self.model_file, path)

    def digest(self) -> str:
        """SHA-256 of the model file: what an encoding made with it is keyed on."""
        return hashlib.sha256(self.model_file.read_bytes()).hexdigest()


def _fingerprint(corpus_id: str, cfg) -> str:
    h = hashlib.sha256(corpus_id.encode())
    for key in ("vocab_size", "model_type", "character_coverage", "input_sentence_size"):
        h.update(f"{key}={getattr(cfg, key)};".encode())
    return h.hexdigest()[:16]


class _Counted:
    """Sentences handed to SentencePiece, counted; an exception of the source is kept for re-raising
    (SentencePiece would turn it into `RuntimeError: INTERNAL: …`)."""

    def __init__(self, sentences: Iterable[str]):
        self.sentences, self.count, self.error = iter(sentences), 0, None

    def __iter__(self) -> Iterator[str]:
        try:
            for sentence in self.sentences:
                self.count += 1
                yield sentence
        except Exception as e:
            self.error = e
            raise


def train_or_load(sentences: Iterable[str], cfg, root: Path, corpus_id: str | None = None) -> Tokenizer:
    """The tokenizer for `sentences` and `cfg` (a TokenizerConfig), trained once and cached under `corpus_id`
    (what the sentences are: e.g. the files' digests) — or, without one, under a hash of the sentences."""
    if corpus_id is None:
        sentences = list(sentences)
        corpus_id = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
    cache = root / cfg.cache_dir / _fingerprint(corpus_id, cfg)
    model_file = cache / "spm.model"
    if model_file.exists():
        log.info("tokenizer: reusing %s", model_file)
        return Tokenizer(model_file)
    log.info("tokenizer: training SentencePiece %s, %d pieces", cfg.model_type, cfg.vocab_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    counted = _Counted(sentences)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        try:
            reading = tqdm(counted, desc="reading for SentencePiece", unit=" lines", unit_scale=True, disable=None)
            train_sentencepiece(reading, cfg, Path(tmp) / "spm")
        except RuntimeError as e:  # SentencePiece says what is wrong after its source position
            if counted.error is not None:
                raise counted.error from None
            reason = str(e).split("] ", 1)[-1].strip() or "no sentences"
            raise CorpusError(
                f"SentencePiece cannot learn data.tokenizer.vocab_size={cfg.vocab_size} pieces from "
                f"{counted.count:,} lines: {reason}"
            ) from None
        try:
            Path(tmp).rename(cache)  # atomic: a concurrent run either sees the whole cache or none
        except OSError:
            if not model_file.exists():
                raise
    return Tokenizer(model_file)


def train_sentencepiece(sentences: Iterable[str], cfg, prefix: Path) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
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
