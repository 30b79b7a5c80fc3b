"""The token store: the training split encoded once, memory-mapped, reused by later runs; a damaged or
half-built store is rebuilt, never read."""

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_DATA, SMALL_MODELS, compose_train

from translate.data.corpus import read_lines
from translate.data.pipeline import prepare_data
from translate.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _caches(tmp_path) -> list[str]:
    return [f"data.tokenizer.cache_dir={tmp_path / 'tok'}"]


def test_store_holds_what_the_tokenizer_gives_and_is_reused(multi30k_dir, tmp_path, caplog):
    cfg = compose_train([*SMALL_DATA, *_caches(tmp_path), "data.max_tokens=20"])
    with caplog.at_level("INFO"):
        data = prepare_data(cfg.data)
    store, tok = data.store, data.tokenizer
    src = tok.encode(read_lines(multi30k_dir / "train.de.gz")[:1500])
    tgt = tok.encode(read_lines(multi30k_dir / "train.en.gz")[:1500])
    kept = [i for i in range(1500) if len(src[i]) <= 20 and len(tgt[i]) <= 20]
    assert 0 < len(kept) < 1500 and len(store) == len(kept)
    assert all(store.src(j) == src[i] and store.tgt(j) == tgt[i] for j, i in enumerate(kept))
    assert store.lengths.tolist() == [max(len(src[i]), len(tgt[i])) + 1 for i in kept]
    assert store.src_tokens.dtype == np.uint16 and isinstance(store.src_tokens, np.memmap)
    assert f"dropped {1500 - len(kept)} training pairs longer than data.max_tokens=20" in caplog.text
    assert store.meta["dropped_long"] == 1500 - len(kept) and store.meta["read"] == 1500

    caplog.clear()
    meta_written = (store.directory / "meta.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = prepare_data(cfg.data)
    assert again.store.directory == store.directory and "reusing" in caplog.text
    assert (store.directory / "meta.json").stat().st_mtime_ns == meta_written
    assert f"dropped {1500 - len(kept)} training pairs" in caplog.text  # said on every run that uses the store
    other = prepare_data(compose_train([*SMALL_DATA, *_caches(tmp_path), "data.max_tokens=30"]).data)
    assert other.store.directory != store.directory  # another filter, another store


@pytest.mark.parametrize("damage", ["truncate tokens", "no meta.json", "offsets of another store"])
def test_damaged_store_is_rebuilt(multi30k_dir, tmp_path, caplog, damage):
    cfg = compose_train([*SMALL_DATA, *_caches(tmp_path)])
    first = prepare_data(cfg.data).store
    expected = [first.src(i) for i in range(len(first))]
    directory = first.directory
    if damage == "truncate tokens":
        path = directory / "src_tokens.npy"
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "no meta.json":
        (directory / "meta.json").unlink()
    else:
        np.save(directory / "tgt_offsets.npy", np.arange(len(first) + 1, dtype=np.int64))
    with caplog.at_level("WARNING"):
        rebuilt = prepare_data(cfg.data).store
    assert f"token store {directory} is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert [rebuilt.src(i) for i in range(len(rebuilt))] == expected


def _repeated_corpus(multi30k_dir, directory: Path, times: int) -> Path:
    directory.mkdir(parents=True)
    for lang in ("de", "en"):
        train = gzip.decompress((multi30k_dir / f"train.{lang}.gz").read_bytes())
        (directory / f"train.{lang}").write_bytes(train * times)
        for split, name in (("val", "val"), ("test_2016_flickr", "test")):
            lines = read_lines(multi30k_dir / f"{split}.{lang}.gz")[:20]
            (directory / f"{name}.{lang}").write_text("\n".join(lines) + "\n")
    return directory


@pytest.mark.slow
def test_preparation_killed_half_way_leaves_nothing_to_read(multi30k_dir, tmp_path):
    """A real `translate prepare` killed with SIGKILL while it encodes: the next one removes its
    leftovers and builds the whole store."""
    corpus = _repeated_corpus(multi30k_dir, tmp_path / "corpus", times=10)
    overrides = [
        "data=files",
        f"data.dir={corpus}",
        "data.valid_split=val",
        "data.tokenizer.vocab_size=1000",
        "data.tokenizer.input_sentence_size=20000",
        *_caches(tmp_path),
    ]
    command = [sys.executable, "-m", "translate", "prepare", *overrides]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stores, deadline = tmp_path / "stores", time.time() + 300
    while not any(p.stat().st_size > 0 for p in stores.glob("*.partial-*/src.raw")):
        assert first.poll() is None and time.time() < deadline, "the preparation ended before it was killed"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    partial = list(stores.iterdir())
    assert len(partial) == 1 and ".partial-" in partial[0].name  # no store under its real name

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"left half-built by process {first.pid}" in second.stdout
    assert "store " in second.stdout and "290,000 pairs" in second.stdout
    assert [p.name for p in stores.iterdir() if ".partial-" in p.name] == []


@pytest.mark.slow
def test_resume_keeps_the_runs_own_tokenizer(multi30k_dir, tmp_path, caplog):
    """A resumed run encodes with the tokenizer in its run directory, even where the cache is gone (SentencePiece
    does not learn the same pieces twice)."""
    steps = ["trainer.max_steps=2", "trainer.valid_every=2", "trainer.valid_bleu_sentences=4"]
    cfg = compose_train([*SMALL_DATA, *SMALL_MODELS["rnn"], *_caches(tmp_path), *steps])
    Trainer(cfg, tmp_path / "run").fit()
    for cache in ("tok", "stores"):
        for path in sorted((tmp_path / cache).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    cfg.resume = str(tmp_path / "run")
    with caplog.at_level("INFO"):
        resumed = Trainer(cfg, tmp_path / "run")
    assert resumed.data.tokenizer.model_file == tmp_path / "run" / "tokenizer.model"
    assert "training SentencePiece" not in caplog.text and resumed.state.step == 2


def test_wmt14_config_on_a_fixture_of_its_shape(tmp_path):
    """data=wmt14 as the hub serves it (splits train / validation / test, a `translation` column with de and
    en), from a `datasets` fixture saved to disk: no network."""
    import datasets

    def split(n, offset):
        rows = [{"de": f"Satz {i} über Häuser", "en": f"sentence {i} about houses"} for i in range(offset, offset + n)]
        return datasets.Dataset.from_dict({"translation": rows})

    path = tmp_path / "wmt14"
    datasets.DatasetDict({"train": split(300, 0), "validation": split(5, 1000), "test": split(7, 2000)}).save_to_disk(
        str(path)
    )
    cfg = compose_train(["data=wmt14", f"data.hub={path}", "data.tokenizer.vocab_size=60", *_caches(tmp_path)])
    assert (cfg.data.valid_split, cfg.data.test_split, cfg.data.hub_config) == ("validation", "test", "de-en")
    data = prepare_data(cfg.data)
    assert len(data.store) == 300 and len(data.valid) == 5 and data.valid.src[0] == "Satz 1000 über Häuser"
    assert data.tokenizer.decode([data.store.tgt(299)]) == ["sentence 299 about houses"]
