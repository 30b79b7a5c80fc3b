"""`translate translate` end to end, on a Transformer trained for a few steps on a slice of Multi30k."""

import gzip
import json
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL_DATA, SMALL_MODELS, compose_train
from omegaconf import OmegaConf

from translate.config.schema import EvalConfig, ModelConfig
from translate.decoding.inference import load_run, translate_texts
from translate.decoding.options import DecodingOptions
from translate.decoding.sentences import split_into_sentences
from translate.evaluation.evaluator import evaluate
from translate.models import build_model
from translate.runtime.checkpoints import TrainState, load_checkpoint, save_checkpoint
from translate.training.run import train

pytestmark = pytest.mark.slow  # trains a Transformer, translates through the command

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "trainer.max_steps=6",
    "trainer.valid_every=3",
    "trainer.batch_tokens=1500",
    "trainer.warmup_steps=2",
    "trainer.keep_last=2",
]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(multi30k_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("translate") / "run"
    cache = f"data.tokenizer.cache_dir={run.parent / 'tokenizers'}"
    threads = torch.get_num_threads()
    try:
        train(compose_train([*SMALL_DATA, *SMALL_MODELS["transformer"], *STEPS, cache, "trainer.threads=1"]), run)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def sentences(multi30k_dir) -> list[str]:
    with gzip.open(multi30k_dir / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        return [next(f).strip() for _ in range(5)]


def _translate(*args, stdin: str = "", **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "translate", "translate", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, input=stdin, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, **kwargs
    )


def test_lines_in_lines_out(run_dir, sentences):
    lines = [sentences[0], sentences[1], "", sentences[2], "   ", sentences[3]]
    done = _translate(f"run={run_dir}", "eval.beam_size=3", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout.split("\n")
    assert out[-1] == "" and len(out[:-1]) == len(lines)
    assert out[2] == "" and out[4] == ""
    model, tokenizer, _, _ = load_run(run_dir)
    ec = DecodingOptions(beam_size=3)
    expected = translate_texts(model, tokenizer, [lines[i] for i in (0, 1, 3, 5)], ec, progress=False)
    assert [out[i] for i in (0, 1, 3, 5)] == expected
    assert ">" not in done.stderr  # no prompt unless stdin is a terminal
    assert not (ROOT / "translate.log").exists() and not (ROOT / ".hydra").exists()


def test_n_best_on_one_line_separated_by_tabs(run_dir, sentences):
    done = _translate(f"run={run_dir}", "eval.beam_size=4", "eval.n_best=3", stdin="\n".join(sentences[:2]) + "\n")
    assert done.returncode == 0, done.stderr
    assert [len(line.split("\t")) for line in done.stdout.splitlines()] == [3, 3]


def test_a_line_of_sentences_gives_one_line_of_their_translations_unless_split_sentences_is_off(run_dir, sentences):
    paragraph = " ".join(sentences[:3])
    assert split_into_sentences(paragraph, "de") == sentences[:3]
    stdin = f"{paragraph}\n\n{sentences[3]}\n"
    model, tokenizer, _, _ = load_run(run_dir)
    ec = DecodingOptions(beam_size=2)
    done = _translate(f"run={run_dir}", "eval.beam_size=2", stdin=stdin)
    assert done.returncode == 0, done.stderr
    each = translate_texts(model, tokenizer, sentences[:4], ec, progress=False)
    assert done.stdout.split("\n") == [" ".join(each[:3]), "", each[3], ""]
    done = _translate(f"run={run_dir}", "eval.beam_size=2", "eval.split_sentences=false", stdin=stdin)
    assert done.returncode == 0, done.stderr
    whole = translate_texts(model, tokenizer, [paragraph, sentences[3]], ec, progress=False)
    assert done.stdout.split("\n") == [whole[0], "", whole[1], ""]


def test_interactive_terminal_gets_a_prompt_and_each_line_at_once(run_dir, sentences):
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "translate", "translate", f"run={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    os.close(terminal)
    try:
        for sentence in sentences[:2]:  # each translation arrives before the next line is typed
            os.write(controller, sentence.encode() + b"\n")
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no translation within 120 s"
            assert proc.stdout.readline().endswith(b"\n")
        os.write(controller, b"\x04")  # Ctrl-D
        assert proc.wait(timeout=60) == 0
        assert "> " in proc.stderr.read().decode()
    finally:
        proc.kill()
        os.close(controller)


def test_average_then_attention_heatmap(run_dir, sentences, tmp_path):
    assert [p.name for p in sorted(run_dir.glob("step_*.pt"))] == ["step_3.pt", "step_6.pt"]
    done = subprocess.run(
        [sys.executable, "-m", "translate", "average", f"run={run_dir}", "last=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run_dir / "averaged.pt")["averaged_steps"] == [3, 6]

    png = tmp_path / "attention.png"
    done = _translate(
        f"run={run_dir}", "eval.checkpoint=averaged", "eval.beam_size=2", f"attention={png}", stdin=sentences[0] + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000

    done = _translate(f"run={run_dir}", f"attention={png}", stdin="\n".join(sentences[:2]) + "\n")
    assert done.returncode != 0
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"error: attention={png} draws one sentence; the input has 2 non-empty lines"
    )


def test_attention_of_the_plain_rnn_is_a_clear_error(run_dir, tmp_path):
    rnn_run = tmp_path / "rnn"
    rnn_run.mkdir()
    shutil.copy(run_dir / "tokenizer.model", rnn_run)
    ckpt = load_checkpoint(run_dir / "best.pt")
    ckpt["config"]["model"] = OmegaConf.to_container(
        OmegaConf.structured(ModelConfig(name="rnn", enc_layers=1, dec_layers=1, emb_dim=16, hidden_dim=16))
    )
    ckpt["model"] = build_model(
        ModelConfig(name="rnn", enc_layers=1, dec_layers=1, emb_dim=16, hidden_dim=16), ckpt["vocab_size"]
    ).state_dict()
    ckpt.pop("ema", None)  # the trained run's moving average is of the other model
    save_checkpoint(ckpt, rnn_run / "best.pt")
    png = tmp_path / "a.png"
    done = _translate(f"run={rnn_run}", f"attention={png}", stdin="Ein Hund.\n")
    assert done.returncode != 0 and not png.exists()
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: attention={png}: model rnn has no attention to draw; use an rnn_attention or transformer run"
    )


def test_decoding_tuned_on_the_validation_set(run_dir):
    """scripts/tune_decoding.py: each grid point's BLEU is what `evaluate` gives on valid; the best is chosen."""
    done = subprocess.run(
        [sys.executable, "scripts/tune_decoding.py", str(run_dir), "--beams", "1,3", "--alphas", "0,1.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((run_dir / "eval" / "decoding_on_valid.json").read_text())
    assert result["split"] == "valid" and result["sentences"] == 40
    assert result["step"] == TrainState.from_checkpoint(load_checkpoint(run_dir / "best.pt")).step
    assert [(r["beam_size"], r["length_penalty"]) for r in result["grid"]] == [(3, 0.0), (3, 1.5), (1, 0.0)]
    assert result["best"]["bleu"] == max(r["bleu"] for r in result["grid"])
    for row in result["grid"][1:]:
        settings = {"beam_size": row["beam_size"], "length_penalty": row["length_penalty"]}
        ec = OmegaConf.structured(EvalConfig(split="valid", probe_k=0, name="check", **settings))
        assert evaluate(run_dir, ec)["bleu"] == row["bleu"]
    assert f"eval.beam_size={result['best']['beam_size']}" in done.stdout

    tune = [sys.executable, "scripts/tune_decoding.py", str(run_dir), "--beams", "1", "--checkpoint", "last"]
    done = subprocess.run(tune, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "eval" / "decoding_on_valid_last.json").read_text())["checkpoint"] == "last"
    assert json.loads((run_dir / "eval" / "decoding_on_valid.json").read_text()) == result  # best.pt's grid kept

    # a second grid on the same weights adds its points to the first; the choice is over both
    tune = [sys.executable, "scripts/tune_decoding.py", str(run_dir), "--beams", "2", "--alphas", "0.6"]
    done = subprocess.run(tune, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    both = json.loads((run_dir / "eval" / "decoding_on_valid.json").read_text())
    assert [(r["beam_size"], r["length_penalty"]) for r in both["grid"]] == [(3, 0.0), (3, 1.5), (1, 0.0), (2, 0.6)]
    assert both["grid"][:3] == result["grid"] and both["best"]["bleu"] == max(r["bleu"] for r in both["grid"])

    done = subprocess.run(
        [sys.executable, "scripts/tune_decoding.py", str(run_dir / "missing")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1


def test_a_grid_of_other_weights_replaces_the_earlier_one(run_dir, tmp_path):
    """scripts/tune_decoding.py keeps an earlier grid's points only where they were tried on the same weights."""
    weights = tmp_path / "other.pt"  # its grid goes to eval/decoding_on_valid_other.json, no other test's file
    shutil.copy(run_dir / "best.pt", weights)
    out = run_dir / "eval" / "decoding_on_valid_other.json"
    tune = [sys.executable, "scripts/tune_decoding.py", str(run_dir), "--beams", "2", "--alphas", "0.6"]
    tune += ["--checkpoint", str(weights)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def grid() -> dict:
        done = subprocess.run(tune, cwd=ROOT, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(out.read_text())

    first = grid()
    (tried,) = first["grid"]
    # an earlier grid of the same weights: its other point stays, the point tried again is replaced
    earlier = {**first, "grid": [{**tried, "beam_size": 5, "length_penalty": 1.5, "bleu": 99.0}, {**tried, "bleu": -1}]}
    out.write_text(json.dumps(earlier))
    merged = grid()
    assert merged["grid"] == [earlier["grid"][0], tried] and merged["best"]["bleu"] == 99.0
    # averaged anew: another mean, so the earlier grid is not its own
    out.write_text(json.dumps({**earlier, "averaged_steps": [4, 6, 8]}))
    assert grid()["grid"] == [tried]
    out.unlink()
