"""The training step's parts: the loss from one log-softmax, the Adam kernels, torch.compile."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from translate.config import TrainerConfig
from translate.trainer import build_optimizer, smoothed_cross_entropy


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
