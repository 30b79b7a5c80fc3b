"""scripts/benchmark.py on a tiny model and a tiny trained run: real processes, real numbers, both files written."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import SMALL_DATA, SMALL_MODELS

from translate.runtime.allocator import find_tcmalloc
from translate.runtime.device import native_bf16
from translate.training.run import train

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script(multi30k_dir, small_cfg, tmp_path):
    run = tmp_path / "run"
    train(small_cfg("rnn_attention", "trainer.max_steps=2", "trainer.valid_every=2", "trainer.batch_tokens=800"), run)
    setting = " ".join(
        [*SMALL_DATA, *SMALL_MODELS["transformer"], f"data.tokenizer.cache_dir={tmp_path.parent / 'tokenizers'}"]
    )
    out = tmp_path / "bench"
    # bf16 where the CPU has it in hardware; emulated (an AVX2-only host) it is 40x slower than fp32
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    args = [
        "--train",
        setting,
        f"TRANSLATE_MALLOC=system {setting} trainer.precision={precision} batching=random",  # env, then overrides
        "--train-steps",
        "2",
        "--warmup",
        "1",
    ]
    args += ["--repeats", "1", "--beams", "1", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", str(run), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["machine"]["peak_gflops"]["float32"] > 0 and report["machine"]["peak_gflops"]["bfloat16"] > 0
    fp32, bf16 = report["train"]
    assert fp32["precision"] == "fp32" and bf16["precision"] == precision
    # each measuring process reads its own allocator: tcmalloc where installed, glibc's when the setting says so
    assert fp32["allocator"].startswith("tcmalloc" if find_tcmalloc() else "glibc malloc")
    assert bf16["allocator"] == "glibc malloc (TRANSLATE_MALLOC=system)"
    for row in (fp32, bf16):
        assert row["train_tokens_per_s"] > 0 and row["peak_rss_mib"] > 50 and 0 < row["mfu"] < 1
        assert 0 <= row["target_padding"] < 1
    # FLOPs are counted, not assumed: the same model costs the same per token in either precision (±padding-free sample)
    assert (
        fp32["gflops_per_token"] > 0
        and abs(fp32["gflops_per_token"] - bf16["gflops_per_token"]) / fp32["gflops_per_token"] < 0.5
    )
    (decoded,) = report["decode"]
    assert (
        decoded["model"] == "rnn_attention"
        and decoded["beam1"]["sentences_per_s"] > 0
        and decoded["beam2"]["tokens_per_s"] > 0
    )
    assert "| rnn_attention (" in out.with_suffix(".md").read_text() and "MFU" in out.with_suffix(".md").read_text()
