"""The Makefile: its environment target (`make train` and `make test` set up .venv first when it is missing or older
than pyproject.toml, and not otherwise; make -n: what make would run, without running it), and `make tensorboard`."""

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs make, builds environments

ROOT = Path(__file__).resolve().parents[1]
SETUP = "-m venv"


def _dry_run(directory: Path, *args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=directory, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["train", "test", "eval RUN=x", "compare"])
def test_environment_is_built_when_missing_or_stale_and_only_then(tmp_path, target):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    run = lambda: _dry_run(tmp_path, *target.split())  # noqa: E731

    assert SETUP in run()  # fresh clone: no environment yet
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    os.utime(tmp_path / "pyproject.toml", (1_000_000_000, 1_000_000_000))  # older than the environment
    assert SETUP not in run()
    os.utime(tmp_path / "pyproject.toml")  # edited after the environment was built
    os.utime(stamp, (1_000_000_000, 1_000_000_000))
    assert SETUP in run()
    out = run()
    assert "pip install" in out and out.index(SETUP) < out.index(".venv/bin/python -m", out.index("pip install"))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_always_rebuilds_and_takes_the_torch_requirement(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    out = _dry_run(tmp_path, "install", "TORCH=torch")
    assert SETUP in out and 'pip install --quiet "torch"' in out


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, read from /proc/net/tcp{,6}."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
                found.add(str(ipaddress.ip_address(b"".join(words))) if width == 32 else ".".join(map(str, words[0])))
    return found


@pytest.mark.skipif(shutil.which("make") is None or not Path("/proc/net/tcp").exists(), reason="needs make, Linux")
def test_tensorboard_listens_on_this_machine_only_unless_asked(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOST": "my-laptop"}  # shells export HOST as the machine's name: not a bind address
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "tensorboard", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"TensorBoard on http://localhost:{port}/ (runs/)"
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "tensorboard did not start"
            time.sleep(0.2)
        assert _listening(port) <= {"127.0.0.1", "::1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert "--host 0.0.0.0 --port 7000" in _dry_run(ROOT, "tensorboard", "HOST=0.0.0.0", "PORT=7000")
