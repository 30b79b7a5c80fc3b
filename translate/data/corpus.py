"""Parallel corpora, streamed: sentence pairs per split from files, the hub or a generator.

Every source is a `PairSource`: iterating it yields (source, target) strings one pair at a time, checked on the
way (a broken file stops the run with one line naming the file, the line and the fix), and `identity()` names
its content for the caches (tokenizer, token store).  Nothing holds a whole training split in memory; the small
splits (valid, test) become `Pairs`, two lists of raw strings.

    for src, tgt in TextFiles(Path("train.de.gz"), Path("train.en.gz")): ...

Which source a `DataConfig` names is decided in `translate.data.pipeline.split_source`.
"""

import gzip
import hashlib
import io
import itertools
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from translate.runtime.errors import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_MULTI30K = PROJECT_ROOT.parent / "shared" / "data" / "multi30k"
ROLES = ("train", "valid", "test")
FORMATS = ("text", "tsv", "jsonl")  # {split}.{lang}[.gz] pairs of files | {split}.tsv[.gz] | {split}.jsonl[.gz]


class CorpusError(UserError, ValueError):
    """A corpus that cannot be used as given; the message names the file and the fix."""


@dataclass
class Pairs:
    src: list[str]
    tgt: list[str]

    def __post_init__(self):
        if len(self.src) != len(self.tgt):
            raise CorpusError(f"{len(self.src)} source lines but {len(self.tgt)} target lines")

    def __len__(self) -> int:
        return len(self.src)

    def head(self, n: int | None) -> "Pairs":
        return self if n is None else Pairs(self.src[:n], self.tgt[:n])

    @classmethod
    def read(cls, source, limit: int | None = None) -> "Pairs":
        """The first `limit` pairs of a source (all of them with None)."""
        pairs = list(itertools.islice(source, limit))
        return cls([s for s, _ in pairs], [t for _, t in pairs])


class PairSource:
    """Sentence pairs, streamed: `iter(source)` yields (source, target) strings; `origin` names it in messages."""

    origin: str

    def __iter__(self) -> Iterator[tuple[str, str]]:
        raise NotImplementedError

    def identity(self) -> str:
        """What the content is, for cache keys: changes whenever a pair could."""
        raise NotImplementedError


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of a UTF-8 text file, gzipped if it ends in .gz, one line at a time."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as raw:
        for number, line in enumerate(io.BufferedReader(raw, 1 << 20), start=1):
            try:
                yield number, line.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}:{number}: invalid UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None


def read_lines(path: str | Path) -> list[str]:
    """A whole (small) text file as a list of stripped lines."""
    return [text for _, text in iter_lines(path)]


@dataclass
class TextFiles(PairSource):
    """Two line-aligned files: line i of `src` translates line i of `tgt`; unequal line counts are an error."""

    src: Path
    tgt: Path

    def __post_init__(self):
        self.origin = f"{self.src} + {Path(self.tgt).name}"

    def __iter__(self):
        src, tgt, count = iter_lines(self.src), iter_lines(self.tgt), 0
        for a, b in itertools.zip_longest(src, tgt):
            if a is None or b is None:  # one file ended first: count the rest of the other
                n_src, n_tgt = (
                    count + (a is not None) + sum(1 for _ in src),
                    count + (b is not None) + sum(1 for _ in tgt),
                )
                raise CorpusError(
                    f"{self.src} has {n_src} lines but {self.tgt} has {n_tgt}; "
                    "the files must be line-aligned (line i translates line i)"
                )
            count += 1
            yield a[1], b[1]

    def identity(self) -> str:
        return f"text:{file_digest(Path(self.src))}:{file_digest(Path(self.tgt))}"


@dataclass
class TsvFile(PairSource):
    """One file, `source<TAB>target` per line."""

    path: Path

    def __post_init__(self):
        self.origin = str(self.path)

    def __iter__(self):
        for number, line in iter_lines(self.path):
            fields = line.split("\t")
            if len(fields) != 2:
                raise CorpusError(
                    f"{self.path}:{number}: {len(fields)} tab-separated fields; "
                    "each line must be <source>TAB<target> (tabs inside a sentence are not allowed)"
                )
            yield fields[0].strip(), fields[1].strip()

    def identity(self) -> str:
        return f"tsv:{file_digest(Path(self.path))}"


@dataclass
class JsonlFile(PairSource):
    """One JSON object per line: {"de": …, "en": …}, or the hub's {"translation": {"de": …, "en": …}}."""

    path: Path
    src_lang: str
    tgt_lang: str

    def __post_init__(self):
        self.origin = str(self.path)

    def __iter__(self):
        shape = f'each line must be {{"{self.src_lang}": "…", "{self.tgt_lang}": "…"}}'
        for number, line in iter_lines(self.path):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{self.path}:{number}: not JSON ({e.msg} at column {e.colno}); {shape}") from None
            row = row.get("translation", row) if isinstance(row, dict) else {}
            try:
                yield str(row[self.src_lang]).strip(), str(row[self.tgt_lang]).strip()
            except KeyError as e:
                raise CorpusError(f"{self.path}:{number}: no key {e}; {shape}") from None

    def identity(self) -> str:
        return f"jsonl:{self.src_lang}-{self.tgt_lang}:{file_digest(Path(self.path))}"


def synthetic_symbols(cfg) -> list[str]:
    """The symbols `s0 … s{n-1}` of a synthetic task (a SyntheticConfig)."""
    return [f"s{i}" for i in range(cfg.symbols)]


@dataclass
class SyntheticSplit(PairSource):
    """Random symbol sequences and their copy or reversal; fixed per role by `cfg.seed` (a SyntheticConfig)."""

    cfg: object
    role: str

    def __post_init__(self):
        if self.cfg.task not in ("copy", "reverse"):
            raise CorpusError(f"unknown data.synthetic.task={self.cfg.task!r}; choose copy or reverse")
        self.origin = f"synthetic {self.cfg.task} {self.role}"

    def __iter__(self):
        cfg = self.cfg
        rng = random.Random(cfg.seed + ROLES.index(self.role))
        vocab = synthetic_symbols(cfg)
        for _ in range(getattr(cfg, f"{self.role}_size")):
            words = rng.choices(vocab, k=rng.randint(cfg.min_len, cfg.max_len))
            yield " ".join(words), " ".join(reversed(words) if cfg.task == "reverse" else words)

    def identity(self) -> str:
        fields = ("task", "symbols", "min_len", "max_len", "seed", f"{self.role}_size")
        return "synthetic:" + json.dumps({k: getattr(self.cfg, k) for k in fields}, sort_keys=True) + self.role


class TrainingPairs:
    """The training pairs of a source, cut to `limit`: pairs with an empty side are dropped and counted (`read`,
    `empty` after a pass), and a source left with none is an error.  Iterable any number of times (the tokenizer
    and the store each read it)."""

    def __init__(self, source: PairSource, limit: int | None = None):
        self.source, self.limit, self.origin = source, limit, source.origin
        self.read = self.empty = 0
        self._identity = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.read = self.empty = 0
        for src, tgt in itertools.islice(self.source, self.limit):
            self.read += 1
            if src and tgt:
                yield src, tgt
            else:
                self.empty += 1
        if self.read == self.empty:
            raise CorpusError(
                f"{self.origin}: no training pairs with text on both sides ({self.read} lines); check the files"
            )

    def sentences(self) -> Iterator[str]:
        """The source sentences of every kept pair, then the target sentences (two passes): what the tokenizer
        learns from."""
        for side in (0, 1):
            yield from (pair[side] for pair in self)

    def identity(self) -> str:
        if self._identity is None:
            self._identity = f"{self.source.identity()}|limit={self.limit}"
        return self._identity


def split_file(directory: Path, name: str) -> Path:
    """`{name}.gz` or, failing that, plain `{name}`."""
    gz = directory / f"{name}.gz"
    return gz if gz.exists() or not (directory / name).exists() else directory / name


def read_pair_files(src_path: str | Path, tgt_path: str | Path) -> Pairs:
    """Two whole line-aligned files (e.g. eval.src / eval.ref); unequal line counts are an error."""
    return Pairs.read(TextFiles(Path(src_path), Path(tgt_path)))
