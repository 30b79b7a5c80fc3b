"""Corpora from elsewhere: a split of a Hugging Face dataset, or files fetched once from a URL.

Both end as local, memory-mapped or on-disk data: `datasets` keeps the hub's splits as Arrow files in its
cache, and downloads land atomically in `data.download_dir`.  What comes from the network is data, never code:
downloads are https only, capped in size (`data.max_download_mb`) and time (`data.download_minutes`) and checked
against `data.sha256` (also each time a cached file is used); the hub is read only at a pinned commit
(`data.hub_revision`), and `datasets` >= 4 runs no loading scripts.
"""

import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from translate.data.corpus import PROJECT_ROOT, SHARED_MULTI30K, CorpusError, PairSource, file_digest

log = logging.getLogger(__name__)

DATA_DIR_ENV = "TRANSLATE_DATA_DIR"
HUB_BATCH = 1_000  # rows converted to Python at a time while streaming a hub split
LOCAL_HTTP_ENV = "TRANSLATE_ALLOW_LOCAL_HTTP"  # =1 lets plain http reach a loopback host (local test servers)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_REDIRECTS = 5
MAX_STALL_S = 60.0  # one socket read waits at most this long (or the whole deadline, when shorter)
CHUNK = 1 << 16
COMMIT = re.compile(r"[0-9a-f]{40}")


class HubSplit(PairSource):
    """A split of a Hugging Face dataset with a `translation` column ({lang: text}), iterated in batches.

    `name` is a hub dataset (`datasets.load_dataset` at the commit `revision`, cached by `datasets`), a
    directory written by `DatasetDict.save_to_disk`, or a local dataset directory (which needs no revision).
    A hub name without a pinned commit is refused here, before anything is loaded.
    """

    def __init__(
        self, name: str, config: str | None, split: str, src_lang: str, tgt_lang: str, *, revision: str | None
    ):
        self.name, self.config, self.split, self.langs = name, config, split, (src_lang, tgt_lang)
        self.revision = revision
        self.origin = f"{name} {split}"
        self._rows = None
        if Path(name).expanduser().is_dir():
            return
        where = f'the "Files and versions" history of https://huggingface.co/datasets/{name} lists them'
        if not revision:
            raise CorpusError(
                f"{name}: refusing to load a Hugging Face dataset at an unpinned revision; "
                f"set data.hub_revision=<commit sha> ({where})"
            )
        if not COMMIT.fullmatch(revision):
            raise CorpusError(
                f"{name}: data.hub_revision={revision} is not a commit sha (40 hex digits), and a branch or tag "
                f"can move; set data.hub_revision=<commit sha> ({where})"
            )

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
                # datasets >= 4 runs no loading scripts (trust_remote_code is gone), so nothing from the hub runs
                pinned = {} if local.is_dir() else {"revision": self.revision}
                splits = datasets.load_dataset(self.name, self.config, **pinned)
            except Exception as e:  # the hub raises many types; name the dataset and the fix
                raise CorpusError(
                    f"{self.name}: cannot load from the Hugging Face hub ({type(e).__name__}: {_one_line(e)}); "
                    "check data.hub / data.hub_config / data.hub_revision"
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


FIX = "set data.dir to a directory holding the files"


class _Refused(Exception):
    """A download stopped on purpose: `cause` and `fix`, for one line after the URL."""

    def __init__(self, cause: str, fix: str = f"retry, or {FIX}"):
        super().__init__(cause)
        self.cause, self.fix = cause, fix


def _one_line(text) -> str:
    """`text` (maybe from a server) on one line, control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(str(text).split()))


def _allowed(url: str) -> bool:
    """https, or plain http to a loopback host when $TRANSLATE_ALLOW_LOCAL_HTTP=1."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in LOOPBACK and os.environ.get(LOCAL_HTTP_ENV) == "1"


def _not_allowed(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    local = f" (for a local test server, set {LOCAL_HTTP_ENV}=1)" if parts.hostname in LOOPBACK else ""
    return f"only https downloads are allowed, not {parts.scheme or 'no scheme'}:{local}"


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, each to an allowed (https) URL."""

    max_redirections = max_repeats = MAX_REDIRECTS + 1  # ours is the limit that bites

    def __init__(self):
        self.count = 0

    def http_error_302(self, req, fp, code, msg, headers):
        target = _one_line(urllib.parse.urljoin(req.full_url, headers.get("location") or headers.get("uri") or ""))
        self.count += 1
        if self.count > MAX_REDIRECTS or not _allowed(target):
            fp.close()
            if self.count > MAX_REDIRECTS:
                raise _Refused(f"more than {MAX_REDIRECTS} redirects (the last to {target})", "fix data.url, or " + FIX)
            raise _Refused(f"redirected to {target}: {_not_allowed(target)}", "fix data.url, or " + FIX)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _fetch(url: str, out, max_mb: float, minutes: float) -> str:
    """Stream `url` into `out` within the byte cap and the deadline; the SHA-256 of what came."""
    max_bytes, deadline_s, start = int(max_mb * 2**20), minutes * 60, time.monotonic()
    too_big = _Refused(
        f"larger than data.max_download_mb={max_mb}", f"raise data.max_download_mb if the file is right, or {FIX}"
    )
    too_slow = _Refused(
        f"not downloaded within data.download_minutes={minutes}", f"raise data.download_minutes, or {FIX}"
    )
    digest, total = hashlib.sha256(), 0
    opener = urllib.request.build_opener(_Redirects())
    try:
        with opener.open(url, timeout=min(MAX_STALL_S, deadline_s)) as response:
            announced = (response.headers.get("Content-Length") or "").strip()
            if announced.isdigit() and int(announced) > max_bytes:
                too_big.cause += f" (the server announces {int(announced):,} bytes)"
                raise too_big
            # read1: whatever has arrived, so that the deadline is checked while a slow server trickles
            while chunk := response.read1(min(CHUNK, max_bytes + 1 - total)):
                total += len(chunk)
                if total > max_bytes:
                    raise too_big
                if time.monotonic() - start > deadline_s:
                    raise too_slow
                digest.update(chunk)
                out.write(chunk)
            if response.length:  # the connection closed before the announced Content-Length arrived
                raise _Refused(
                    f"download failed (IncompleteRead: the connection closed after {total:,} of "
                    f"{total + response.length:,} bytes)"
                )
    except TimeoutError:
        if time.monotonic() - start > deadline_s:
            raise too_slow from None
        raise
    return digest.hexdigest()


def download_file(
    url: str, dest: Path, sha256: str | None = None, *, max_mb: float = 1024, minutes: float = 30.0
) -> Path:
    """Download `url` to `dest` once (atomically): https only, at most `max_mb` MiB within `minutes` in all.

    `sha256`, when known, is checked after the download and again every time the cached `dest` is used (a
    changed file is refused, never trusted); a file with no known digest is used as is.  Every failure is a
    one-line CorpusError naming the URL, the cause and the fix, and leaves no partial file behind.
    """
    expected = sha256.strip().lower() if sha256 else None
    if dest.exists():
        if expected and (digest := file_digest(dest)) != expected:
            raise CorpusError(
                f"the cached file at {dest} does not match data.sha256 (SHA-256 {digest}, expected {expected}); "
                "delete it to download it again, or fix data.sha256"
            )
        return dest
    if not _allowed(url):
        raise CorpusError(f"{url}: {_not_allowed(url)}; use an https:// data.url, or {FIX}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, max_mb, minutes)
        if expected and digest != expected:
            raise _Refused(f"SHA-256 {digest} does not match the expected {expected}", "retry, or fix data.sha256")
        os.replace(tmp, dest)
    except _Refused as e:
        raise CorpusError(f"{url}: {e.cause}; {e.fix}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts, IncompleteRead
        raise CorpusError(f"{url}: download failed ({type(e).__name__}: {_one_line(e)}); retry, or {FIX}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve_data_dir(cfg, splits: list[str]) -> Path:
    """Find the corpus directory: data.dir, $TRANSLATE_DATA_DIR, ../shared (Multi30k), else download.

    Only the files of `splits` are downloaded (and those already cached are checked against data.sha256).
    """
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
    for split in dict.fromkeys(splits):
        for lang in (cfg.src_lang, cfg.tgt_lang):
            name = f"{split}.{lang}.gz"
            download_file(
                cfg.url.format(split=split, lang=lang),
                directory / name,
                cfg.sha256.get(name),
                max_mb=cfg.max_download_mb,
                minutes=cfg.download_minutes,
            )
    return directory
