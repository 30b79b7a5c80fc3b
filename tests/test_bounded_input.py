"""Input from people we do not know is read in bounded pieces: a line is cut (stdin) or skipped (corpora) at a byte
limit before anything decodes or encodes it, and every model caps the source it reads."""

import gzip
import io
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_synthetic

from translate.commands import translate as command
from translate.config.schema import ModelConfig
from translate.data.corpus import MAX_LINE_BYTES, SKIP_CHUNK, TextFiles, iter_lines, read_bounded_line, read_lines
from translate.decoding import inference
from translate.decoding.attention_maps import attention_maps
from translate.decoding.options import DecodingOptions
from translate.decoding.search import Hypothesis, source_limit, translate_ids
from translate.models import MODELS, build_model

ROOT = Path(__file__).resolve().parents[1]


class Reads(io.BytesIO):
    """A stream that records the size of every readline it is asked for."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.sizes = []

    def readline(self, size=-1):
        self.sizes.append(size)
        return super().readline(size)


def test_a_line_over_the_limit_is_cut_on_a_character_boundary_and_the_rest_read_in_bounded_pieces():
    stream = Reads(("é" * 200_000).encode() + b"\nnext\n")  # 400,000 bytes of two-byte characters
    line, cut = read_bounded_line(stream, 1001)
    assert cut and line == ("é" * 500).encode()  # 1001 bytes would split a character: 1000 kept
    assert read_bounded_line(stream, 1001) == (b"next\n", False)
    assert read_bounded_line(stream, 1001) == (b"", False)
    assert max(stream.sizes) <= max(1002, SKIP_CHUNK) and -1 not in stream.sizes
    for text, expected in [(b"x" * 10 + b"\n", (b"x" * 10 + b"\n", False)), (b"x" * 10, (b"x" * 10, False))]:
        assert read_bounded_line(io.BytesIO(text), 10) == expected  # exactly at the limit: whole
    assert read_bounded_line(io.BytesIO(b"x" * 11), 10) == (b"x" * 10, True)
    assert read_bounded_line(io.BytesIO("€".encode() * 5), 7) == ("€".encode() * 2, True)  # 3-byte characters


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_corpus_line_of_10_mb_is_skipped_without_being_held(tmp_path, suffix, caplog):
    big = b"a\n" + b"x" * 10_000_000 + b"\nc\n"
    src, tgt = tmp_path / f"big.de{suffix}", tmp_path / f"big.en{suffix}"
    src.write_bytes(gzip.compress(big, 1) if suffix else big)
    tgt.write_bytes(gzip.compress(b"A\nB\nC\n") if suffix else b"A\nB\nC\n")
    del big
    tracemalloc.start()
    try:
        pairs = list(TextFiles(src, tgt))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pairs == [("a", "A"), ("c", "C")]
    assert peak < 8_000_000, f"peak {peak:,} bytes while skipping a 10 MB line"  # two 1 MB read buffers, gzip's
    assert f"a line over {MAX_LINE_BYTES} bytes (the first at {src}:2)" in caplog.text
    assert [n for n, text in iter_lines(src) if text is None] == [2]
    assert read_lines(src) == ["a", "c"]


def test_stdin_lines_are_cut_at_the_limit_with_a_warning_naming_the_line(caplog):
    stdin = io.BytesIO(b"kurz\n" + "ä".encode() * 100 + b"\n\xffx\n" + b"y" * 30)
    with caplog.at_level(logging.WARNING, logger="translate"):
        lines = list(command.input_lines(stdin, limit=51))
    assert lines == [(1, "kurz\n"), (2, "ä" * 25), (3, "\ufffdx\n"), (4, "y" * 30)]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings[0] == "line 2: longer than 51 bytes; translating its first 50 bytes (the rest is not read)"
    assert warnings[1].startswith("line 3: invalid UTF-8") and len(warnings) == 2


def test_stdin_chunks_are_bounded_in_lines_and_in_bytes(monkeypatch):
    monkeypatch.setattr(command, "CHUNK", 3)
    monkeypatch.setattr(command, "CHUNK_BYTES", 10)
    lines = enumerate(["a", "b", "c", "d", "e" * 12, "f", "g"], start=1)
    assert list(command.chunks(lines)) == [(1, ["a", "b", "c"]), (4, ["d", "e" * 12]), (6, ["f", "g"])]


class Engine:
    """A model that is not a torch module (as CT2Model): its own translate_ids, a source limit."""

    def __init__(self, max_positions):
        self.max_positions, self.sources = max_positions, []

    def translate_ids(self, sources, options):
        self.sources = sources
        return [Hypothesis(s[:3], 0.0) for s in sources]


class Words:
    """A tokenizer of one token per character, recording what it was asked to encode."""

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen = list(texts)
        return [[ord(c) % 50 + 4 for c in text] for text in texts]

    def decode(self, ids):
        return ["".join(chr(i + 93) for i in seq) for seq in ids]


def test_translate_texts_cuts_a_text_before_tokenizing_and_names_it(caplog):
    engine, words = Engine(101), Words()
    out = inference.translate_texts(
        engine, words, ["kurz", "x" * 5_000_000, "y" * 150], DecodingOptions(), names=["a", "b", "c"]
    )
    assert len(out) == 3 and [len(t) for t in words.seen] == [4, 100 * inference.CHARS_PER_TOKEN, 150]
    assert "b: 5000000 characters, at least 1600 subword tokens; translating its first 100 (the model's limit)" in (
        caplog.text
    )
    assert "c: 150 subword tokens; translating its first 100 (the model's limit)" in caplog.text
    assert "a:" not in caplog.text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_caps_its_source(name):
    cfg = ModelConfig(
        name=name, enc_layers=1, dec_layers=1, emb_dim=8, hidden_dim=8, attention_dim=8, d_model=8, heads=2, ff_dim=16
    )
    model = build_model(cfg, 20).eval()
    assert model.max_positions == 1024 and source_limit(model) == 1023
    if name == "rnn_attention":  # a source of 3000 tokens reaches the encoder cut: 1023 and EOS
        (hyp,) = translate_ids(model, [[5] * 3000], 1, 2, DecodingOptions(max_len_ratio=0.0, max_len_offset=3))
        (maps,) = attention_maps(model, [[5] * 3000], [hyp.tokens])
        assert maps["alignment"].shape[1] == 1024


# ---- the command, a real process ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from translate.training.run import train

    tmp = tmp_path_factory.mktemp("bounded")
    overrides = [*tiny_synthetic(train_size=200, eval_size=8, max_len=8), "trainer.max_steps=2", "trainer.threads=1"]
    overrides += ["trainer.valid_every=2", "trainer.batch_tokens=300", f"data.tokenizer.cache_dir={tmp / 'tok'}"]
    threads = torch.get_num_threads()
    try:
        train(compose_train(overrides), tmp / "run")
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


MEASURED = (  # runs a command with this stdin; prints its peak resident memory (KiB) last on stderr
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def translate_measured(stdin_file: Path, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """`translate translate args < stdin_file` and its peak RSS in MiB."""
    with open(stdin_file, "rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-c", MEASURED, sys.executable, "-m", "translate", "translate", *args],
            stdin=stdin,
            capture_output=True,
            cwd=ROOT,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    stderr = done.stderr.decode(errors="replace")
    *rest, peak = stderr.rstrip("\n").split("\n")
    done.stderr = "\n".join(rest)
    return done, int(peak) // 1024


@pytest.mark.slow
def test_a_20_mb_line_on_stdin_is_cut_and_memory_stays_bounded(tiny_run, tmp_path):
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_bytes(b"s1 s2 s3\ns4 s5\n")
    with open(long, "wb") as f:
        f.write(b"s1 s2 s3\n")
        for _ in range(20):  # 20 MB in one line, written a MB at a time
            f.write(b"s6 s7 s8 " * ((1 << 20) // 9))
        f.write(b"\ns4 s5\n")
    base, base_peak = translate_measured(short, f"run={tiny_run}")
    assert base.returncode == 0, base.stderr[-3000:]
    done, peak = translate_measured(long, f"run={tiny_run}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.decode().split("\n")
    assert len(out) == 4 and out[-1] == "" and out[0] == base.stdout.decode().split("\n")[0]
    assert f"line 2: longer than {MAX_LINE_BYTES} bytes; translating its first" in done.stderr
    assert "line 2: " in done.stderr and "(the model's limit)" in done.stderr and "Traceback" not in done.stderr
    assert peak - base_peak < 40, f"peak {peak} MiB with a 20 MB line, {base_peak} MiB without"

    # attention=: the same cut; against a line of 1200 pieces (3.6 kB), also cut at the model's limit, drawn alike
    png, draw = tmp_path / "a.png", [f"run={tiny_run}", "eval.max_len_ratio=0.001", "eval.max_len_offset=3"]
    short.write_bytes(b"s6 s7 " * 600 + b"\n")
    with open(long, "wb") as f:
        for _ in range(20):
            f.write(b"s6 s7 " * ((1 << 20) // 6))
        f.write(b"\n\n")
    base, base_peak = translate_measured(short, *draw, f"attention={png}")
    assert base.returncode == 0, base.stderr[-3000:]
    drawn, drawn_peak = translate_measured(long, *draw, f"attention={png}")
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert len(drawn.stdout.decode().split("\n")) == 3 and png.stat().st_size > 1000
    assert f"line 1: longer than {MAX_LINE_BYTES} bytes" in drawn.stderr and "drawing the first" in drawn.stderr
    assert drawn_peak - base_peak < 40, f"peak {drawn_peak} MiB drawing a 20 MB line, {base_peak} MiB a 3.6 kB one"
