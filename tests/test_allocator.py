"""The project's commands restart themselves on tcmalloc where it is installed (translate/runtime/allocator.py)."""

import os
import subprocess
import sys

import pytest
from conftest import tiny_synthetic

from translate.runtime.allocator import INSTALL_HINT, find_tcmalloc, malloc_environment, started_as_command


def test_only_the_projects_commands_restart():
    assert started_as_command(["python", "-m", "translate", "train", "model=rnn"])
    assert started_as_command(["/usr/bin/python3", "-u", "-m", "translate", "eval"])  # as torchrun starts ranks
    assert not started_as_command(["python", "-m", "pytest", "tests"])
    assert not started_as_command(["python", "scripts/benchmark.py", "-m", "translate", "train"])
    assert not started_as_command(["python", "-c", "import translate"])
    assert not started_as_command(["python", "-m"])
    assert started_as_command(["python", "-W", "ignore", "-X", "dev", "-m", "translate", "translate"])
    assert not started_as_command(["python", "-c", "0", "-m", "translate", "train"])
    assert started_as_command(["python", "-m", "translate.commands.train"])
    assert not started_as_command(["python", "-m", "translate", "report"])  # runs no model
    assert not started_as_command(["python", "-m", "translate"]) and not started_as_command(["python", "-m", "train"])


def test_child_environments_put_tcmalloc_first_or_take_it_out():
    base = {"LD_PRELOAD": "/x/libtcmalloc.so.4:/y/libfoo.so", "A": "1"}
    assert malloc_environment(base, None) == {"LD_PRELOAD": "/y/libfoo.so", "A": "1"}
    assert malloc_environment(base, "libtcmalloc_minimal.so.4")["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 /y/libfoo.so"
    assert base["LD_PRELOAD"] == "/x/libtcmalloc.so.4:/y/libfoo.so"  # a copy; this process's own is left alone


def train_log(tmp_path, name: str, **env) -> str:
    """train.log of two updates on the reversal task, started as a user would, with LD_PRELOAD unset."""
    run = tmp_path / name
    settings = [*tiny_synthetic(64, 8, 6), "trainer.max_steps=2", "trainer.valid_every=2", "trainer.max_minutes=0"]
    command = [sys.executable, "-m", "translate", "train", *settings, f"hydra.run.dir={run}"]
    environment = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "TRANSLATE_MALLOC")}
    done = subprocess.run(command, capture_output=True, text=True, env={**environment, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return (run / "train.log").read_text()


@pytest.mark.slow
def test_training_runs_on_tcmalloc_unless_told_not_to(tmp_path):
    if find_tcmalloc() is None:
        pytest.skip(f"tcmalloc is not installed here: {INSTALL_HINT}")
    assert "allocator tcmalloc (libtcmalloc" in train_log(tmp_path, "default")  # from the process's /proc/self/maps
    assert "allocator glibc malloc (TRANSLATE_MALLOC=system)" in train_log(
        tmp_path, "system", TRANSLATE_MALLOC="system"
    )
