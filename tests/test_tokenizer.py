from translate.data.corpus import read_lines
from translate.data.tokenizer import BOS, EOS, PAD, UNK, train_or_load


def _texts(multi30k_dir, n=2000):
    return read_lines(multi30k_dir / "train.de.gz")[:n] + read_lines(multi30k_dir / "train.en.gz")[:n]


def test_round_trip_on_real_text(multi30k_dir, small_cfg, tmp_path):
    cfg = small_cfg("transformer").data.tokenizer
    tok = train_or_load(_texts(multi30k_dir), cfg, tmp_path)
    assert len(tok) == 600
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    sentences = read_lines(multi30k_dir / "val.de.gz")[:50] + read_lines(multi30k_dir / "val.en.gz")[:50]
    ids = tok.encode(sentences)
    assert all(PAD not in s and BOS not in s and EOS not in s for s in ids)
    assert tok.decode(ids) == sentences  # SentencePiece is lossless on text its characters cover


def test_trained_once_then_reused_from_cache(multi30k_dir, small_cfg, tmp_path):
    cfg = small_cfg("transformer").data.tokenizer
    first = train_or_load(_texts(multi30k_dir, 500), cfg, tmp_path)
    mtime = first.model_file.stat().st_mtime_ns
    second = train_or_load(_texts(multi30k_dir, 500), cfg, tmp_path)
    assert second.model_file == first.model_file and second.model_file.stat().st_mtime_ns == mtime
    other = train_or_load(_texts(multi30k_dir, 400), cfg, tmp_path)  # other data -> another cache entry
    assert other.model_file != first.model_file


def test_copy_into_run_dir_loads(multi30k_dir, small_cfg, tmp_path):
    from translate.data.tokenizer import Tokenizer

    tok = train_or_load(_texts(multi30k_dir, 500), small_cfg("transformer").data.tokenizer, tmp_path)
    tok.save(tmp_path / "tokenizer.model")
    copy = Tokenizer(tmp_path / "tokenizer.model")
    assert copy.encode(["ein Hund läuft."]) == tok.encode(["ein Hund läuft."])
