"""scripts/benchmark.py on a tiny model and a tiny trained run: real processes, real numbers, both files written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL_DATA, SMALL_MODELS, compose_train, tiny_synthetic

from translate.evaluation.tables import markdown_table
from translate.runtime.allocator import find_tcmalloc
from translate.runtime.device import cpu_flags, native_bf16
from translate.runtime.host import SPEED_FLAGS, describe_host, host_line
from translate.training.run import train
from translate.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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
    text = out.with_suffix(".md").read_text()
    assert "| rnn_attention (" in text and "MFU" in text
    assert text.startswith(f"Host: {report['machine']['cpu']} (") and report["machine"]["torch"] in text.splitlines()[0]


def test_markdown_tables_are_written_one_way():
    table = markdown_table(["run", "BLEU", "note"], [["rnn", "21.40", ""], ["transformer", 30.5, "best"]], align="lrc")
    assert table == "| run | BLEU | note |\n|---|---:|:---:|\n| rnn | 21.40 | |\n| transformer | 30.5 | best |"
    assert markdown_table(["a", "b"], []) == "| a | b |\n|---|---|"
    with pytest.raises(ValueError, match="a row of 1 cells"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [], align="lx")


def test_the_host_is_described_one_way():
    host = describe_host()
    assert host["cpu"] and host["cpus"] >= host["usable_cpus"] >= 1 and host["threads"] == torch.get_num_threads()
    assert host["flags"] == [flag for flag in SPEED_FLAGS if flag in cpu_flags()] and host["torch"] == torch.__version__
    assert bool(host["bf16_units"]) == native_bf16(torch.device("cpu"))
    assert host["allocator"].startswith("tcmalloc" if find_tcmalloc() else "glibc malloc")  # what the commands run on
    line = host_line(host)
    assert line.startswith(f"{host['cpu']} (") and f"torch {host['torch']}, {host['allocator']}" in line
    bare = {**host, "flags": [], "bf16_units": [], "cpus": 4, "usable_cpus": 1, "threads": 1, "memory_gib": None}
    assert f"{host['cpu']} (no AVX2; no bf16 units), 4 CPUs (1 usable), 1 threads, torch" in host_line(bare)


@pytest.mark.slow
def test_the_eager_loss_is_the_training_loss(tmp_path):
    """Updater.loss(batch, eager=True), the loss FLOPs are counted on (throughput.py): the same loss through the
    model's own features (compiled or not)."""
    trainer = Trainer(compose_train([*tiny_synthetic(64, 8, 8), "trainer.max_steps=1"]), tmp_path)
    batch = trainer.collate(trainer.epoch_batches()[0])
    losses = []
    for eager in (False, True):
        torch.manual_seed(0)  # the same dropout masks
        losses.append(trainer.update.loss(batch, eager=eager))
    trainer.close()
    torch.testing.assert_close(losses[0], losses[1])
