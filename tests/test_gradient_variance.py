"""scripts/gradient_variance.py on tiny attention RNNs: a soft scorer's gradient has no sampling noise and a hard
attention's has, the moving-average baseline is left as it was, and α's entropy is read from the scorer's energies."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_attention_rnn

from translate.data.batching import collate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gradient_variance.py"
spec = importlib.util.spec_from_file_location("gradient_variance", SCRIPT)
gradient_variance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gradient_variance)

V = 40
CFG = SimpleNamespace(trainer=SimpleNamespace(label_smoothing=0.1, loss_chunk=5))


def _model(attention, dropout=0.1, **extra):
    return tiny_attention_rnn(attention, V, dropout=dropout, **extra)


def _batches(count=2):
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(4, V, (n,), generator=g).tolist()  # noqa: E731
    sentences = lambda extra: [ids(extra + i) for i in range(5)]  # noqa: E731
    return [collate(sentences(4), sentences(3), list(range(5))) for _ in range(count)]


def test_a_soft_scorer_has_no_sampling_noise_and_a_hard_attention_has():
    batches = _batches()
    soft = gradient_variance.measure(_model("additive"), batches, 3, CFG, dropout=False)
    assert soft["all"]["sampling"] == pytest.approx(0.0, abs=1e-9) and soft["all"]["mean_grad_sq"] > 0
    hard_model = _model("hard")
    before = {name: b.clone() for name, b in hard_model.named_buffers()}
    hard = gradient_variance.measure(hard_model, batches, 3, CFG, dropout=False)
    assert hard["all"]["sampling"] > 1e-3 and hard["attention"]["sampling"] > 1e-3
    assert all(torch.equal(b, before[name]) for name, b in hard_model.named_buffers())  # the baseline put back
    as_trained = gradient_variance.measure(_model("additive"), batches, 3, CFG, dropout=True)
    assert as_trained["all"]["total"] > 0  # dropout and two batches: the gradient varies
    dot = gradient_variance.measure(_model("dot", bidirectional=False), batches, 2, CFG, dropout=True)
    assert dot["attention"] is None and dot["all"]["total"] > 0  # a scorer without parameters of its own


def test_alignment_entropy_reads_the_energies_a_hard_attention_draws_from():
    batches = _batches()
    for attention in ("additive", "hard", "hard_gumbel", "local"):
        ratio = gradient_variance.alignment_entropy(_model(attention), batches)
        assert 0.5 < ratio <= 1.0 + 1e-6, attention  # freshly initialised energies: near uniform
    model = _model("hard")
    with torch.no_grad():
        model.attention.energy.energy.weight.normal_(0, 50.0)  # vᵀ large: α far from uniform
    assert gradient_variance.alignment_entropy(model, batches) < 0.9
    assert "scores" not in vars(model.attention.energy)  # the recording wrapper removed
