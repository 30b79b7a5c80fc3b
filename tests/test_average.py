"""Numbered checkpoints and their average, on checkpoints built by hand (no training)."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from translate.config.schema import EvalConfig, ModelConfig, TokenizerConfig, TrainConfig
from translate.data.tokenizer import train_or_load
from translate.decoding.inference import load_run
from translate.evaluation.evaluator import evaluate
from translate.models import build_model
from translate.runtime.checkpoints import keep_numbered, numbered_checkpoints, save_checkpoint
from translate.training.averaging import average_run

ROOT = Path(__file__).resolve().parents[1]
WORDS = "ein eine der die das mann frau hund kind spielt läuft sitzt auf dem im park wasser roten blauen ball".split()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training leaves it: tokenizer, config, and step_100/200/300.pt of a tiny transformer."""
    run = tmp_path_factory.mktemp("run")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(300)]
    train_or_load(texts, TokenizerConfig(vocab_size=40, cache_dir="tok"), run.parent).save(run / "tokenizer.model")
    tiny = ModelConfig(name="transformer", d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1)
    cfg = OmegaConf.structured(TrainConfig(model=tiny))
    for i, step in enumerate((100, 200, 300)):
        torch.manual_seed(i)
        model = build_model(cfg.model, 40)
        ckpt = {
            "model": model.state_dict(),
            "step": step,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "vocab_size": 40,
            "epoch": i,
        }
        save_checkpoint(ckpt, run / f"step_{step}.pt")
    (run / "my.de").write_text("ein mann spielt\nder hund läuft im park\n")
    (run / "my.en").write_text("a man plays\nthe dog runs in the park\n")
    return run


def test_average_is_the_mean_of_the_newest_checkpoints(run_dir):
    path, steps = average_run(run_dir, last=2)
    assert path == run_dir / "averaged.pt" and steps == [200, 300]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # written atomically, no temporary left
    averaged = torch.load(path, weights_only=True)
    older, newer = (torch.load(run_dir / f"step_{s}.pt", weights_only=True) for s in (200, 300))
    assert averaged["step"] == 300 and averaged["epoch"] == 2 and averaged["averaged_steps"] == [200, 300]
    assert averaged["model"].keys() == newer["model"].keys()
    for name, tensor in averaged["model"].items():
        assert tensor.dtype == newer["model"][name].dtype
        torch.testing.assert_close(tensor, (older["model"][name] + newer["model"][name]) / 2, msg=name)
    assert not torch.equal(older["model"]["generator.weight"], newer["model"]["generator.weight"])


def test_evaluate_and_load_run_accept_the_average(run_dir):
    average_run(run_dir, last=3, out="avg3")
    model, _, cfg, ckpt = load_run(run_dir, "avg3")
    assert cfg.model.name == "transformer" and ckpt["averaged_steps"] == [100, 200, 300]
    parts = [torch.load(run_dir / f"step_{s}.pt", weights_only=True)["model"] for s in (100, 200, 300)]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, sum(p[name] for p in parts) / 3, msg=name)
    ec = OmegaConf.structured(
        EvalConfig(checkpoint="avg3", src=str(run_dir / "my.de"), ref=str(run_dir / "my.en"), beam_size=2)
    )
    result = evaluate(run_dir, ec)
    assert result["checkpoint"] == "avg3" and result["step"] == 300 and result["sentences"] == 2
    assert result["decoding"]["search"] == "beam2" and result["decoding"]["length_penalty"] == 0.6


def test_a_run_with_a_moving_average_averages_and_decodes_the_moving_averages(run_dir, tmp_path):
    """trainer.ema_decay > 0: each checkpoint's `ema` (an AveragedModel state_dict) is what is averaged and loaded."""
    ema_run = tmp_path / "ema_run"
    ema_run.mkdir()
    (ema_run / "tokenizer.model").write_bytes((run_dir / "tokenizer.model").read_bytes())
    for i, step in enumerate((100, 200)):
        ckpt = torch.load(run_dir / f"step_{step}.pt", weights_only=True)
        # weights unlike the model's, the same for tied names (embedding and generator share one tensor)
        ema = {f"module.{n}": t * (2 + i) + 1 if t.is_floating_point() else t for n, t in ckpt["model"].items()}
        ckpt["ema"] = {**ema, "n_averaged": torch.tensor(step)}
        save_checkpoint(ckpt, ema_run / f"step_{step}.pt")
    model, *_ = load_run(ema_run, "step_200")
    newest = torch.load(ema_run / "step_200.pt", weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, newest["ema"][f"module.{name}"]), name
    path, _ = average_run(ema_run, last=2)
    averaged = torch.load(path, weights_only=True)
    assert "ema" not in averaged  # the mean of the moving averages is the averaged checkpoint's weights
    parts = [torch.load(ema_run / f"step_{s}.pt", weights_only=True)["ema"] for s in (100, 200)]
    for name, tensor in averaged["model"].items():
        torch.testing.assert_close(tensor, (parts[0][f"module.{name}"] + parts[1][f"module.{name}"]) / 2, msg=name)


@pytest.mark.slow
def test_average_command_line(run_dir, tmp_path):
    def cli(*args):
        command = [sys.executable, "-m", "translate", "average", *args]
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )

    done = cli(f"run={run_dir}", "last=5", "out=cli")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {run_dir / 'cli.pt'}: the mean of 3 checkpoints, steps 100, 200, 300"
    assert "only 3 numbered checkpoints" in done.stderr
    done = cli(f"run={tmp_path}")
    assert done.returncode != 0
    assert (
        done.stderr.strip()
        == f"error: {tmp_path}: no step_<N>.pt checkpoints; train with trainer.keep_last=5 to keep them"
    )
    assert not (tmp_path / ".hydra").exists() and not list(Path(ROOT).glob("average.log"))


def test_trainer_keeps_the_newest_numbered_checkpoints(tmp_path):
    keep_last = 2

    def validate(step: int) -> None:  # what Trainer.validate does with checkpoints
        save_checkpoint({"step": step}, tmp_path / "last.pt")
        keep_numbered(tmp_path, step, keep_last)

    for step in (10, 20, 30):
        validate(step)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["step_20.pt", "step_30.pt"]
    assert [torch.load(p, weights_only=True)["step"] for p in numbered_checkpoints(tmp_path)] == [20, 30]
    validate(30)  # e.g. validated again after a resume: replaced, not duplicated
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["step_20.pt", "step_30.pt"]

    keep_last = 0
    validate(40)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["step_20.pt", "step_30.pt"]


@pytest.mark.slow
def test_simulate_ema_decays_between_kept_checkpoints(run_dir):
    """scripts/simulate_ema.py: e = w_100, then e = a·e + (1 − a)·w_s with a the product of the per-update decays
    since the previous checkpoint: the decay itself, or with --warmup the trainer's min(decay, (1 + t) / (10 + t))."""
    parts = {s: torch.load(run_dir / f"step_{s}.pt", weights_only=True)["model"] for s in (100, 200, 300)}
    for warmup in ([], ["--warmup"]):
        command = [sys.executable, "scripts/simulate_ema.py", str(run_dir), "0.99", "--out", "emasim_test", *warmup]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        simulated = torch.load(run_dir / "emasim_test.pt", weights_only=True)["model"]
        (run_dir / "emasim_test.pt").unlink()
        a = {100: 1.0, 200: 1.0}  # the products over updates 101 … 200 and 201 … 300
        for start in a:
            for t in range(start + 1, start + 101):
                a[start] *= (1 + t) / (10 + t) if warmup else 0.99  # warming up: (1 + t) / (10 + t) < 0.99 here
        for name, tensor in simulated.items():
            older = a[100] * parts[100][name] + (1 - a[100]) * parts[200][name]
            torch.testing.assert_close(tensor, a[200] * older + (1 - a[200]) * parts[300][name], msg=name)
