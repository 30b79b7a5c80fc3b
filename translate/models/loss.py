"""The training loss: label-smoothed cross-entropy over the output layer's logits.

    smoothed_cross_entropy(logits, target, ε, pad)               from logits (N, V) already computed
    linear_cross_entropy(features, weight, target, ε, pad, chunk) the output layer and the loss fused,
                                                                   `chunk` targets at a time
    sequence_loss(model, batch, ε, pad, chunk)                    a teacher-forced batch through a model
    reinforce_term(…)                                             attention=hard in training: its REINFORCE and
                                                                   entropy terms, added to sequence_loss's loss

Both return (loss, nll) summed over non-padding targets, loss = (1-ε)·nll + ε·mean_v(-log p_v), the
value of F.cross_entropy(..., label_smoothing=ε, reduction="sum").  The fused form never holds the
(N, V) logits whole — with an 8k vocabulary and 4k targets per batch those are 130 MB per copy in
fp32, and autograd keeps several — so a training step needs hundreds of MB less memory
(docs/performance.md).
"""

import torch
import torch.nn.functional as F


def smoothed_sums(log_probs: torch.Tensor, target: torch.Tensor, smoothing: float, ignore_index: int):
    """log_probs (N, V), target (N,) -> (loss, nll) summed over targets != ignore_index."""
    keep = target != ignore_index
    nll = -log_probs.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    nll, uniform = nll.masked_fill(~keep, 0.0).sum(), uniform.masked_fill(~keep, 0.0).sum()
    return (1 - smoothing) * nll + smoothing * uniform, nll


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float, ignore_index: int):
    """logits (N, V), target (N,) -> (loss, nll) summed over targets != ignore_index, from one log-softmax."""
    loss, nll = smoothed_sums(F.log_softmax(logits.float(), dim=-1), target, smoothing, ignore_index)
    return loss, nll.detach()


class LinearCrossEntropy(torch.autograd.Function):
    """loss = Σ_i [(1-ε)·(-log p_i[y_i]) + ε·mean_v(-log p_i[v])],  p_i = softmax(W h_i), over non-ignored i.

    The forward pass walks the targets `chunk` at a time and computes the gradients there too:
    ∂loss/∂z_i = p_i - (1-ε)·onehot(y_i) - ε/V for the logits z_i = W h_i, so ∂/∂h_i = (∂/∂z_i) W and
    ∂/∂W = Σ_i (∂/∂z_i)ᵀ h_i.  Backward only scales them.  Matmuls follow autocast; softmax is fp32.
    features (N, D), weight (V, D), target (N,) -> loss, nll (0-dim, fp32).
    """

    @staticmethod
    def forward(ctx, features, weight, target, smoothing: float, ignore_index: int, chunk: int, grad_enabled: bool):
        want_grad = grad_enabled and any(ctx.needs_input_grad[:2])  # no gradients under torch.no_grad (validation)
        loss = features.new_zeros((), dtype=torch.float32)
        nll_sum = features.new_zeros((), dtype=torch.float32)
        grad_features = torch.empty_like(features) if want_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
        for start in range(0, features.shape[0], chunk):
            h, y = features[start : start + chunk], target[start : start + chunk]
            log_probs = F.log_softmax((h @ weight.t()).float(), dim=-1)  # (n, V)
            chunk_loss, chunk_nll = smoothed_sums(log_probs, y, smoothing, ignore_index)
            loss, nll_sum = loss + chunk_loss, nll_sum + chunk_nll
            if want_grad:
                grad_logits = log_probs.exp_().sub_(smoothing / log_probs.shape[1])
                grad_logits.scatter_add_(1, y.clamp(min=0).unsqueeze(1), log_probs.new_full((len(y), 1), smoothing - 1))
                grad_logits.masked_fill_((y == ignore_index).unsqueeze(1), 0.0)
                grad_features[start : start + chunk] = grad_logits.to(h.dtype) @ weight.to(h.dtype)
                grad_weight += (grad_logits.t().to(h.dtype) @ h).float()
        ctx.save_for_backward(grad_features, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        grad_features, grad_weight = ctx.saved_tensors
        grad_features = None if grad_features is None else grad_features * grad_loss.to(grad_features.dtype)
        grad_weight = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_features, grad_weight, None, None, None, None, None


def linear_cross_entropy(features, weight, target, smoothing: float, ignore_index: int, chunk: int = 1024):
    """features (N, D), weight (V, D), target (N,) -> (loss, nll): the output layer W h and smoothed_cross_entropy,
    fused and `chunk` targets at a time, so the (N, V) logits never exist whole."""
    return LinearCrossEntropy.apply(features, weight, target, smoothing, ignore_index, chunk, torch.is_grad_enabled())


def sentence_log_likelihood(generator, features, target, ignore_index: int, chunk: int) -> torch.Tensor:
    """log p(y|x) of each sentence, without gradient: features (B, T, D), target (B, T) -> (B,) fp32, summed over
    targets != ignore_index, through the output layer `chunk` targets at a time (all at once if 0)."""
    with torch.no_grad():
        flat, flat_target = features.flatten(0, 1), target.flatten().clamp(min=0)
        step, parts = chunk or max(1, flat.shape[0]), []
        for start in range(0, flat.shape[0], step):
            log_probs = F.log_softmax(generator(flat[start : start + step]).float(), dim=-1)
            parts.append(log_probs.gather(1, flat_target[start : start + step].unsqueeze(1)).squeeze(1))
        return torch.cat(parts).view_as(target).masked_fill(target == ignore_index, 0.0).sum(1)


def reinforce_term(model, scorer, features, target, policy: dict, ignore_index: int, chunk: int) -> torch.Tensor:
    """Hard attention's REINFORCE and entropy terms (`HardAttention.surrogate`, translate/models/hard_attention.py)
    for a batch: the reward log p(y|x,s) and the sums Σ_t log p(s_t|x), Σ_t H_t of each sentence, padding left out."""
    keep = target != ignore_index  # (B, T)
    log_prob, entropy = (policy[name].masked_fill(~keep, 0.0).sum(1) for name in ("log_prob", "entropy"))
    reward = sentence_log_likelihood(model.generator, features, target, ignore_index, chunk)
    return scorer.surrogate(reward, keep.sum(1), log_prob, entropy)


def sequence_loss(model, batch, smoothing: float, ignore_index: int, chunk: int, features=None):
    """A teacher-forced batch's (loss, nll), summed over its target tokens, through the model's features and
    generator (fused chunk by chunk when `chunk` > 0).  `features` replaces model.features (e.g. compiled).
    A model in training with hard attention (`sampled_attention`, attention=hard) adds its REINFORCE and entropy
    terms to the loss (`reinforce_term`); nll stays the cross-entropy's."""
    scorer = getattr(model, "sampled_attention", None) if model.training else None
    if scorer is not None:  # eager even where trainer.compile compiled model.features
        features, policy = model.features_and_policy(batch.src, batch.src_mask, batch.tgt_in)  # (B, T, D)
    else:
        features = (features or model.features)(batch.src, batch.src_mask, batch.tgt_in)
    flat, target = features.flatten(0, 1), batch.tgt_out.flatten()  # (N, D), (N,)
    if chunk:
        loss, nll = linear_cross_entropy(flat, model.generator.weight, target, smoothing, ignore_index, chunk)
    else:
        loss, nll = smoothed_cross_entropy(model.generator(flat), target, smoothing, ignore_index)
    if scorer is not None:
        loss = loss + reinforce_term(model, scorer, features, batch.tgt_out, policy, ignore_index, chunk)
    return loss, nll


class TrainingLoss(torch.nn.Module):
    """A model and its training loss as one module: forward(batch) -> (loss, nll) sums, through the model's
    `features` (or `features`, e.g. compiled) — what DistributedDataParallel wraps, so that its gradient
    synchronisation sees the whole training forward."""

    def __init__(self, model, smoothing: float, ignore_index: int, chunk: int, features=None):
        super().__init__()
        self.model, self.smoothing, self.ignore_index, self.chunk = model, smoothing, ignore_index, chunk
        self.compiled_features = features

    def forward(self, batch):
        features = self.compiled_features if self.model.training else None
        return sequence_loss(self.model, batch, self.smoothing, self.ignore_index, self.chunk, features)
