"""What the server's tests share (tests/test_serve.py, tests/test_serve_bounds.py): three small runs trained and
evaluated (the fixture `sweep`, once per module that imports it), and `translate serve` as a real
process on 127.0.0.1."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import OmegaConf

from translate.config.schema import EvalConfig
from translate.evaluation.evaluator import evaluate
from translate.training.run import train

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("rnn", "rnn_attention", "transformer")
STEPS = ["trainer.max_steps=40", "trainer.valid_every=40", "trainer.batch_tokens=1500", "trainer.warmup_steps=10"]


@pytest.fixture(scope="module", name="sweep")
def trained_sweep(tmp_path_factory, multi30k_dir) -> Path:
    """Three runs side by side, trained and evaluated, as one `make compare` leaves them."""
    root = tmp_path_factory.mktemp("sweep")
    cache = root.parent / "tokenizers"
    small = {
        "rnn": ["model=rnn", "model.emb_dim=32", "model.hidden_dim=48"],
        "rnn_attention": ["model=rnn_attention", "model.emb_dim=32", "model.hidden_dim=48", "model.attention_dim=32"],
        "transformer": ["model=transformer", "model.d_model=32", "model.heads=2", "model.ff_dim=64"]
        + ["model.enc_layers=2", "model.dec_layers=2"],
    }
    data = ["trainer.precision=fp32", "data.train_limit=1500", "data.valid_limit=20", "data.test_limit=20"]
    data += ["data.tokenizer.vocab_size=600", f"data.tokenizer.cache_dir={cache}"]
    for family in FAMILIES:
        run = root / family
        train(compose_train([*data, *small[family], *STEPS]), run)
        evaluate(run, OmegaConf.structured(EvalConfig(probe_per_k=2)))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`translate serve` as a process, its output in a file (a pipe nobody reads would fill and stall
    it); stopped (SIGTERM) when the test ends."""

    def __init__(self, runs: list[Path], *overrides: str):
        self.port = free_port()
        runs_list = ",".join(f"'{r}'" for r in runs)
        command = [sys.executable, "-m", "translate", "serve", f"runs=[{runs_list}]", f"port={self.port}", *overrides]
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server ended: {self.output()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start in 120 s")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method: str, path: str, body=None, headers=None, timeout=60):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(payload) if "json" in kind else payload, dict(response.getheaders())

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, body, **kw):
        return self.request("POST", "/v1/translate", body, **kw)

    def connect(self, timeout: float = 30) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def open_files(self) -> int:
        """The server's open file descriptors (Linux)."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self, timeout=60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def until(condition, seconds: float = 20.0) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
