"""translate/training/throughput.py and the trainer's callbacks: what every run reports of its speed (tokens/s, MFU,
peak memory) and how a benchmark measures through the trainer's own loop."""

import json

import pytest
import torch
from conftest import compose_train, tiny_synthetic
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import translate.training.throughput as throughput
from translate.config.schema import ModelConfig
from translate.data.batching import collate
from translate.models import build_model
from translate.runtime.device import autocast
from translate.training.trainer import Trainer, UpdateReport

CPU = torch.device("cpu")


@pytest.mark.parametrize("attention", ["hard", "additive"])
def test_counting_flops_changes_nothing_training_sees(attention):
    """The count runs forward and backward, and hard attention's loss updates its baseline: all on a copy, the
    random state forked, so a run that reports MFU trains exactly as one that does not."""
    torch.manual_seed(0)
    config = ModelConfig(name="rnn_attention", attention=attention, enc_layers=1, dec_layers=1, emb_dim=16,
                         hidden_dim=24, attention_dim=12)  # fmt: skip
    model = build_model(config, 40).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [collate([[5, 6, 7, 8]], [[9, 10, 11]], [0]), collate([[12, 13]], [[14, 15, 16, 17]], [1])]
    tc = compose_train([]).trainer
    rng = torch.get_rng_state()
    try:
        flops = throughput.flops_per_target_token(model, batches, tc, lambda: autocast(CPU, "fp32"))
    except AssertionError:  # hard attention: torch's FlopCounterMode cannot follow its no-grad pass (no MFU then)
        flops = None
    assert (flops is None and attention == "hard") or flops > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the baseline buffer included
    assert all(p.grad is None for p in model.parameters())


def test_the_matmul_peak_is_measured_once_per_host_and_a_forged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "PEAK_CACHE", tmp_path)
    measured = []
    monkeypatch.setattr(throughput, "measure_matmul_gflops", lambda *a: measured.append(a) or 123.5)
    assert throughput.matmul_peak_gflops(torch.float32, CPU) == 123.5
    (cached,) = tmp_path.glob("matmul_*.json")
    assert throughput.matmul_peak_gflops(torch.float32, CPU) == 123.5 and len(measured) == 1  # read back
    key = json.loads(cached.read_text())["key"]
    forged = [[1, 2], {"key": key, "gflops": "fast"}, {"key": key, "gflops": -1.0}, {"key": "elsewhere", "gflops": 9.0}]
    texts = [json.dumps(f) for f in forged] + [f'{{"key": "{key}", "gflops": NaN}}', "x" * (2 << 20)]
    for text in texts:  # each is measured again, not believed (and then cached right)
        cached.write_text(text)
        count = len(measured)
        assert throughput.matmul_peak_gflops(torch.float32, CPU) == 123.5 and len(measured) == count + 1


def test_a_real_matmul_peak_is_positive():
    assert throughput.measure_matmul_gflops(torch.float32, CPU, largest=512, repeats=2) > 0.1


@pytest.mark.slow
def test_every_run_logs_mfu_and_peak_memory_and_callbacks_see_each_update(tmp_path):
    cfg = compose_train([*tiny_synthetic(200, 8, 8), "trainer.max_steps=6", "trainer.log_every=3",
                         "trainer.valid_every=6", "trainer.max_minutes=0"])  # fmt: skip
    seen = []
    trainer = Trainer(cfg, tmp_path, callbacks=[lambda t, report: seen.append((t.state.step, report))])
    trainer.fit()
    trainer.close()
    assert [step for step, _ in seen] == [r.step for _, r in seen] == [1, 2, 3, 4, 5, 6]
    for _, report in seen:
        assert isinstance(report, UpdateReport) and 0 < report.tokens <= report.padded_tokens
        assert report.batch_seconds >= 0
    assert trainer.flops_per_token > 0 and trainer.peak_gflops > 0
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    mfu = [e.value for e in acc.Scalars("train/mfu")]
    assert len(mfu) == 2 and all(0 < v < 1 for v in mfu)
    assert all(e.value > 50 for e in acc.Scalars("train/peak_memory_mib"))
