"""What the server's tests share (tests/test_serve.py, tests/test_serve_bounds.py) besides the session fixture
`sweep` (tests/conftest.py: three small runs trained and evaluated): `translate serve` as a real process on
127.0.0.1."""

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

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("rnn", "rnn_attention", "transformer")


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
