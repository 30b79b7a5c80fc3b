import gzip
import re

import pytest

from translate.config.schema import DataConfig
from translate.data import remote
from translate.data.corpus import (
    CorpusError,
    JsonlFile,
    Pairs,
    TextFiles,
    TrainingPairs,
    TsvFile,
    read_lines,
    read_pair_files,
)
from translate.data.pipeline import load_split, split_source
from translate.data.remote import HubSplit


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


def test_unequal_line_counts_either_way_while_streaming(tmp_path):
    longer, shorter = write(tmp_path / "l.de.gz", "a\nb\nc\nd\n"), write(tmp_path / "s.en", "a\n")
    with pytest.raises(CorpusError, match=r"l\.de\.gz has 4 lines but .*s\.en has 1"):
        list(TextFiles(longer, shorter))
    with pytest.raises(CorpusError, match=r"s\.en has 1 lines but .*l\.de\.gz has 4"):
        list(TextFiles(shorter, longer))


def test_empty_pairs_are_dropped_and_counted(tmp_path):
    src, tgt = write(tmp_path / "t.de", "a\n\nc\nd\n"), write(tmp_path / "t.en", "A\nB\n \nD\n")
    pairs = TrainingPairs(TextFiles(src, tgt))
    assert list(pairs) == [("a", "A"), ("d", "D")] and (pairs.read, pairs.empty) == (4, 2)
    assert list(pairs.sentences()) == ["a", "d", "A", "D"]  # sources, then targets: what SentencePiece reads
    assert list(TrainingPairs(TextFiles(src, tgt), limit=1)) == [("a", "A")]


def test_a_corpus_without_pairs_is_one_line(tmp_path):
    src, tgt = write(tmp_path / "e.de", "\n\n"), write(tmp_path / "e.en", "x\n\n")
    with pytest.raises(CorpusError, match=r"e\.de \+ e\.en: no training pairs with text on both sides \(2 lines\)"):
        list(TrainingPairs(TextFiles(src, tgt)))
    src, tgt = write(tmp_path / "z.de", ""), write(tmp_path / "z.en", "")
    with pytest.raises(CorpusError, match=r"no training pairs with text on both sides \(0 lines\)"):
        list(TrainingPairs(TextFiles(src, tgt)))


def test_tsv_streams_and_names_a_bad_line(tmp_path):
    good = write(tmp_path / "train.tsv.gz", "ein Hund\ta dog\n Haus \t house\n")
    assert list(TsvFile(good)) == [("ein Hund", "a dog"), ("Haus", "house")]
    bad = write(tmp_path / "bad.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(CorpusError, match=r"bad\.tsv:2: 3 tab-separated fields; each line must be <source>TAB<target>"):
        list(TsvFile(bad))


def test_jsonl_both_shapes_and_bad_lines(tmp_path):
    lines = '{"de": "Hund", "en": "dog"}\n{"translation": {"en": "cat", "de": "Katze", "fr": "chat"}}\n'
    assert list(JsonlFile(write(tmp_path / "a.jsonl", lines), "de", "en")) == [("Hund", "dog"), ("Katze", "cat")]
    with pytest.raises(CorpusError, match=r"b\.jsonl:2: not JSON \(Expecting value at column 1\)"):
        list(JsonlFile(write(tmp_path / "b.jsonl", '{"de": "a", "en": "b"}\nnope\n'), "de", "en"))
    with pytest.raises(
        CorpusError, match=r"c\.jsonl:1: no key 'en'; each line must be \{\"de\": \"…\", \"en\": \"…\"\}"
    ):
        list(JsonlFile(write(tmp_path / "c.jsonl", '{"de": "a", "fr": "b"}\n'), "de", "en"))


@pytest.mark.parametrize(
    "line, what",
    [
        ("[" * 10_000, r"not usable JSON \(nested too deep to read\)"),
        ('{"de": "a", "en": ' + "[" * 10_000 + "]" * 10_000 + "}", r"not usable JSON \(nested too deep to read\)"),
        ('{"de": ' + "9" * 5_000 + ', "en": "b"}', r"not usable JSON \(Exceeds the limit \(4300 digits\)"),
        ("7" * 5_000, r"not usable JSON \(Exceeds the limit \(4300 digits\)"),
        ('{"de": "a", "en": "b"', r"not JSON \(Expecting ',' delimiter at column 22\)"),
        ('{"de": 5, "en": "b"}', r"'de' is a JSON number, not a string"),
        ('{"de": "a", "en": null}', r"'en' is a JSON null, not a string"),
        ('{"de": ["a"], "en": "b"}', r"'de' is a JSON array, not a string"),
        ('{"de": {"x": "a"}, "en": "b"}', r"'de' is a JSON object, not a string"),
        ('{"de": true, "en": "b"}', r"'de' is a JSON boolean, not a string"),
        ('{"de": NaN, "en": "b"}', r"'de' is a JSON number, not a string"),
        ('["a", "b"]', r"a JSON array, not an object"),
        ('"a"', r"a JSON string, not an object"),
        ("null", r"a JSON null, not an object"),
        ('{"translation": ["a", "b"]}', r'"translation" is a JSON array, not an object'),
        ('{"de": "\\ud800", "en": "b"}', r"'de' holds a lone surrogate escape"),
    ],
)
def test_malformed_jsonl_of_every_kind_is_one_line(tmp_path, line, what):
    path = write(tmp_path / "bad.jsonl", '{"de": "gut", "en": "good"}\n' + line + "\n")
    with pytest.raises(CorpusError) as error:
        list(JsonlFile(path, "de", "en"))
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    assert re.fullmatch(
        rf'.*bad\.jsonl:2: {what}.*; each line must be \{{"de": "…", "en": "…"\}} \(two strings\)', message
    )


def test_over_long_lines_are_skipped_counted_and_the_pairs_stay_aligned(tmp_path, caplog):
    long = "x" * 40  # over max_line_bytes=32 below; a line of exactly 32 bytes is kept
    src = write(tmp_path / "l.de", f"a\n{long}\nc\n{'d' * 32}\n")
    tgt = write(tmp_path / "l.en.gz", f"A\nB\nC\n{long}\n")
    rows = [("a", "A"), ("x" * 20, "B"), ("c", "C"), ("d", "y" * 20)]  # rows 2 and 4 over 32 bytes as JSON
    jsonl = "".join(f'{{"de": "{d}", "en": "{e}"}}\n' for d, e in rows)
    sources = [
        (TextFiles(src, tgt, max_line_bytes=32), "l.de:2"),
        (TsvFile(write(tmp_path / "l.tsv", f"a\tA\n{long}\tB\nc\tC\nd\t{long}\n"), max_line_bytes=32), "l.tsv:2"),
        (JsonlFile(write(tmp_path / "l.jsonl", jsonl), "de", "en", max_line_bytes=32), "l.jsonl:2"),
    ]
    for source, first in sources:
        caplog.clear()
        assert list(source) == [("a", "A"), ("c", "C")] and source.skipped == 2
        (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
        message = record.getMessage()
        assert (
            "2 sentence pair(s) skipped, a line over 32 bytes" in message
            and f"the first at {tmp_path / first}" in message
        )
        assert "\n" not in message
    assert list(TextFiles(src, tgt)) == [("a", "A"), (long, "B"), ("c", "C"), ("d" * 32, long)]
    assert TextFiles(src, tgt).identity() != TextFiles(src, tgt, max_line_bytes=32).identity()


def test_over_long_pairs_are_counted_in_training_and_in_small_splits(tmp_path, caplog):
    long = "x" * 100
    src, tgt = write(tmp_path / "t.de", f"a\n\n{long}\nd\n"), write(tmp_path / "t.en", "A\nB\nC\nD\n")
    pairs = TrainingPairs(TextFiles(src, tgt, max_line_bytes=50))
    assert list(pairs) == [("a", "A"), ("d", "D")] and (pairs.read, pairs.empty, pairs.too_long) == (3, 1, 1)
    assert list(TrainingPairs(TextFiles(src, tgt, max_line_bytes=50), limit=2)) == [("a", "A")]
    small = read_pair_files(src, tgt, max_line_bytes=50)
    assert (small.src, small.tgt, small.skipped) == (["a", "", "d"], ["A", "B", "D"], 1)
    assert Pairs.read(TextFiles(src, tgt, max_line_bytes=50), limit=1).src == ["a"]
    only_long = write(tmp_path / "o.de", f"{long}\n\n"), write(tmp_path / "o.en", "X\ny\n")
    with pytest.raises(
        CorpusError,
        match=r"o\.de \+ o\.en: no training pairs with text on both sides \(1 lines, 1 more over 50 bytes skipped\)",
    ):
        list(TrainingPairs(TextFiles(*only_long, max_line_bytes=50)))


def test_line_counts_still_compared_past_an_over_long_line(tmp_path):
    src, tgt = write(tmp_path / "u.de", "a\n" + "x" * 100 + "\nc\n"), write(tmp_path / "u.en", "A\nB\n")
    with pytest.raises(CorpusError, match=r"u\.de has 3 lines but .*u\.en has 2"):
        list(TextFiles(src, tgt, max_line_bytes=50))


def test_identity_follows_content(tmp_path):
    src, tgt = write(tmp_path / "i.de", "a\n"), write(tmp_path / "i.en", "b\n")
    first = TextFiles(src, tgt).identity()
    assert TextFiles(src, tgt).identity() == first
    write(tgt, "c\n")
    assert TextFiles(src, tgt).identity() != first


@pytest.mark.parametrize("fmt", ["text", "tsv", "jsonl"])
def test_data_files_in_each_format(tmp_path, fmt):
    directory = tmp_path / fmt
    directory.mkdir()
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        rows = [(f"satz {i}", f"sentence {i}") for i in range(n)]
        if fmt == "text":
            write(directory / f"{split}.de", "".join(f"{s}\n" for s, _ in rows))
            write(directory / f"{split}.en.gz", "".join(f"{t}\n" for _, t in rows))
        elif fmt == "tsv":
            write(directory / f"{split}.tsv.gz", "".join(f"{s}\t{t}\n" for s, t in rows))
        else:
            write(directory / f"{split}.jsonl", "".join(f'{{"de": "{s}", "en": "{t}"}}\n' for s, t in rows))
    got = load_corpus(_data_cfg(name="files", format=fmt, dir=str(directory)))
    assert [len(got[k]) for k in ("train", "valid", "test")] == [5, 2, 3]
    assert got["test"].src[2] == "satz 2" and got["train"].tgt[4] == "sentence 4"


def _data_cfg(**kw):
    return DataConfig(**{"url": "", "download_dir": "dl", "test_split": "test", **kw})


def load_corpus(cfg) -> dict[str, Pairs]:
    """Every split of a DataConfig read whole (training pairs filtered), as training would see them."""
    train = Pairs.read(TrainingPairs(split_source(cfg, "train"), cfg.train_limit))
    return {"train": train, "valid": load_split(cfg, "valid"), "test": load_split(cfg, "test")}


def _toy_corpus(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        write(directory / f"{split}.de.gz", "".join(f"satz {i}\n" for i in range(n)))
        write(directory / f"{split}.en.gz", "".join(f"sentence {i}\n" for i in range(n)))


def test_directory_from_config_then_environment(tmp_path, monkeypatch):
    _toy_corpus(tmp_path / "c")
    got = load_corpus(_data_cfg(dir=str(tmp_path / "c"), test_limit=2))
    assert [len(got[k]) for k in ("train", "valid", "test")] == [5, 2, 2]
    monkeypatch.setenv(remote.DATA_DIR_ENV, str(tmp_path / "c"))
    assert load_corpus(_data_cfg()).keys() == {"train", "valid", "test"}
    monkeypatch.setenv(remote.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="missing: directory not found .*TRANSLATE_DATA_DIR"):
        load_corpus(_data_cfg())


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


@pytest.mark.slow
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
    assert (
        HubSplit(str(repo), None, "train", "de", "en", revision=None).identity()
        == HubSplit(str(repo), None, "train", "de", "en", revision=None).identity()
    )
    with pytest.raises(CorpusError, match="no-such-dataset-here: cannot load from the Hugging Face hub"):
        load_corpus(_data_cfg(hub="no-such-dataset-here", hub_revision="0" * 40))
