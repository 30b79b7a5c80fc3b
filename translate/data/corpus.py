"""Parallel corpora: sentence pairs per split, read from files, a URL or the hub.

Whatever the source, the rest of the program sees `Pairs`: two equally long
lists of raw strings.  Files are validated on the way in, so a broken corpus
stops the run with one line naming the file, the line and the fix.
"""

import gzip
import hashlib
import logging
import os
import random
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from translate.errors import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_MULTI30K = PROJECT_ROOT.parent / "shared" / "data" / "multi30k"
DATA_DIR_ENV = "TRANSLATE_DATA_DIR"
ROLES = ("train", "valid", "test")


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


def read_lines(path: str | Path) -> list[str]:
    """Read a UTF-8 text file (gzipped if it ends in .gz), one sentence per line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    lines = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8").strip())
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"{path}:{number}: invalid UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}); "
                "re-encode the file as UTF-8"
            ) from None
    return lines


def read_pair_files(src_path: str | Path, tgt_path: str | Path) -> Pairs:
    """Read two line-aligned files; unequal line counts are an error."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "the files must be line-aligned (line i translates line i)"
        )
    return Pairs(src, tgt)


def split_file(directory: Path, split: str, lang: str) -> Path:
    """`{split}.{lang}.gz` or, failing that, plain `{split}.{lang}`."""
    gz = directory / f"{split}.{lang}.gz"
    return gz if gz.exists() or not (directory / f"{split}.{lang}").exists() else directory / f"{split}.{lang}"


def filter_training_pairs(pairs: Pairs, origin: str) -> Pairs:
    """Drop pairs with an empty side, and say how many went; none left is an error naming `origin`."""
    keep = [i for i, (s, t) in enumerate(zip(pairs.src, pairs.tgt)) if s and t]
    dropped = len(pairs) - len(keep)
    if not keep:
        raise CorpusError(f"{origin}: no training pairs with text on both sides ({len(pairs)} lines); check the files")
    if dropped:
        log.warning("dropped %d of %d training pairs with an empty side", dropped, len(pairs))
    return Pairs([pairs.src[i] for i in keep], [pairs.tgt[i] for i in keep])


def non_empty(pairs: Pairs, origin: str, role: str) -> Pairs:
    if not len(pairs):
        raise CorpusError(f"{origin}: the {role} split is empty; give it sentence pairs (or another data.{role}_split)")
    return pairs


def synthetic_pairs(cfg, role: str) -> Pairs:
    """Random symbol sequences and their copy or reversal; fixed per role by `cfg.seed` (a SyntheticConfig)."""
    if cfg.task not in ("copy", "reverse"):
        raise CorpusError(f"unknown data.synthetic.task={cfg.task!r}; choose copy or reverse")
    offset = ROLES.index(role)
    rng = random.Random(cfg.seed + offset)
    vocab = [f"s{i}" for i in range(cfg.symbols)]
    src, tgt = [], []
    for _ in range(getattr(cfg, f"{role}_size")):
        words = rng.choices(vocab, k=rng.randint(cfg.min_len, cfg.max_len))
        src.append(" ".join(words))
        tgt.append(" ".join(reversed(words) if cfg.task == "reverse" else words))
    return Pairs(src, tgt)


def hub_pairs(name: str, config: str | None, split: str, src_lang: str, tgt_lang: str) -> Pairs:
    """A split of a Hugging Face dataset with a `translation` column ({lang: text}).

    `name` is a hub dataset (`datasets.load_dataset`, cached by `datasets`) or a directory
    written by `Dataset(Dict).save_to_disk`.
    """
    import datasets

    local = Path(name).expanduser()
    if (local / "dataset_dict.json").exists():
        splits = datasets.load_from_disk(str(local))
    else:
        try:
            splits = datasets.load_dataset(name, config)
        except Exception as e:  # the hub raises many types; name the dataset and the fix
            raise CorpusError(
                f"{name}: cannot load from the Hugging Face hub ({type(e).__name__}: {e}); "
                "check data.hub / data.hub_config"
            ) from None
    if split not in splits:
        raise CorpusError(
            f"{name}: no split {split!r}; it has {', '.join(splits)} (set data.train_split / valid_split / test_split)"
        )
    rows = splits[split]["translation"]
    for lang in (src_lang, tgt_lang):
        if rows and lang not in rows[0]:
            raise CorpusError(f"{name}: split {split!r} has no language {lang!r}; it has {', '.join(rows[0])}")
    return Pairs([r[src_lang].strip() for r in rows], [r[tgt_lang].strip() for r in rows])


def download_file(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest` once (atomically), checking its SHA-256 when given."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        if sha256:
            digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            if digest != sha256:
                raise CorpusError(
                    f"{url}: SHA-256 {digest} does not match the expected {sha256}; retry or fix data.sha256"
                )
        os.replace(tmp, dest)
    except OSError as e:
        raise CorpusError(f"{url}: download failed ({e}); set data.dir to a directory holding the files") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve_data_dir(cfg, splits: list[str]) -> Path:
    """Find the corpus directory: data.dir, $TRANSLATE_DATA_DIR, ../shared, else download."""
    langs = [cfg.src_lang, cfg.tgt_lang]
    for candidate, origin in ((cfg.dir, "data.dir"), (os.environ.get(DATA_DIR_ENV), DATA_DIR_ENV)):
        if candidate:
            directory = Path(candidate).expanduser()
            if not directory.is_dir():
                raise CorpusError(f"{directory}: directory not found (from {origin}); point {origin} at the corpus")
            return directory
    if cfg.name == "multi30k" and SHARED_MULTI30K.is_dir():
        return SHARED_MULTI30K
    directory = PROJECT_ROOT / cfg.download_dir
    for split in splits:
        for lang in langs:
            name = f"{split}.{lang}.gz"
            download_file(cfg.url.format(split=split, lang=lang), directory / name, cfg.sha256.get(name))
    return directory


def load_split(cfg, role: str) -> Pairs:
    """One split of a `DataConfig` by role (train | valid | test), cut to its limit; train pairs filtered."""
    split, limit = getattr(cfg, f"{role}_split"), getattr(cfg, f"{role}_limit")
    if cfg.name == "synthetic":
        return synthetic_pairs(cfg.synthetic, role).head(limit)
    if cfg.hub:
        pairs = hub_pairs(cfg.hub, cfg.hub_config, split, cfg.src_lang, cfg.tgt_lang).head(limit)
        origin = f"{cfg.hub} {split}"
        return filter_training_pairs(pairs, origin) if role == "train" else non_empty(pairs, origin, role)
    directory = resolve_data_dir(cfg, [getattr(cfg, f"{r}_split") for r in ROLES])
    src_file, tgt_file = split_file(directory, split, cfg.src_lang), split_file(directory, split, cfg.tgt_lang)
    pairs, origin = read_pair_files(src_file, tgt_file).head(limit), f"{src_file} + {tgt_file.name}"
    log.info(
        "%s %s %s->%s: %s pairs of %s from %s",
        cfg.name,
        role,
        cfg.src_lang,
        cfg.tgt_lang,
        f"{len(pairs):,}",
        split,
        directory,
    )
    return filter_training_pairs(pairs, origin) if role == "train" else non_empty(pairs, origin, role)


def load_corpus(cfg) -> dict[str, Pairs]:
    """The train, valid and test splits named by a `DataConfig`."""
    return {role: load_split(cfg, role) for role in ROLES}
