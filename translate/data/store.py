"""The token store: training pairs encoded once into flat numpy arrays, memory-mapped by every run and rank.

A store is a directory of `.npy` files, opened with `numpy.load(mmap_mode="r")`.  Batching reads the lengths and
offsets through the map; a batch reads its rows' tokens with `os.pread` into small buffers.  Both go through the
operating system's page cache, which every process and rank shares, so neither the corpus size nor the number of
data-parallel ranks adds to a process's own memory.  (Reading the tokens through the map as well would make
every page a batch touches — with the kernel's fault-around, 64 KB per row — part of the process's resident
set; after an epoch each rank's RSS would hold the whole store.)

    src_tokens, tgt_tokens     every kept pair's subword ids end to end (uint16 while the vocabulary fits, else uint32)
    src_offsets, tgt_offsets   pair i is tokens[offsets[i]:offsets[i + 1]]   (int64, pairs + 1)
    lengths                    padded cost of pair i, max(source, target) + 1 (int32): all that batching reads
    meta.json                  format, counts (read, dropped for an empty side or for length), tokens; written last

It is built in a temporary directory beside its place and renamed into it when complete: a preparation killed
half-way leaves no store to read, and the next one removes what it left.  A store that fails its checks when
opened (a file missing, truncated or of the wrong size) is rebuilt.
"""

import itertools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from translate.data.corpus import CorpusError
from translate.runtime.files import fsync_directory

log = logging.getLogger(__name__)

FORMAT = 1
SIDES = ("src", "tgt")
ARRAYS = ("src_tokens", "tgt_tokens", "src_offsets", "tgt_offsets", "lengths")
CHUNK_PAIRS = 20_000  # pairs encoded per SentencePiece call (spread over all cores)
PARTIAL = ".partial-"  # <key>.partial-<pid>: a store being built by process <pid>


class DamagedStore(Exception):
    """A store directory that cannot be read as it is; the message says why."""


class TokenStore:
    """Encoded training pairs: `store.src(i)`, `store.tgt(i)` (lists of ids), `store.lengths` (memory-mapped)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.meta = json.loads((self.directory / "meta.json").read_text())
            arrays = {name: np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        except (OSError, ValueError) as e:  # missing, truncated or not a numpy file
            raise DamagedStore(f"{type(e).__name__}: {e}") from None
        if self.meta.get("format") != FORMAT:
            raise DamagedStore(f"format {self.meta.get('format')}, this version reads {FORMAT}")
        self.src_tokens, self.tgt_tokens = arrays["src_tokens"], arrays["tgt_tokens"]
        self.src_offsets, self.tgt_offsets, self.lengths = (
            arrays["src_offsets"],
            arrays["tgt_offsets"],
            arrays["lengths"],
        )
        pairs = self.meta["pairs"]
        for side in SIDES:
            offsets, tokens = getattr(self, f"{side}_offsets"), getattr(self, f"{side}_tokens")
            if len(offsets) != pairs + 1 or offsets[-1] != len(tokens) or len(tokens) != self.meta[f"{side}_tokens"]:
                raise DamagedStore(f"{side} arrays do not hold the {pairs:,} pairs meta.json counts")
        if len(self.lengths) != pairs:
            raise DamagedStore(f"lengths holds {len(self.lengths):,} entries for {pairs:,} pairs")
        self.files = {side: open(self.directory / f"{side}_tokens.npy", "rb") for side in SIDES}  # noqa: SIM115

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, side: str, pairs: list[int]) -> list[list[int]]:
        """The token ids of `pairs` on one side (src | tgt), read from the page cache."""
        tokens, offsets = getattr(self, f"{side}_tokens"), getattr(self, f"{side}_offsets")
        index = np.asarray(pairs, dtype=np.int64)
        starts, ends = offsets[index].tolist(), offsets[index + 1].tolist()
        fd, size, base, dtype = self.files[side].fileno(), tokens.dtype.itemsize, tokens.offset, tokens.dtype
        return [
            np.frombuffer(os.pread(fd, (end - start) * size, base + start * size), dtype).tolist()
            for start, end in zip(starts, ends)
        ]

    def src(self, i: int) -> list[int]:
        return self.rows("src", [i])[0]

    def tgt(self, i: int) -> list[int]:
        return self.rows("tgt", [i])[0]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.iterdir())

    def report_filtering(self) -> None:
        """Say (again, on every run that uses the store) which pairs its preparation dropped."""
        meta = self.meta
        if meta["dropped_empty"]:
            log.warning("dropped %d of %d training pairs with an empty side", meta["dropped_empty"], meta["read"])
        if meta["dropped_long"]:
            log.warning(
                "dropped %d training pairs longer than data.max_tokens=%d", meta["dropped_long"], meta["max_tokens"]
            )


def open_or_build(directory: Path, pairs, tokenizer, max_tokens: int | None, threads: int) -> TokenStore:
    """The store at `directory`, built from `pairs` (a TrainingPairs) with `tokenizer` when missing or damaged."""
    if directory.exists():
        try:
            store = TokenStore(directory)
            log.info("token store: reusing %s (%s pairs)", directory, f"{len(store):,}")
            return store
        except DamagedStore as e:
            log.warning("token store %s is damaged (%s): rebuilding it", directory, e)
            shutil.rmtree(directory, ignore_errors=True)
    remove_abandoned(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{directory.name}{PARTIAL}{os.getpid()}."))
    try:
        build(tmp, pairs, tokenizer, max_tokens, threads)
        try:
            tmp.rename(directory)  # atomic: a concurrent preparation either sees the whole store or none
            fsync_directory(directory.parent)
        except OSError:
            if not (directory / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    store = TokenStore(directory)
    log.info("token store: %s pairs encoded into %s (%.1f MB)", f"{len(store):,}", directory, store.disk_bytes() / 1e6)
    return store


def remove_abandoned(directory: Path) -> None:
    """Remove the partial stores of `directory` whose builder process is gone (killed half-way)."""
    for partial in directory.parent.glob(f"{directory.name}{PARTIAL}*"):
        pid = int(partial.name[len(directory.name) + len(PARTIAL) :].split(".")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.warning("removing %s, left half-built by process %d", partial, pid)
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def build(directory: Path, pairs, tokenizer, max_tokens: int | None, threads: int) -> None:
    """Encode `pairs` into a store in the (empty) `directory`: tokens appended to raw files chunk by chunk, then
    copied into `.npy` arrays once their sizes are known; meta.json last."""
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    lengths = {side: [] for side in SIDES}
    dropped_long = 0
    raw = {side: open(directory / f"{side}.raw", "wb") for side in SIDES}
    try:
        bar = tqdm(pairs, desc="encoding training pairs", unit=" pairs", unit_scale=True, disable=None, mininterval=2)
        stream = iter(bar)  # one pass: islice below must not restart it
        while chunk := list(itertools.islice(stream, CHUNK_PAIRS)):
            ids = {side: tokenizer.encode([pair[k] for pair in chunk], threads) for k, side in enumerate(SIDES)}
            keep = range(len(chunk))
            if max_tokens:
                keep = [i for i in keep if len(ids["src"][i]) <= max_tokens and len(ids["tgt"][i]) <= max_tokens]
                dropped_long += len(chunk) - len(keep)
            for side in SIDES:
                kept = [ids[side][i] for i in keep]
                lengths[side].append(np.fromiter(map(len, kept), np.int64, len(kept)))
                np.fromiter(itertools.chain.from_iterable(kept), dtype).tofile(raw[side])
    finally:
        for f in raw.values():
            f.close()
    read = pairs.read
    kept = read - pairs.empty - dropped_long
    if kept == 0:
        raise CorpusError(
            f"{pairs.origin}: all {read - pairs.empty:,} training pairs are longer than data.max_tokens={max_tokens}; "
            "raise it"
        )
    sizes = {side: np.concatenate(lengths[side]) for side in SIDES}
    for side in SIDES:
        offsets = np.zeros(len(sizes[side]) + 1, np.int64)
        np.cumsum(sizes[side], out=offsets[1:])
        np.save(directory / f"{side}_offsets.npy", offsets)
        tokens = np.lib.format.open_memmap(directory / f"{side}_tokens.npy", "w+", dtype, (int(offsets[-1]),))
        tokens[:] = np.memmap(directory / f"{side}.raw", dtype, "r") if offsets[-1] else 0
        tokens.flush()
        del tokens
        os.remove(directory / f"{side}.raw")
    np.save(directory / "lengths.npy", (np.maximum(sizes["src"], sizes["tgt"]) + 1).astype(np.int32))
    meta = {
        "format": FORMAT,
        "origin": pairs.origin,
        "pairs": kept,
        "read": read,
        "dropped_empty": pairs.empty,
        "dropped_long": dropped_long,
        "max_tokens": max_tokens,
        "src_tokens": int(sizes["src"].sum()),
        "tgt_tokens": int(sizes["tgt"].sum()),
        "vocab_size": len(tokenizer),
        "tokenizer_sha256": tokenizer.digest(),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))
    for name in [*ARRAYS, "meta"]:  # durable before the rename makes the store visible
        with open(directory / (f"{name}.npy" if name != "meta" else "meta.json"), "rb+") as f:
            os.fsync(f.fileno())
