"""Data parallel training for real: torchrun, 2 ranks × 1 thread on gloo, against one process."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_synthetic
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from translate.runtime.checkpoints import TrainState, load_checkpoint
from translate.runtime.ranks import one_log_per_job

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = [
    *tiny_synthetic(train_size=1200, eval_size=12, max_len=12),
    "model.dropout=0.0",  # dropout draws differ between one process and two: the sums are compared exactly
    "trainer.warmup_steps=4",
    "trainer.lr=1e-3",  # the weight tolerance below is half an Adam step at this rate
    "trainer.log_every=1",
    "trainer.valid_every=5",
    "trainer.max_minutes=0",
    "trainer.threads=1",
]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def settings(tmp: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.tokenizer.cache_dir={tmp / 'tok'}", *extra]


def train(tmp: Path, run_dir: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    command = [*launcher, "-m", "translate", "train", *settings(tmp, *extra), f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def losses(run_dir: Path) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 20 updates three ways: 2 ranks × 600 tokens; 1 rank × 1,200; 1 rank accumulating 2 × 600."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = {"2 ranks": tmp / "ranks2", "2B": tmp / "batch2x", "accumulate": tmp / "accumulate2"}
    train(tmp, out["2 ranks"], "trainer.batch_tokens=600", "trainer.max_steps=20", ranks=2)
    train(tmp, out["2B"], "trainer.batch_tokens=1200", "trainer.max_steps=20")
    train(tmp, out["accumulate"], "trainer.batch_tokens=600", "trainer.max_steps=20", "trainer.accumulate=2")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("other", ["2B", "accumulate"])
def test_two_ranks_of_b_tokens_equal_one_rank_of_2b_and_accumulating_two_of_b(runs, other):
    """Each step's batch is built at ranks × accumulate × batch_tokens and split into shares, so all three see the
    same sentences per update and the same steps per epoch; the gradients are summed by DDP's all-reduce, by one
    backward pass or by accumulation — the same update up to float rounding: losses within 1e-5 relative, weights
    after 20 updates within 5e-4 absolute (half an Adam step at lr 1e-3: Adam's step is lr-sized however small the
    gradient, so where a gradient is ~0 its rounding decides the step's sign; measured 1.0e-4)."""
    a, b = losses(runs["2 ranks"]), losses(runs[other])
    assert len(a) == len(b) == 20
    assert a == pytest.approx(b, rel=1e-5)
    x, y = (load_checkpoint(runs[name] / "last.pt")["model"] for name in ("2 ranks", other))
    for name, tensor in x.items():
        torch.testing.assert_close(tensor, y[name], rtol=0, atol=5e-4)
    summaries = [json.loads((runs[name] / "train_summary.json").read_text()) for name in ("2 ranks", other)]
    assert summaries[0]["ranks"] == 2 and summaries[1]["ranks"] == 1
    assert summaries[0]["epochs"] == summaries[1]["epochs"]  # the same steps per epoch
    assert summaries[0]["target_tokens"] == summaries[1]["target_tokens"]  # tokens/s sums the ranks


@pytest.mark.slow
def test_only_rank_0_writes_and_its_checkpoint_evaluates_in_one_process(runs):
    run_dir = runs["2 ranks"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert TrainState.from_checkpoint(load_checkpoint(run_dir / "last.pt")).step == 20
    assert len(load_checkpoint(run_dir / "last.pt")["train_state"]["rng"]["ranks"]) == 2
    done = subprocess.run(
        [sys.executable, "-m", "translate", "eval", f"run={run_dir}", "eval.probe_k=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BLEU" in done.stdout


@pytest.mark.slow
def test_one_log_per_job_rank_0s_with_the_world_size(runs):
    """Both ranks' Hydra open <run dir>/train.log; only rank 0 writes its INFO lines there."""
    lines = (runs["2 ranks"] / "train.log").read_text().splitlines()
    assert sum("done: best valid BLEU" in line for line in lines) == 1
    assert sum(" parameters on " in line for line in lines) == 1
    world = [line for line in lines if "world size" in line]
    assert len(world) == 1
    assert "world size 2 ranks, accumulate 1, batch_tokens 600: about 1,200 target tokens per update" in world[0]
    assert not any(line.startswith("[rank 1]") and "[INFO]" in line for line in lines)


def test_a_rank_other_than_0_logs_warnings_only_tagged_with_its_rank(monkeypatch, tmp_path):
    """one_log_per_job on rank 1 ($RANK, as torchrun sets it) with Hydra's train.log handler and format."""
    root, file = logging.getLogger(), logging.FileHandler(tmp_path / "train.log")
    file.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    saved = root.level, root.handlers[:]
    root.handlers[:], logger = [file], logging.getLogger("translate.training.run")
    root.setLevel(logging.INFO)
    monkeypatch.setenv("RANK", "1")
    try:
        one_log_per_job()
        one_log_per_job()  # again: one tag
        logger.info("done: not on rank 1")
        logger.warning("resuming with changed trainer settings")
        logger.error("failed")
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        file.close()
    assert (tmp_path / "train.log").read_text().splitlines() == [
        "[rank 1][translate.training.run][WARNING] - resuming with changed trainer settings",
        "[rank 1][translate.training.run][ERROR] - failed",
    ]


def test_rank_0_logs_as_configured(monkeypatch):
    root = logging.getLogger()
    levels = root.level, [(h, h.level, h.formatter) for h in root.handlers]
    monkeypatch.setenv("RANK", "0")
    one_log_per_job()
    assert (root.level, [(h, h.level, h.formatter) for h in root.handlers]) == levels


@pytest.mark.slow
def test_kill_9_of_every_rank_then_resume_equals_the_uninterrupted_run(runs, tmp_path):
    run_dir = tmp_path / "cut"
    command = [
        *TORCHRUN,
        "-m",
        "translate",
        "train",
        *settings(tmp_path, "trainer.batch_tokens=600", "trainer.max_steps=20"),
        f"hydra.run.dir={run_dir}",
    ]
    job = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "last.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # torchrun and both ranks at once
    job.wait()
    assert TrainState.from_checkpoint(load_checkpoint(run_dir / "last.pt")).step < 20
    resumed = [*command[:-1], f"resume={run_dir}"]
    done = subprocess.run(resumed, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    x, y = (load_checkpoint(d / "last.pt")["model"] for d in (runs["2 ranks"], run_dir))
    for name, tensor in x.items():
        assert torch.equal(tensor, y[name]), name


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_rank_that_dies_ends_the_job_with_an_error_not_a_hang(tmp_path):
    command = [
        *TORCHRUN,
        "-m",
        "translate",
        "train",
        *settings(tmp_path, "trainer.batch_tokens=600", "trainer.max_steps=100000"),
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "last.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    ranks = children(job.pid)
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)  # a hang would time out here
    assert job.returncode != 0 and "translate FAILED" in stderr


@pytest.mark.slow
def test_compiled_model_trains_under_ddp(tmp_path):
    """trainer.compile=true: torch.compile's graph of the model's features inside DistributedDataParallel."""
    compiled = ["trainer.batch_tokens=600", "trainer.max_steps=4", "trainer.compile=true"]
    train(tmp_path, tmp_path / "run", *compiled, ranks=2)
    assert TrainState.from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt")).step == 4
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "run"))
