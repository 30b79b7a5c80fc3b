"""The training step's parts: the loss (from one log-softmax; fused with the output layer), the Adam kernels."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from translate.config.schema import ModelConfig, TrainerConfig
from translate.models import build_model
from translate.models.loss import linear_cross_entropy, smoothed_cross_entropy
from translate.runtime.device import heap_trimmer
from translate.training.optim import build_optimizer


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_cross_entropy_equals_torch(smoothing):
    logits = torch.randn(40, 25, dtype=torch.float64)
    target = torch.randint(1, 25, (40,))
    target[::6] = 0  # padding
    loss, nll = smoothed_cross_entropy(logits, target, smoothing, ignore_index=0)
    expected = F.cross_entropy(logits.float(), target, ignore_index=0, label_smoothing=smoothing, reduction="sum")
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(nll, F.cross_entropy(logits.float(), target, ignore_index=0, reduction="sum"), rtol=1e-5)


def test_smoothed_cross_entropy_gradient_equals_torch():
    logits = torch.randn(30, 12, requires_grad=True)
    target = torch.randint(0, 12, (30,))
    smoothed_cross_entropy(logits, target, 0.1, ignore_index=0)[0].backward()
    ours, logits.grad = logits.grad, None
    F.cross_entropy(logits, target, ignore_index=0, label_smoothing=0.1, reduction="sum").backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [7, 1024])  # chunks that do not divide the 45 targets, and one chunk
def test_fused_output_layer_and_loss_equal_the_unfused(smoothing, chunk):
    features = torch.randn(45, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 30, (45,))
    target[::4] = 0  # padding
    loss, nll = smoothed_cross_entropy(features @ weight.t(), target, smoothing, ignore_index=0)
    (2 * loss).backward()
    expected = loss, nll, features.grad, weight.grad
    features.grad = weight.grad = None
    fused_loss, fused_nll = linear_cross_entropy(features, weight, target, smoothing, ignore_index=0, chunk=chunk)
    (2 * fused_loss).backward()
    for ours, theirs in zip((fused_loss, fused_nll, features.grad, weight.grad), expected):
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-5, atol=1e-6)
    assert weight.grad.dtype == weight.dtype and not fused_nll.requires_grad
    with torch.no_grad():  # validation: the value alone, no gradient kept
        value = linear_cross_entropy(features, weight, target, smoothing, 0, chunk)[0]
    torch.testing.assert_close(value, fused_loss.detach())
    assert value.grad_fn is None


@pytest.mark.parametrize("name", ["rnn_attention", "transformer"])
def test_fused_loss_trains_a_tied_model_like_the_unfused(name):
    """Tied embeddings: the output layer's weight is the embedding, so its gradient has two sources."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            name=name,
            enc_layers=1,
            dec_layers=1,
            emb_dim=16,
            hidden_dim=24,
            attention_dim=8,
            d_model=16,
            heads=2,
            ff_dim=32,
            dropout=0.0,
        ),
        40,
    )
    src, tgt = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 5))
    tgt[0, 3:] = 0
    grads = []
    for fused in (False, True):
        features = model.features(src, src != 0, tgt).flatten(0, 1)
        if fused:
            loss = linear_cross_entropy(features, model.generator.weight, tgt.flatten(), 0.1, 0, chunk=4)[0]
        else:
            loss = smoothed_cross_entropy(model.generator(features), tgt.flatten(), 0.1, 0)[0]
        model.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert model.generator.weight is model.embedding.weight
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_fused_loss_under_bf16_autocast_stays_close():
    features, weight = torch.randn(64, 32), torch.randn(100, 32) * 0.2
    target = torch.randint(1, 100, (64,))
    expected = smoothed_cross_entropy(features @ weight.t(), target, 0.1, 0)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(features, weight, target, 0.1, 0, chunk=16)[0]
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=0)


def updated_weights(impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights before, weights after 5 Adam steps) of a small net on fixed data."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = build_optimizer(model, OmegaConf.structured(TrainerConfig(adam_impl=impl, lr=1e-2)))
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(32, 8)).pow(2).mean().backward()
        optimizer.step()
    return before, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_adam_kernels_agree():
    before, reference = updated_weights("for_loop")
    assert (reference - before).abs().max() > 1e-3  # the steps moved the weights
    for impl in ("foreach", "fused"):
        assert torch.allclose(updated_weights(impl)[1], reference, atol=1e-6), impl


def test_unknown_optimizer_settings_are_clear():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown trainer.adam_impl='fast'; choose fused, foreach or for_loop"):
        build_optimizer(model, OmegaConf.structured(TrainerConfig(adam_impl="fast")))
    with pytest.raises(ValueError, match="unknown trainer.optimizer='sgd'; choose adam"):
        build_optimizer(model, OmegaConf.structured(TrainerConfig(optimizer="sgd")))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_heap_trimmer_gives_freed_memory_back():
    def rss_mib() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    trim = heap_trimmer()
    trim()
    tensors = [torch.ones(16_000) for _ in range(4_000)]  # 64 kB each: heap, not mmap; 256 MB in all
    keep = tensors[-1]
    del tensors  # freed, but below `keep` on the heap: glibc keeps the pages
    before = rss_mib()
    trim()
    assert rss_mib() < before - 150, "malloc_trim should return the freed pages"
    assert keep.sum() == 16_000
