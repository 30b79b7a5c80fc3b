"""Parallel corpora, streamed: sentence pairs per split from files, the hub or a generator.

Every source is a `PairSource`: iterating it yields (source, target) strings one pair at a time, checked on the
way (a broken file stops the run with one line naming the file, the line and the fix), and `identity()` names
its content for the caches (tokenizer, token store).  Lines are read with a byte limit (`MAX_LINE_BYTES`): a
longer line is never held whole, its pair is skipped and counted (`skipped`, one warning per pass).  Nothing
holds a whole training split in memory; the small splits (valid, test) become `Pairs`, two lists of raw strings.

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
from dataclasses import dataclass, field
from pathlib import Path

from translate.runtime.errors import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_MULTI30K = PROJECT_ROOT.parent / "shared" / "data" / "multi30k"
ROLES = ("train", "valid", "test")
FORMATS = ("text", "tsv", "jsonl")  # {split}.{lang}[.gz] pairs of files | {split}.tsv[.gz] | {split}.jsonl[.gz]
MAX_LINE_BYTES = 64 * 1024  # a corpus line longer than this is skipped unread (a sentence is far shorter)
SKIP_CHUNK = 1 << 16  # the rest of an over-long line is read and dropped this many bytes at a time


class CorpusError(UserError, ValueError):
    """A corpus that cannot be used as given; the message names the file and the fix."""


@dataclass
class Pairs:
    src: list[str]
    tgt: list[str]
    skipped: int = field(default=0, compare=False)  # pairs the source left out: a line over its byte limit

    def __post_init__(self):
        if len(self.src) != len(self.tgt):
            raise CorpusError(f"{len(self.src)} source lines but {len(self.tgt)} target lines")

    def __len__(self) -> int:
        return len(self.src)

    def head(self, n: int | None) -> "Pairs":
        return self if n is None else Pairs(self.src[:n], self.tgt[:n])

    @classmethod
    def read(cls, source, limit: int | None = None) -> "Pairs":
        """The first `limit` pairs of a source (all of them with None); pairs with a line over the source's byte
        limit are skipped (and counted in `skipped`), as when streaming."""
        pairs = list(itertools.islice(source, limit))
        return cls([s for s, _ in pairs], [t for _, t in pairs], getattr(source, "skipped", 0))


class PairSource:
    """Sentence pairs, streamed: `iter(source)` yields (source, target) strings; `origin` names it in messages.
    `skipped`: the pairs of the current (or last) pass left out because a side's line was over the byte limit."""

    origin: str
    skipped: int = 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        raise NotImplementedError

    def _without_long_lines(self, rows: Iterator[tuple[Path, int, tuple[str, str] | None]], limit: int):
        """The pairs of `rows` ((file, line number, pair or None for a line over `limit` bytes)), the None ones
        counted in `skipped` and named in one warning at the end of the pass (or where the reader stops)."""
        self.skipped, first = 0, None
        try:
            for path, number, pair in rows:
                if pair is not None:
                    yield pair
                    continue
                self.skipped += 1
                first = first or f"{path}:{number}"
        except GeneratorExit:
            self._warn_skipped(first, limit)
            raise
        self._warn_skipped(first, limit)

    def _warn_skipped(self, first: str | None, limit: int) -> None:
        if self.skipped:
            log.warning(
                "%s: %d sentence pair(s) skipped, a line over %d bytes (the first at %s); split or shorten such "
                "lines to keep them",
                self.origin,
                self.skipped,
                limit,
                first,
            )

    def identity(self) -> str:
        """What the content is, for cache keys: changes whenever a pair could."""
        raise NotImplementedError


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_bounded_line(stream, limit: int = MAX_LINE_BYTES) -> tuple[bytes, bool]:
    """The next line of a binary stream, newline included, and whether it was cut: a line over `limit` bytes
    gives its first `limit` bytes or fewer (ending on a UTF-8 character boundary), the rest of it read and
    dropped `SKIP_CHUNK` bytes at a time, so memory stays bounded whatever the line.  b"" at the end."""
    line = stream.readline(limit + 1)
    if len(line) <= limit or line.endswith(b"\n"):
        return line, False
    rest = line[-1:]
    while rest and not rest.endswith(b"\n"):
        rest = stream.readline(SKIP_CHUNK)
    cut = limit
    for _ in range(3):  # back over the continuation bytes (0b10xxxxxx) of a character cut in two
        if cut == 0 or line[cut] & 0xC0 != 0x80:
            break
        cut -= 1
    return line[:cut], True


def iter_lines(path: str | Path, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | None]]:
    """(line number, stripped text) of a UTF-8 text file, gzipped if it ends in .gz, one line at a time; a line
    over `limit` bytes is never held whole: it gives (line number, None)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as raw:
        reader, number = io.BufferedReader(raw, 1 << 20), 0
        while True:
            line, cut = read_bounded_line(reader, limit)
            if not line and not cut:
                return
            number += 1
            if cut:
                yield number, None
                continue
            try:
                yield number, line.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}:{number}: invalid UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None


def read_lines(path: str | Path, limit: int = MAX_LINE_BYTES) -> list[str]:
    """A whole (small) text file as a list of stripped lines; a line over `limit` bytes is left out, with a
    warning naming the first and the count."""
    lines, long = [], []
    for number, text in iter_lines(path, limit):
        if text is None:
            long.append(number)
        else:
            lines.append(text)
    if long:
        log.warning("%s: %d line(s) over %d bytes left out (the first is line %d)", path, len(long), limit, long[0])
    return lines


@dataclass
class TextFiles(PairSource):
    """Two line-aligned files: line i of `src` translates line i of `tgt`; unequal line counts are an error."""

    src: Path
    tgt: Path
    max_line_bytes: int = field(default=MAX_LINE_BYTES, kw_only=True)

    def __post_init__(self):
        self.origin = f"{self.src} + {Path(self.tgt).name}"

    def __iter__(self):
        return self._without_long_lines(self._rows(), self.max_line_bytes)

    def _rows(self):
        src, tgt, count = iter_lines(self.src, self.max_line_bytes), iter_lines(self.tgt, self.max_line_bytes), 0
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
            if a[1] is None or b[1] is None:  # a side over the limit: skipped, the files stay aligned
                yield (self.src, a[0], None) if a[1] is None else (self.tgt, b[0], None)
            else:
                yield self.src, a[0], (a[1], b[1])

    def identity(self) -> str:
        return f"text:{file_digest(Path(self.src))}:{file_digest(Path(self.tgt))}{line_limit_key(self)}"


@dataclass
class TsvFile(PairSource):
    """One file, `source<TAB>target` per line."""

    path: Path
    max_line_bytes: int = field(default=MAX_LINE_BYTES, kw_only=True)

    def __post_init__(self):
        self.origin = str(self.path)

    def __iter__(self):
        return self._without_long_lines(self._rows(), self.max_line_bytes)

    def _rows(self):
        for number, line in iter_lines(self.path, self.max_line_bytes):
            if line is None:
                yield self.path, number, None
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise CorpusError(
                    f"{self.path}:{number}: {len(fields)} tab-separated fields; "
                    "each line must be <source>TAB<target> (tabs inside a sentence are not allowed)"
                )
            yield self.path, number, (fields[0].strip(), fields[1].strip())

    def identity(self) -> str:
        return f"tsv:{file_digest(Path(self.path))}{line_limit_key(self)}"


@dataclass
class JsonlFile(PairSource):
    """One JSON object per line: {"de": …, "en": …}, or the hub's {"translation": {"de": …, "en": …}}."""

    path: Path
    src_lang: str
    tgt_lang: str
    max_line_bytes: int = field(default=MAX_LINE_BYTES, kw_only=True)

    def __post_init__(self):
        self.origin = str(self.path)

    def __iter__(self):
        return self._without_long_lines(self._rows(), self.max_line_bytes)

    def _rows(self):
        shape = f'each line must be {{"{self.src_lang}": "…", "{self.tgt_lang}": "…"}} (two strings)'
        for number, line in iter_lines(self.path, self.max_line_bytes):
            if line is None:
                yield self.path, number, None
                continue
            try:
                pair = self._pair(json_row(line))
            except ValueError as e:  # one line: the file, the line, what is wrong, the shape expected
                raise CorpusError(f"{self.path}:{number}: {e}; {shape}") from None
            yield self.path, number, pair

    def _pair(self, row) -> tuple[str, str]:
        if not isinstance(row, dict):
            raise ValueError(f"a JSON {json_kind(row)}, not an object")
        if "translation" in row:
            if not isinstance(row["translation"], dict):
                raise ValueError(f'"translation" is a JSON {json_kind(row["translation"])}, not an object')
            row = row["translation"]
        texts = []
        for lang in (self.src_lang, self.tgt_lang):
            if lang not in row:
                raise ValueError(f"no key {lang!r}")
            if not isinstance(row[lang], str):
                raise ValueError(f"{lang!r} is a JSON {json_kind(row[lang])}, not a string")
            try:
                row[lang].encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{lang!r} holds a lone surrogate escape (\\ud800-\\udfff)") from None
            texts.append(row[lang].strip())
        return texts[0], texts[1]

    def identity(self) -> str:
        return f"jsonl:{self.src_lang}-{self.tgt_lang}:{file_digest(Path(self.path))}{line_limit_key(self)}"


def json_row(line: str):
    """json.loads, every failure a ValueError of one line: not JSON, a number too long, nesting too deep."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("not usable JSON (nested too deep to read)") from None
    except ValueError as e:  # e.g. an integer of over 4300 digits (sys.get_int_max_str_digits)
        raise ValueError(f"not usable JSON ({str(e).splitlines()[0].split(':')[0]})") from None


def json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's words."""
    kinds = ((str, "string"), (bool, "boolean"), (int, "number"), (float, "number"), (list, "array"), (dict, "object"))
    return "null" if value is None else next((name for kind, name in kinds if isinstance(value, kind)), "value")


def line_limit_key(source) -> str:
    """A non-default line limit in a source's identity (it changes which pairs are read)."""
    return "" if source.max_line_bytes == MAX_LINE_BYTES else f"|max_line_bytes={source.max_line_bytes}"


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
    `empty` after a pass), so are those the source skipped for a line over its byte limit (`too_long`, not in
    `read`), and a source left with none is an error.  Iterable any number of times (the tokenizer and the store
    each read it)."""

    def __init__(self, source: PairSource, limit: int | None = None):
        self.source, self.limit, self.origin = source, limit, source.origin
        self.read = self.empty = self.too_long = 0
        self._identity = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.read = self.empty = self.too_long = 0
        for src, tgt in itertools.islice(self.source, self.limit):
            self.read += 1
            if src and tgt:
                yield src, tgt
            else:
                self.empty += 1
        self.too_long = self.source.skipped
        if self.read == self.empty:
            limit = getattr(self.source, "max_line_bytes", MAX_LINE_BYTES)
            long = f", {self.too_long} more over {limit} bytes skipped" if self.too_long else ""
            raise CorpusError(
                f"{self.origin}: no training pairs with text on both sides ({self.read} lines{long}); check the files"
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


def read_pair_files(src_path: str | Path, tgt_path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Pairs:
    """Two whole line-aligned files (e.g. eval.src / eval.ref); unequal line counts are an error, a pair with a
    line over `max_line_bytes` is skipped and counted."""
    return Pairs.read(TextFiles(Path(src_path), Path(tgt_path), max_line_bytes=max_line_bytes))
