"""Hard attention (translate/models/hard_attention.py): the REINFORCE estimator against the exact gradient on a case
small enough to enumerate, the straight-through Gumbel estimator beside it, seeded determinism, exact resume
(the baseline in the state_dict), the decoding contract (one-hot maps, deterministic greedy), the config."""

import io
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_train, tiny_attention_rnn
from omegaconf import OmegaConf

from translate.config.rules import check_config
from translate.config.schema import ModelConfig
from translate.decoding.search import greedy_search
from translate.models import build_model
from translate.models.attention import SCORERS, AdditiveAttention, build_attention
from translate.models.hard_attention import GumbelHardAttention, HardAttention, log_distribution
from translate.models.loss import TrainingLoss
from translate.runtime.errors import ConfigError

V = 40
HARD = ["hard", "hard_gumbel"]


def _config(attention, **extra):
    return ModelConfig(
        name="rnn_attention",
        enc_layers=1,
        dec_layers=1,
        attention=attention,
        emb_dim=16,
        hidden_dim=24,
        attention_dim=12,
        **extra,
    )


def _model(attention, seed=0, **extra):
    return tiny_attention_rnn(attention, V, seed, **extra)


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (4, 9), generator=g)
    src[1, 6:] = 0
    src[3, 2:] = 0
    tgt = torch.randint(4, V, (4, 8), generator=g)
    tgt[2, 5:] = 0
    return SimpleNamespace(src=src, src_mask=src != 0, tgt_in=tgt[:, :-1], tgt_out=tgt[:, 1:])


def _train(model, steps, optimizer=None, seed=None):
    """`steps` Adam updates on the tiny batch through the training loss -> the optimizer, the losses."""
    if seed is not None:
        torch.manual_seed(seed)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn, losses = TrainingLoss(model, 0.1, 0, chunk=5), []
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = loss_fn(_batch())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return optimizer, losses


# ---- the estimators on an enumerable case: 3 source positions, one step, reward f(c) = wᵀc − 5 ----------------

Q, S, N = 4, 3, 40_000


def _tiny():
    torch.manual_seed(0)
    energy = AdditiveAttention(Q, Q, 3)
    query, memory, mask = torch.randn(1, Q), torch.randn(1, S, Q), torch.ones(1, S, dtype=torch.bool)
    w = torch.randn(Q)
    return energy, query, memory, mask, lambda c: c @ w - 5.0  # a log-likelihood-like (negative) reward


def _expected_reward(energy, query, memory, mask, reward):
    """J = Σ_j α_j f(h_j), summed over the 3 positions: the exact objective."""
    log_alpha, _ = log_distribution(energy, query, energy.project_keys(memory), mask, None)
    return (log_alpha.exp()[0] * reward(memory[0])).sum()


def _rows(*tensors):
    return [t.expand(N, *t.shape[1:]) for t in tensors]


def test_reinforce_gradient_matches_the_exact_gradient_of_the_expected_reward():
    energy, query, memory, mask, reward = _tiny()
    params = list(energy.parameters())
    exact = torch.autograd.grad(_expected_reward(energy, query, memory, mask, reward), params)
    scorer = HardAttention(energy, reinforce_weight=1.0, entropy_weight=0.0).train()
    torch.manual_seed(1)
    query_n, memory_n, mask_n = _rows(query, memory, mask)
    context, weights, log_prob, entropy = scorer.sample(query_n, scorer.project_keys(memory_n), memory_n, mask_n)
    term = scorer.surrogate(reward(context).detach(), torch.ones(N), log_prob, entropy)
    estimate = torch.autograd.grad(-term / N, params)  # minimising the term ascends J
    flat_exact, flat_estimate = torch.cat([g.flatten() for g in exact]), torch.cat([g.flatten() for g in estimate])
    error = (flat_estimate - flat_exact).norm() / flat_exact.norm()
    assert error < 0.03, f"Monte-Carlo REINFORCE gradient off by {error:.3f} (relative)"
    assert torch.all(weights.sum(-1) == 1) and scorer.baseline_updates == 1


def test_entropy_bonus_is_the_exact_gradient_of_the_entropy():
    energy, query, memory, mask, _ = _tiny()
    scorer = HardAttention(energy, reinforce_weight=0.0, entropy_weight=1.0).train()
    context, _, log_prob, entropy = scorer.sample(query, scorer.project_keys(memory), memory, mask)
    log_alpha, _ = log_distribution(energy, query, energy.project_keys(memory), mask, None)
    exact = torch.autograd.grad(-(log_alpha.exp() * log_alpha).sum(), list(energy.parameters()))
    term = scorer.surrogate(torch.zeros(1), torch.ones(1), log_prob, entropy)
    for got, want in zip(torch.autograd.grad(-term, list(energy.parameters())), exact):
        torch.testing.assert_close(got, want)


def _energy_gradients(scorer, estimator, reward, query, memory, mask):
    """Per-sample gradients (N, S) of the estimator's objective with respect to the energies e (rows independent)."""
    energies, scores = [], scorer.energy.scores

    def keep(*args):
        e, allowed = scores(*args)
        e.retain_grad()
        energies.append(e)
        return e, allowed

    scorer.energy.scores = keep
    query_n, memory_n, mask_n = _rows(query, memory, mask)
    keys = scorer.project_keys(memory_n)
    if estimator == "gumbel":
        context, _ = scorer(query_n, keys, memory_n, mask_n)
        objective = reward(context).sum()
    else:
        context, _, log_prob, entropy = scorer.sample(query_n, keys, memory_n, mask_n)
        r = reward(context).detach()
        if estimator == "plain":  # no baseline
            objective = (r * log_prob).sum()
        else:
            objective = -scorer.surrogate(r, torch.ones(N), log_prob, entropy)
    objective.backward()
    del scorer.energy.scores
    return energies[0].grad


def test_gradient_variance_reinforce_against_straight_through_gumbel():
    """∂J/∂e_k = α_k (f_k − Σ_j α_j f_j) exactly; each estimator's bias and variance (summed over the 3 energies)."""
    energy, query, memory, mask, reward = _tiny()
    with torch.no_grad():
        log_alpha, _ = log_distribution(energy, query, energy.project_keys(memory), mask, None)
        alpha, f = log_alpha.exp()[0], reward(memory[0])
        exact = alpha * (f - (alpha * f).sum())
    measured = {}
    estimators = [("reinforce, no baseline", "plain", 1.0), ("reinforce, baseline", "baseline", 1.0)]
    estimators += [(f"gumbel ST, tau {tau}", "gumbel", tau) for tau in (1.0, 0.5)]
    for i, (name, estimator, tau) in enumerate(estimators):
        torch.manual_seed(10 + i)
        scorer = GumbelHardAttention(energy, tau) if estimator == "gumbel" else HardAttention(energy, 1.0, 0.0)
        grads = _energy_gradients(scorer.train(), estimator, reward, query, memory, mask)
        measured[name] = ((grads.mean(0) - exact).norm().item(), grads.var(0).sum().item())
    report = "; ".join(f"{n}: bias {b:.3f} variance {v:.3f}" for n, (b, v) in measured.items())
    report += f" (|exact gradient| {exact.norm():.3f})"
    print(report)
    for name in ("reinforce, no baseline", "reinforce, baseline"):
        assert measured[name][0] < 0.1 * exact.norm(), report  # unbiased: only Monte-Carlo error
    assert measured["reinforce, baseline"][1] < measured["reinforce, no baseline"][1] / 4, report
    assert measured["gumbel ST, tau 1.0"][1] < measured["reinforce, baseline"][1] / 2, report  # low variance ...
    assert measured["gumbel ST, tau 1.0"][0] > 0.1 * exact.norm(), report  # ... but biased


# ---- the model: determinism, resume, decoding contract, config ---------------------------------------------------


@pytest.mark.parametrize("attention", HARD)
def test_two_training_steps_from_one_seed_give_identical_weights(attention):
    runs = []
    for _ in range(2):
        model = _model(attention)
        _train(model, 2, seed=5)
        runs.append(model.state_dict())
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = _model(attention)
    _train(other, 2, seed=6)  # another seed samples other positions
    assert not all(torch.equal(runs[0][k], other.state_dict()[k]) for k in runs[0])


def test_resume_continues_exactly_with_the_baseline_in_the_state_dict():
    model = _model("hard")
    optimizer, _ = _train(model, 2, seed=5)
    assert int(model.state_dict()["attention.baseline_updates"]) == 2
    assert float(model.state_dict()["attention.baseline"]) < 0  # a log-likelihood per token
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, saved)
    _, straight = _train(model, 3, optimizer)

    def resumed(drop_baseline=False):
        saved.seek(0)
        ckpt = torch.load(saved)
        other = _model("hard", seed=99)
        if drop_baseline:  # a baseline that was not saved: a fresh one
            ckpt["model"]["attention.baseline"].zero_()
            ckpt["model"]["attention.baseline_updates"].zero_()
        other.load_state_dict(ckpt["model"])
        opt = torch.optim.Adam(other.parameters(), lr=1e-2)
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        return other, _train(other, 3, opt)[1]

    other, again = resumed()
    assert again == straight
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    assert resumed(drop_baseline=True)[1] != straight  # the buffer is what makes the continuation exact


def _one_hot_rows(weights, mask):
    """Each (…, S) row: sums to 1, one entry exactly 1, the rest exactly 0, never on padding."""
    assert torch.all(weights.sum(-1) == 1)
    assert torch.all((weights == 1).sum(-1) == 1) and torch.all((weights == 0).sum(-1) == weights.shape[-1] - 1)
    assert torch.all(weights.masked_select(~mask.unsqueeze(1).expand_as(weights)) == 0)


@pytest.mark.parametrize("attention", HARD)
def test_decoding_contract_one_hot_maps_and_deterministic_greedy(attention):
    model = _model(attention).eval()
    batch = _batch()
    src, mask, tgt = batch.src, batch.src_mask, batch.tgt_in
    with torch.no_grad():
        maps = model.attention_maps(src, mask, tgt)["alignment"]  # (B, T, S)
        full, weights = model(src, mask, tgt, return_attention=True)
        state, steps = model.encode(src, mask), []
        for t in range(tgt.shape[1]):
            logits, state = model.decode_step(state, tgt[:, t])
            steps.append(logits)
    assert maps.shape == (4, 7, 9)
    _one_hot_rows(maps, mask)
    torch.testing.assert_close(weights, maps)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    max_len = torch.full((4,), 12)
    first, second = (greedy_search(model, src, mask, 2, 3, max_len) for _ in range(2))
    assert [h.tokens for h in first] == [h.tokens for h in second]
    model.train()  # sampled positions: still one-hot, still never on padding
    with torch.no_grad():
        _one_hot_rows(model.attention_maps(src, mask, tgt)["alignment"], mask)


@pytest.mark.parametrize("attention", HARD)
def test_hard_attention_builds_through_the_config_rules_and_trains(attention):
    overrides = ["model=rnn_attention", f"model.attention={attention}", "model.emb_dim=16", "model.hidden_dim=24"]
    cfg = compose_train([*overrides, "model.attention_dim=12", "data.tokenizer.vocab_size=40"])
    check_config(cfg)
    assert attention in SCORERS
    model = build_model(cfg.model, V)
    kind = HardAttention if attention == "hard" else GumbelHardAttention
    assert isinstance(model.attention, kind) and isinstance(model.attention.energy, AdditiveAttention)
    assert (model.sampled_attention is model.attention) == (attention == "hard")
    _, losses = _train(model, 3, seed=0)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.hard_baseline_decay=1.0", "model.hard_baseline_decay=1.0 (must be in [0, 1)"),
        ("model.hard_entropy_weight=-0.1", "model.hard_entropy_weight=-0.1 (must be >= 0"),
        ("model.gumbel_temperature=0", "model.gumbel_temperature=0.0 (must be > 0"),
    ],
)
def test_bad_hard_attention_settings_are_named(override, named):
    cfg = compose_train(["model=rnn_attention", "model.attention=hard", override])
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_config(cfg)


def test_settings_reach_the_scorers():
    hard = build_attention("hard", 8, 8, 4, reinforce_weight=0.5, entropy_weight=0.2, baseline_decay=0.8)
    gumbel = build_attention("hard_gumbel", 8, 8, 4, temperature=0.3)
    assert (hard.reinforce_weight, hard.entropy_weight, hard.decay, gumbel.temperature) == (0.5, 0.2, 0.8, 0.3)
    cfg = OmegaConf.structured(_config("hard", hard_reinforce_weight=2.0, gumbel_temperature=0.5))
    assert build_model(cfg, V).attention.reinforce_weight == 2.0


def test_validation_adds_no_term_and_leaves_the_baseline_alone():
    model = _model("hard").eval()
    loss_fn, batch = TrainingLoss(model, 0.0, 0, chunk=0), _batch()
    with torch.no_grad():
        loss, nll = loss_fn(batch)
    torch.testing.assert_close(loss, nll)
    assert int(model.attention.baseline_updates) == 0
