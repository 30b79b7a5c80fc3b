"""Serving through CTranslate2 (translate/commands/export.py): a Transformer trained for a few dozen steps on a slice of
Multi30k is exported and decodes as our own search does; RNN runs are refused; a missing export is named."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL_DATA, SMALL_MODELS, compose_train, optional_package
from omegaconf import OmegaConf

from translate.config.schema import EvalConfig, ModelConfig
from translate.data.batching import collate
from translate.data.tokenizer import BOS, EOS
from translate.decoding.inference import load_run, translate_texts
from translate.decoding.options import DecodingOptions
from translate.decoding.search import translate_ids
from translate.models import build_model
from translate.runtime.checkpoints import load_checkpoint, save_checkpoint
from translate.runtime.errors import ConfigError, UserError
from translate.training.run import train

pytestmark = pytest.mark.slow  # trains a Transformer, exports and decodes it through commands

ROOT = Path(__file__).resolve().parents[1]
# 100 updates: poor translations, but most end with EOS (49 of the 50 below) and some run to the length limit
STEPS = ["trainer.max_steps=100", "trainer.valid_every=100", "trainer.batch_tokens=1500", "trainer.warmup_steps=30"]
STEPS += ["trainer.lr=5e-3", "trainer.valid_bleu_sentences=10", "trainer.attention_maps=0", "trainer.num_samples=0"]
# the corpus's pairs only: in 100 updates the model learns where a sentence ends (with joined pairs it does not yet,
# and every output would stop at the length limit, which the comparison with CTranslate2 needs to avoid)
STEPS += ["trainer.concat_prob=0"]
SENTENCES = 50
# A token where CTranslate2 and PyTorch pick differently is allowed only where our model's two candidates are this
# close in log-probability: both compute in float32 with different kernels (oneDNN/MKL GEMMs, fused attention), so
# they agree to ~1e-5 and only an exact near-tie can flip an argmax.
NEAR_TIE = 1e-3
MAX_FLIPS = 2  # of SENTENCES
SCORE_TOLERANCE = 1e-3  # per decoded token, on the summed log-probability of identical outputs


@pytest.fixture(autouse=True)
def one_thread():
    """This tiny model decodes fastest on one thread (many small operations), in PyTorch and in CTranslate2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ctranslate2():
    return optional_package("ctranslate2")


@pytest.fixture(scope="module")
def run_dir(multi30k_dir, ctranslate2, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    cache = f"data.tokenizer.cache_dir={run.parent / 'tokenizers'}"
    threads = torch.get_num_threads()
    try:
        train(compose_train([*SMALL_DATA, *SMALL_MODELS["transformer"], *STEPS, cache, "trainer.threads=1"]), run)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    """The run after `translate export run=<run>` (float32)."""
    done = _cli("export", f"run={run_dir}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {run_dir / 'ct2'}: CTranslate2 model of best.pt (step ")
    assert "quantization none" in done.stdout and " MB" in done.stdout
    return run_dir


@pytest.fixture(scope="module")
def sentences(multi30k_dir) -> list[str]:
    with gzip.open(multi30k_dir / "val.de.gz", "rt", encoding="utf-8") as f:
        return [next(f).strip() for _ in range(SENTENCES)]


def _cli(command: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "translate", command, *args]
    return subprocess.run(command, input=stdin, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _log_prob_gap(model, source: list[int], prefix: list[int], a: int, b: int) -> float:
    """|log P(a) − log P(b)| of our model after `prefix` (teacher forced)."""
    batch = collate([source], [prefix], [0])
    logits = model(batch.src, batch.src_mask, batch.tgt_in)[0, -1]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return float((log_probs[a] - log_probs[b]).abs())


def _compare(model, sources, ours, theirs, ratio: float, offset: int) -> tuple[list[int], float]:
    """(sentences whose outputs differ, each checked to start at a near-tie; largest score difference per token of
    the identical ones)."""
    flips, worst = [], 0.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        limit = int((len(sources[i]) + 1) * ratio) + offset  # translate.decoding.search.max_output_lengths
        assert len(b.tokens) <= limit, f"sentence {i}: CTranslate2 gave {len(b.tokens)} tokens, limit {limit}"
        assert len(a.tokens) <= limit, f"sentence {i}: PyTorch gave {len(a.tokens)} tokens, limit {limit}"
        if a.tokens == b.tokens:
            worst = max(worst, abs(a.score - b.score) / (len(a.tokens) + 1))
            continue
        t = next((t for t, (x, y) in enumerate(zip(a.tokens + [EOS], b.tokens + [EOS])) if x != y))
        x, y = (a.tokens + [EOS])[t], (b.tokens + [EOS])[t]
        gap = _log_prob_gap(model, sources[i], a.tokens[:t], x, y)
        assert gap < NEAR_TIE, f"sentence {i}: token {t} is {x} in PyTorch, {y} in CTranslate2, {gap:.2e} apart"
        flips.append(i)
    return flips, worst


def test_ct2_greedy_output_is_our_greedy_output(exported, sentences):
    from translate.decoding.ct2 import CT2Model
    from translate.decoding.ct2_export import export_dir

    model, tokenizer, _, _ = load_run(exported, "best", "cpu")
    sources = tokenizer.encode(sentences)
    ec = EvalConfig()
    options = DecodingOptions.of(ec, beam_size=1)
    with torch.no_grad():
        ours = translate_ids(model, sources, BOS, EOS, options)
        theirs = CT2Model(export_dir(exported), "cpu").translate_ids(sources, options)
        flips, worst = _compare(model, sources, ours, theirs, ec.max_len_ratio, ec.max_len_offset)
    assert len(flips) <= MAX_FLIPS, f"{len(flips)} of {SENTENCES} greedy outputs differ: {flips}"
    assert worst < SCORE_TOLERANCE, f"log-probabilities differ by {worst:.2e} per token"
    limits = [int((len(src) + 1) * ec.max_len_ratio) + ec.max_len_offset for src in sources]
    ended = sum(len(h.tokens) < limit for h, limit in zip(ours, limits))
    assert ended > 0  # some outputs end with EOS, not only at the length limit
    print(f"greedy: {SENTENCES - len(flips)}/{SENTENCES} identical, {ended} ended by EOS, score Δ ≤ {worst:.1e}/token")


def test_ct2_beam_search_ranks_as_ours(exported, sentences):
    """Beam search: CTranslate2 collects the same finished hypotheses; we rank them by the GNMT penalty."""
    from translate.decoding.ct2 import CT2Model
    from translate.decoding.ct2_export import export_dir

    model, tokenizer, _, _ = load_run(exported, "best", "cpu")
    sources = tokenizer.encode(sentences[:20])
    options = DecodingOptions(beam_size=4, n_best=2, length_penalty=0.6)
    with torch.no_grad():
        ours = translate_ids(model, sources, BOS, EOS, options)
        theirs = CT2Model(export_dir(exported), "cpu").translate_ids(sources, options)
    assert len(theirs) == len(ours) == 2 * len(sources)
    best_same = sum(a.tokens == b.tokens for a, b in zip(ours[::2], theirs[::2]))
    assert best_same >= len(sources) - 1, f"best hypotheses: {best_same} of {len(sources)} identical"
    for a, b in zip(ours, theirs):
        if a.tokens == b.tokens:
            assert abs(a.normalized - b.normalized) < SCORE_TOLERANCE * (len(a.tokens) + 1)
    print(f"beam 4: best hypothesis identical for {best_same}/{len(sources)}")


def test_translate_engine_ct2_keeps_lines(exported, sentences):
    from translate.decoding.ct2 import CT2Model
    from translate.decoding.ct2_export import export_dir

    lines = [sentences[0], "", sentences[1], "   ", sentences[2]]
    stdin = "\n".join(lines) + "\n"
    done = _cli("translate", f"run={exported}", "engine=ct2", stdin=stdin)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines) and out[1] == out[3] == ""
    engine = CT2Model(export_dir(exported), "cpu")
    expected = translate_texts(engine, engine.tokenizer, [sentences[i] for i in range(3)], DecodingOptions())
    assert [out[0], out[2], out[4]] == expected and all(expected)


def test_translate_engine_ct2_without_export_says_how_to_make_it(exported):
    line = _one_error_line(_cli("translate", f"run={exported}", "engine=ct2", "quantization=int16"))
    assert line == (
        f"error: {exported / 'ct2-int16'}: no CTranslate2 export here; make one first: "
        f"make export RUN={exported} quantization=int16"
    )


def test_export_of_other_checkpoint_is_not_used_silently(exported):
    from translate.decoding.ct2 import load_export

    with pytest.raises(ConfigError, match="exported from checkpoint best, not eval.checkpoint=last; pass"):
        load_export(exported, "none", OmegaConf.structured(EvalConfig(checkpoint="last")))


def test_rnn_run_is_refused_in_one_line(exported, tmp_path):
    rnn_run = tmp_path / "rnn"
    rnn_run.mkdir()
    shutil.copy(exported / "tokenizer.model", rnn_run)
    ckpt = load_checkpoint(exported / "best.pt")
    small = ModelConfig(name="rnn_attention", enc_layers=1, dec_layers=1, emb_dim=16, hidden_dim=16, attention_dim=16)
    ckpt["config"]["model"] = OmegaConf.to_container(OmegaConf.structured(small))
    ckpt["model"] = build_model(small, ckpt["vocab_size"]).state_dict()
    ckpt.pop("ema", None)  # the trained run's moving average is of the other model
    save_checkpoint(ckpt, rnn_run / "best.pt")
    line = _one_error_line(_cli("export", f"run={rnn_run}"))
    assert line == (
        "error: model rnn_attention cannot be exported: CTranslate2 has no RNN specification; export a transformer run"
    )
    assert sorted(p.name for p in rnn_run.iterdir()) == ["best.pt", "tokenizer.model"]


def test_int8_export_writes_loads_and_replaces_atomically(exported, sentences):
    from translate.decoding.ct2 import CT2Model
    from translate.decoding.ct2_export import export_run

    first = export_run(exported, "best", "int8")
    assert first == exported / "ct2-int8"
    files = {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.model", "export.json"}
    assert {p.name for p in first.iterdir()} == files
    assert json.loads((first / "export.json").read_text())["quantization"] == "int8"
    # int8 weights (the float32 position table, 1024 × d_model, stays as it is)
    assert (first / "model.bin").stat().st_size < 0.75 * (exported / "ct2" / "model.bin").stat().st_size
    engine = CT2Model(first, "cpu")
    out = translate_texts(engine, engine.tokenizer, sentences[:10], DecodingOptions())
    assert len(out) == 10 and all(isinstance(t, str) for t in out)

    before = (first / "model.bin").stat().st_ino
    assert export_run(exported, "best", "int8") == first  # again: the new directory replaces the old whole
    assert (first / "model.bin").stat().st_ino != before
    assert not [p.name for p in exported.iterdir() if p.name.startswith(".ct2")]


def test_post_norm_untied_transformer_exports_exactly(exported, sentences, tmp_path):
    """The other layout: post-LN (no final norms, norm after each residual sum), separate target embedding and
    output layer; untrained weights, so only the mapping is tested."""
    from translate.decoding.ct2 import CT2Model
    from translate.decoding.ct2_export import export_run

    run = tmp_path / "post_norm"
    run.mkdir()
    shutil.copy(exported / "tokenizer.model", run)
    ckpt = load_checkpoint(exported / "best.pt")
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), ckpt["config"]["model"])
    cfg.pre_norm, cfg.tie_embeddings = False, False
    ckpt["config"]["model"] = OmegaConf.to_container(cfg)
    torch.manual_seed(0)
    ckpt["model"] = build_model(cfg, ckpt["vocab_size"]).state_dict()
    ckpt.pop("ema", None)  # the trained run's moving average is of the other model
    save_checkpoint(ckpt, run / "best.pt")
    with pytest.raises(UserError):
        export_run(run, "last")  # no last.pt in this run

    assert export_run(run) == run / "ct2"
    model, tokenizer, _, _ = load_run(run, "best", "cpu")
    sources = tokenizer.encode(sentences[:20])
    options = DecodingOptions(max_len_ratio=1.0, max_len_offset=2, beam_size=1)
    with torch.no_grad():
        ours = translate_ids(model, sources, BOS, EOS, options)
        theirs = CT2Model(run / "ct2", "cpu").translate_ids(sources, options)
        flips, worst = _compare(model, sources, ours, theirs, 1.0, 2)
    assert len(flips) <= 1 and worst < SCORE_TOLERANCE
    print(f"post-LN, untied: {len(sources) - len(flips)}/{len(sources)} identical, score Δ ≤ {worst:.1e}/token")


def test_benchmark_decodes_with_each_engine(exported, tmp_path):
    """make bench's decoding rows for our search and the CTranslate2 exports: same test split, BLEU beside speed."""
    out = tmp_path / "bench"
    shutil.rmtree(exported / "ct2-int8", ignore_errors=True)
    command = [sys.executable, "scripts/benchmark.py", str(exported), "--train", "--engines", "torch", "ct2"]
    command += ["ct2-int8", "--beams", "1", "2", "--repeats", "1", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["decode"]
    assert [r["engine"] for r in rows] == ["torch", "ct2", "ct2-int8"]
    assert (exported / "ct2-int8" / "model.bin").exists()  # made by the benchmark when missing
    for row in rows:
        for beam in ("beam1", "beam2"):
            assert row[beam]["sentences_per_s"] > 0 and row[beam]["peak_rss_mib"] > 50 and 0 <= row[beam]["bleu"] <= 100
    # greedy CTranslate2 fp32 decodes as ours (test_ct2_greedy_output_is_our_greedy_output): the same BLEU here
    assert abs(rows[0]["beam1"]["bleu"] - rows[1]["beam1"]["bleu"]) < 1.0
    assert "| ct2-int8 |" in out.with_suffix(".md").read_text()
