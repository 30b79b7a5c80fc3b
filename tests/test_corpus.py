import gzip
import hashlib
import http.server
import threading
from functools import partial

import pytest

from translate.config import DataConfig
from translate.data import corpus
from translate.data.corpus import (
    CorpusError,
    Pairs,
    download_file,
    filter_training_pairs,
    load_corpus,
    read_lines,
    read_pair_files,
)


def write(path, text: str | bytes):
    data = text.encode() if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def test_reads_gzip_and_plain(tmp_path):
    assert read_lines(write(tmp_path / "a.de.gz", "eins\nzwei\n")) == ["eins", "zwei"]
    assert read_lines(write(tmp_path / "a.en", "one\ntwo\n")) == ["one", "two"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.de\.gz: file not found"):
        read_lines(tmp_path / "nope.de.gz")


def test_unequal_line_counts_name_both_files(tmp_path):
    src, tgt = write(tmp_path / "x.de", "a\nb\nc\n"), write(tmp_path / "x.en", "a\nb\n")
    with pytest.raises(CorpusError, match=r"x\.de has 3 lines but .*x\.en has 2; the files must be line-aligned"):
        read_pair_files(src, tgt)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.de.gz", b"gut\nauch gut\nschl\xe4cht\n")
    with pytest.raises(CorpusError, match=r"bad\.de\.gz:3: invalid UTF-8 \(byte 0xe4 at column 5\)"):
        read_lines(path)


def test_empty_pairs_are_dropped_and_counted(caplog):
    pairs = Pairs(["a", "", "c", "d"], ["A", "B", "", "D"])
    with caplog.at_level("WARNING"):
        kept = filter_training_pairs(pairs, "test")
    assert kept.src == ["a", "d"] and kept.tgt == ["A", "D"]
    assert "dropped 2 of 4 training pairs with an empty side" in caplog.text


def _data_cfg(**kw):
    return DataConfig(**{"url": "", "download_dir": "dl", "test_split": "test", **kw})


def _toy_corpus(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        write(directory / f"{split}.de.gz", "".join(f"satz {i}\n" for i in range(n)))
        write(directory / f"{split}.en.gz", "".join(f"sentence {i}\n" for i in range(n)))


def test_directory_from_config_then_environment(tmp_path, monkeypatch):
    _toy_corpus(tmp_path / "c")
    got = load_corpus(_data_cfg(dir=str(tmp_path / "c"), test_limit=2))
    assert [len(got[k]) for k in ("train", "valid", "test")] == [5, 2, 2]
    monkeypatch.setenv(corpus.DATA_DIR_ENV, str(tmp_path / "c"))
    assert load_corpus(_data_cfg()).keys() == {"train", "valid", "test"}
    monkeypatch.setenv(corpus.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="missing: directory not found .*TRANSLATE_DATA_DIR"):
        load_corpus(_data_cfg())


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_download_once_from_url_when_no_local_copy(tmp_path, http_server, monkeypatch):
    root, base = http_server
    _toy_corpus(root)
    monkeypatch.setattr(corpus, "SHARED_MULTI30K", tmp_path / "no-shared")
    monkeypatch.setattr(corpus, "PROJECT_ROOT", tmp_path / "project")
    monkeypatch.delenv(corpus.DATA_DIR_ENV, raising=False)
    digest = hashlib.sha256((root / "train.de.gz").read_bytes()).hexdigest()
    cfg = _data_cfg(url=base + "/{split}.{lang}.gz", sha256={"train.de.gz": digest})
    got = load_corpus(cfg)
    assert got["train"].src[4] == "satz 4" and got["test"].tgt[2] == "sentence 2"
    assert (tmp_path / "project" / "dl" / "val.en.gz").exists()
    (root / "train.de.gz").unlink()  # a second run must not ask the server again
    assert load_corpus(cfg)["train"].src[0] == "satz 0"


def test_download_checksum_mismatch_keeps_nothing(tmp_path, http_server):
    root, base = http_server
    write(root / "f.gz", "x\n")
    with pytest.raises(CorpusError, match="SHA-256 .* does not match the expected 00ff"):
        download_file(base + "/f.gz", tmp_path / "out" / "f.gz", sha256="00ff")
    assert list((tmp_path / "out").iterdir()) == []


def test_download_failure_names_url_and_fix(tmp_path, http_server):
    _, base = http_server
    with pytest.raises(CorpusError, match=r"/absent\.gz: download failed .*set data.dir"):
        download_file(base + "/absent.gz", tmp_path / "absent.gz")


@pytest.fixture
def saved_dataset(tmp_path):
    """A `datasets` fixture in the hub's translation format, saved to disk."""
    import datasets

    def split(n):
        return datasets.Dataset.from_dict(
            {"translation": [{"de": f" satz {i} ", "en": f"sentence {i}"} for i in range(n)]}
        )

    path = tmp_path / "hub-fixture"
    datasets.DatasetDict({"train": split(6), "validation": split(2), "test": split(3)}).save_to_disk(str(path))
    return path


def test_hub_dataset_saved_to_disk(saved_dataset):
    cfg = _data_cfg(hub=str(saved_dataset), valid_split="validation", train_limit=4)
    got = load_corpus(cfg)
    assert [len(got[r]) for r in ("train", "valid", "test")] == [4, 2, 3]
    assert got["test"].src[2] == "satz 2" and got["test"].tgt[2] == "sentence 2"


def test_hub_errors_name_split_and_language(saved_dataset):
    with pytest.raises(CorpusError, match="no split 'val'; it has train, validation, test"):
        load_corpus(_data_cfg(hub=str(saved_dataset)))
    with pytest.raises(CorpusError, match="has no language 'fr'; it has de, en"):
        load_corpus(_data_cfg(hub=str(saved_dataset), valid_split="validation", tgt_lang="fr"))


def test_hub_load_dataset_path_offline(tmp_path, monkeypatch):
    """The real `datasets.load_dataset` call, on a local dataset directory, with the hub switched off."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "local-repo"
    (repo / "data").mkdir(parents=True)
    for split, n in (("train", 5), ("validation", 2), ("test", 2)):
        datasets.Dataset.from_dict({"translation": [{"de": f"d{i}", "en": f"e{i}"} for i in range(n)]}).to_parquet(
            str(repo / "data" / f"{split}-00000-of-00001.parquet")
        )
    got = load_corpus(_data_cfg(hub=str(repo), valid_split="validation"))
    assert got["train"].src == [f"d{i}" for i in range(5)] and got["valid"].tgt == ["e0", "e1"]
    with pytest.raises(CorpusError, match="no-such-dataset-here: cannot load from the Hugging Face hub"):
        load_corpus(_data_cfg(hub="no-such-dataset-here"))
