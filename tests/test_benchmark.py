"""scripts/benchmark.py on a tiny trained run: real processes, real numbers, both files written."""

import json
import subprocess
import sys
from pathlib import Path

from translate.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script(multi30k_dir, small_cfg, tmp_path):
    run = tmp_path / "run"
    train(small_cfg("rnn_attention", "trainer.max_steps=2", "trainer.valid_every=2", "trainer.batch_tokens=800"), run)
    out = tmp_path / "bench"
    args = [
        "scripts/benchmark.py",
        str(run),
        "--train-steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--beams",
        "1",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["model"] == "rnn_attention" and row["train"]["train_tokens_per_s"] > 0
    assert row["beam1"]["sentences_per_s"] > 0 and row["beam2"]["tokens_per_s"] > 0 and row["beam2"]["peak_rss_mib"] > 50
    assert "| rnn_attention |" in out.with_suffix(".md").read_text()
