"""What a cluster needs besides torchrun: fp16 loss scaling, the scheduler's warning signal, the SLURM launcher."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_synthetic

from translate.runtime.checkpoints import load_checkpoint, restore_training
from translate.runtime.errors import ConfigError
from translate.runtime.signals import GracefulStop
from translate.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *tiny_synthetic(train_size=300, eval_size=8, max_len=8),
    "trainer.batch_tokens=300",
    "trainer.valid_every=2",
    "trainer.max_steps=2",
]


def tiny(tmp_path: Path, *extra: str):
    return compose_train([*TINY, f"data.tokenizer.cache_dir={tmp_path / 'tok'}", *extra])


def test_fp16_asked_on_a_cpu_is_a_clear_error_before_any_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.precision=fp16 needs a CUDA device \(this run: cpu\)"):
        Trainer(tiny(tmp_path, "trainer.precision=fp16", "trainer.device=cpu", "data.dir=/no/such/dir"), tmp_path)


@pytest.mark.slow
def test_the_grad_scaler_skips_an_overflowed_update_counts_it_and_is_checkpointed(tmp_path, monkeypatch):
    """fp16's GradScaler in the real loop (enabled on CPU here, where fp16 itself is refused): an update whose
    gradients overflow is skipped and counted, the loss scale halves, and last.pt keeps both."""
    trainer = Trainer(tiny(tmp_path, "trainer.max_steps=1"), tmp_path / "run")
    trainer.update.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    real = trainer.update.loss
    monkeypatch.setattr(trainer.update, "loss", lambda batch: (real(batch)[0] * float("inf"), real(batch)[1]))
    trainer.fit()
    assert trainer.state.skipped_steps == 1 and trainer.update.scaler.get_scale() == 512.0
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())  # not applied

    monkeypatch.setattr(trainer.update, "loss", real)
    trainer.tc.max_steps = 3
    trainer.fit()  # finite gradients: applied, the scale kept
    assert trainer.state.skipped_steps == 1 and trainer.update.scaler.get_scale() == 512.0
    assert not all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["scaler"]["scale"] == 512.0 and ckpt["train_state"]["skipped_steps"] == 1
    scaler = torch.amp.GradScaler("cpu")
    restore_training(ckpt, trainer.model, trainer.update.optimizer, trainer.update.scheduler, scaler=scaler)
    assert scaler.get_scale() == 512.0


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_sigusr1_stops_gracefully_then_hands_on_to_the_schedulers_handler():
    """submitit installs its requeue handler for SIGUSR1 before training starts; training takes the signal, saves,
    then calls that handler."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.requested and not calls  # not yet: last.pt first
            stop.hand_on()
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.slow
def test_the_slurm_launcher_composes_with_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from omegaconf import OmegaConf

    command = [sys.executable, "-m", "translate", "train", "hydra/launcher=slurm", "+experiment=bottleneck"]
    command += ["hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu", "--cfg", "hydra"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    launcher = OmegaConf.create(done.stdout).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (4, 4, "gpu")
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout > 0


@pytest.mark.slow
def test_two_slurm_tasks_train_as_two_ranks_through_submitit(tmp_path):
    """No SLURM here: two processes with the variables SLURM gives the tasks of a 2-task job; submitit turns them
    into torch.distributed's (rank, world size, rendezvous), and the tasks train as one data-parallel job."""
    pytest.importorskip("submitit")
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "trainer.threads=1", "model.dropout=0"]
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_JOB_NUM_NODES": "1"}
    slurm |= {"SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS_PER_NODE": "2"}
    tasks = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env |= {**slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        command = [sys.executable, "-m", "translate", "train", *overrides, f"hydra.run.dir={run_dir}"]
        tasks.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [task.communicate(timeout=300) for task in tasks]
    for task, (_, stderr) in zip(tasks, results):
        assert task.returncode == 0, stderr.decode()[-3000:]
    summary = (run_dir / "train_summary.json").read_text()
    assert '"ranks": 2' in summary
