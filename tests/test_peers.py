"""make bench-peers for real: JoeyNMT 2.3 installed into its own virtual environment, trained and decoding beside
this project on real Multi30k with the same tokenizer, in one run (a few updates and sentences)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # installs JoeyNMT and trains both toolkits

ROOT = Path(__file__).resolve().parents[1]


def test_bench_peers_side_by_side(multi30k_dir, tmp_path):
    work, out = tmp_path / "work", tmp_path / "peers"
    command = [sys.executable, "scripts/bench_peers.py", "--updates", "20", "--sentences", "30", "--no-fp32"]
    command += ["--models", "transformer", "--work", str(work), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    peer, ours = report["rows"]
    assert (peer["tool"], ours["tool"]) == ("JoeyNMT 2.3", "translate") and ours["precision"] in ("bf16", "fp32")
    for row in (peer, ours):
        assert row["train_tokens_per_s"] > 0 and row["train_peak_mib"] > 100
        for beam in ("beam1", "beam5"):
            assert row[beam]["sentences_per_s"] > 0 and 0 <= row[beam]["bleu"] <= 100
    assert ours["ratios"]["train_tokens_per_s"] == round(ours["train_tokens_per_s"] / peer["train_tokens_per_s"], 3)
    # JoeyNMT itself trained the 20 updates, on our SentencePiece pieces, and decoded the 30 sentences
    log = (work / "joeynmt_transformer" / "train.log").read_text()
    assert "Training ended since maximum num. of updates 20 was reached" in log
    pieces = (work / "data" / "vocab.txt").read_text().splitlines()
    assert len(pieces) == 8000 and (work / "joeynmt_transformer" / "trg_vocab.txt").exists()
    assert len((work / "joeynmt_transformer_beam5.test").read_text().splitlines()) == 30
    text = out.with_suffix(".md").read_text()
    assert report["host"]["cpu"] in text and "× JoeyNMT" in text and "trainer.precision=auto` chose" in text
