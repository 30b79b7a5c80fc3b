"""Corpora from elsewhere: a split of a Hugging Face dataset, or files fetched once from a URL.

Both end as local, memory-mapped or on-disk data: `datasets` keeps the hub's splits as Arrow files in its
cache, and downloads land atomically in `data.download_dir`.
"""

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from translate.data.corpus import PROJECT_ROOT, SHARED_MULTI30K, CorpusError, PairSource

log = logging.getLogger(__name__)

DATA_DIR_ENV = "TRANSLATE_DATA_DIR"
HUB_BATCH = 1_000  # rows converted to Python at a time while streaming a hub split


class HubSplit(PairSource):
    """A split of a Hugging Face dataset with a `translation` column ({lang: text}), iterated in batches.

    `name` is a hub dataset (`datasets.load_dataset`, cached by `datasets`) or a directory written by
    `DatasetDict.save_to_disk`.
    """

    def __init__(self, name: str, config: str | None, split: str, src_lang: str, tgt_lang: str):
        self.name, self.config, self.split, self.langs = name, config, split, (src_lang, tgt_lang)
        self.origin = f"{name} {split}"
        self._rows = None

    def rows(self):
        """The split as a `datasets.Dataset` (memory-mapped Arrow), loaded once and checked."""
        if self._rows is not None:
            return self._rows
        import datasets

        local = Path(self.name).expanduser()
        if (local / "dataset_dict.json").exists():
            splits = datasets.load_from_disk(str(local))
        else:
            try:
                splits = datasets.load_dataset(self.name, self.config)
            except Exception as e:  # the hub raises many types; name the dataset and the fix
                raise CorpusError(
                    f"{self.name}: cannot load from the Hugging Face hub ({type(e).__name__}: {e}); "
                    "check data.hub / data.hub_config"
                ) from None
        if self.split not in splits:
            raise CorpusError(
                f"{self.name}: no split {self.split!r}; it has {', '.join(splits)} "
                "(set data.train_split / valid_split / test_split)"
            )
        rows = splits[self.split]
        if "translation" not in rows.column_names:
            raise CorpusError(f"{self.origin}: no `translation` column; it has {', '.join(rows.column_names)}")
        first = rows[0]["translation"] if len(rows) else {}
        for lang in self.langs:
            if first and lang not in first:
                raise CorpusError(
                    f"{self.name}: split {self.split!r} has no language {lang!r}; it has {', '.join(first)}"
                )
        self._rows = rows.select_columns(["translation"])
        return self._rows

    def __iter__(self):
        src, tgt = self.langs
        for batch in self.rows().iter(batch_size=HUB_BATCH):
            for row in batch["translation"]:
                yield row[src].strip(), row[tgt].strip()

    def identity(self) -> str:
        return f"hub:{self.name}:{self.config}:{self.split}:{'-'.join(self.langs)}:{self.rows()._fingerprint}"


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
    """Find the corpus directory: data.dir, $TRANSLATE_DATA_DIR, ../shared (Multi30k), else download."""
    for candidate, origin in ((cfg.dir, "data.dir"), (os.environ.get(DATA_DIR_ENV), DATA_DIR_ENV)):
        if candidate:
            directory = Path(candidate).expanduser()
            if not directory.is_dir():
                raise CorpusError(f"{directory}: directory not found (from {origin}); point {origin} at the corpus")
            return directory
    if cfg.name == "multi30k" and SHARED_MULTI30K.is_dir():
        return SHARED_MULTI30K
    if not cfg.url:
        raise CorpusError(f"data={cfg.name} has no files: set data.dir=<directory of the corpus files>")
    directory = PROJECT_ROOT / cfg.download_dir
    for split in splits:
        for lang in (cfg.src_lang, cfg.tgt_lang):
            name = f"{split}.{lang}.gz"
            download_file(cfg.url.format(split=split, lang=lang), directory / name, cfg.sha256.get(name))
    return directory
