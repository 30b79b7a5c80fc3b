"""The Transformer's position schemes (model.positions, translate/models/positions.py): step-by-step decoding equal to
teacher forcing, padding ignored, relative scores that depend on i − j only, inputs longer than any table, training,
and sinusoidal exactly as before the choice existed."""

import pytest
import torch
from conftest import SMALL_MODELS, compose_train, padded_batch
from omegaconf import OmegaConf

from translate.config.schema import ModelConfig, TrainConfig
from translate.decoding.search import greedy_search, source_limit
from translate.models import build_model
from translate.models.attention import scaled_dot_product_attention
from translate.models.positions import POSITIONS, ALiBi, Rotary, ShawKeys, T5Bias, layer_positions

V, BOS, EOS = 50, 2, 3
SCHEMES = list(POSITIONS)
RELATIVE = [s for s in SCHEMES if s != "sinusoidal"]
# small buckets and clip, so that sentences of ~10 tokens reach the log-spaced buckets and the clipped distances
TINY = dict(name="transformer", d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2)
TINY |= dict(t5_buckets=8, t5_max_distance=16, shaw_clip=3)


def _model(scheme, **changes):
    """A tiny Transformer; the learned tables (t5, shaw), which start at zero, made random so that they matter."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**(TINY | {"positions": scheme} | changes)), V)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "positions" in name:
                p.normal_()
    return model.eval()


def _batch(tgt_len=12):
    return padded_batch(V, tgt_len)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_step_by_step_decoding_equals_teacher_forcing(scheme):
    """The KV cache keeps each key at the position it was computed at; the new query sits at `start`."""
    model = _model(scheme)
    src, mask, tgt = _batch()
    with torch.no_grad():
        full = model(src, mask, tgt)
        state, steps = model.encode(src, mask), []
        for t in range(tgt.shape[1]):
            logits, state = model.decode_step(state, tgt[:, t])
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    # greedy search (incremental) picks at every step what the teacher-forced pass over its own output ranks first
    with torch.no_grad():
        hypotheses = greedy_search(model, src, mask, BOS, EOS, torch.full((4,), 12))
        for i, h in enumerate(hypotheses):
            n = int(mask[i].sum())
            tgt_in = torch.tensor([[BOS] + h.tokens])
            log_probs = torch.log_softmax(model(src[i : i + 1, :n], mask[i : i + 1, :n], tgt_in)[0], -1)
            expected = h.tokens + ([EOS] if len(h.tokens) < 12 else [])
            assert log_probs.argmax(-1).tolist()[: len(expected)] == expected
            score = log_probs[torch.arange(len(expected)), torch.tensor(expected)].sum().item()
            assert score == pytest.approx(h.score, abs=1e-4)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_source_padding_changes_nothing_and_attention_sums_to_one(scheme):
    model = _model(scheme)
    src, mask, tgt = _batch()
    wide = torch.cat([src, torch.zeros(4, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(src, mask, tgt), model(wide, wide != 0, tgt), atol=1e-5, rtol=1e-5)
        _, weights = model(src, mask, tgt, return_attention=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, tgt.shape[1]))
    assert torch.all(weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0)


@pytest.mark.parametrize("scheme", RELATIVE)
@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_self_attention_with_positions_sums_to_one_over_real_tokens(scheme, stack):
    """A layer's self-attention as the model computes it, its weights written out: rows sum to 1, padding (encoder)
    and the future (decoder) get exactly 0, and the fused kernel (float mask = bias, −∞ where masked) agrees."""
    model = _model(scheme)
    src, mask, tgt = _batch()
    layer = (model.encoder_layers if stack == "encoder" else model.decoder_layers)[1]
    positions = layer_positions(model.encoder_positions if stack == "encoder" else model.decoder_positions, 1)
    attn, causal = layer.self_attn, stack == "decoder"
    x = model.embedding(src if stack == "encoder" else tgt)
    allowed = mask[:, None, None, :] if stack == "encoder" else None
    here = torch.arange(x.shape[1])
    q, k, v = attn.project_q(x), attn.project_kv(x).k, attn.project_kv(x).v
    q, k = positions.rotate(q, here), positions.rotate(k, here)
    bias = positions.bias(q, here, here)
    with torch.no_grad():
        out, weights = scaled_dot_product_attention(q, k, v, allowed, causal, need_weights=True, bias=bias)
        fused, none = scaled_dot_product_attention(q, k, v, allowed, causal, bias=bias)
        bf16 = scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), allowed, causal, bias=bias)[0]
    assert none is None
    torch.testing.assert_close(fused, out)
    torch.testing.assert_close(bf16.float(), out, atol=5e-2, rtol=5e-2)  # the CPU's bf16 path: written out
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    if stack == "encoder":
        assert torch.all(weights.masked_select(~mask[:, None, None, :].expand_as(weights)) == 0)
    else:
        assert torch.all(weights.triu(1) == 0)
    plain = scaled_dot_product_attention(attn.project_q(x), attn.project_kv(x).k, v, allowed, causal, need_weights=True)
    assert not torch.allclose(plain[1], weights, atol=1e-3)  # the positions do change the weights


@pytest.mark.parametrize("scheme", RELATIVE)
def test_scores_depend_only_on_the_distance(scheme):
    """Shifting every query and key position by one constant leaves the scores as they were (translation
    invariance), while the scores do change with the distance."""
    torch.manual_seed(3)
    q, k = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    queries, keys = torch.arange(7), torch.arange(7)
    if scheme == "rotary":
        scheme_ = Rotary(8)

        def scores(shift):
            return scheme_.rotate(q, queries + shift) @ scheme_.rotate(k, keys + shift).transpose(-1, -2)

        for shift in (1, 5, 300):
            torch.testing.assert_close(scores(shift), scores(0), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-3)
        # one query and one key vector at every position: scores constant along each diagonal i − j, not elsewhere
        q, k = q[:, :, :1].expand_as(q), k[:, :, :1].expand_as(k)
        s = scores(0)
        torch.testing.assert_close(s[..., 1:, 1:], s[..., :-1, :-1])
        assert not torch.allclose(s[..., 0, 1:], s[..., 0, :-1], atol=1e-3)
        return
    torch.manual_seed(4)
    scheme_ = {"alibi": ALiBi(4), "t5": T5Bias(4, 8, 16), "shaw": ShawKeys(8, clip=3)}[scheme]
    with torch.no_grad():
        for p in scheme_.parameters():
            p.normal_()
        bias = scheme_.bias(q, queries, keys)
        for shift in (1, 5, 3000):
            assert torch.equal(scheme_.bias(q, queries + shift, keys + shift), bias)
        if scheme != "shaw":  # q-independent: a Toeplitz matrix per head, constant along each diagonal
            assert torch.equal(bias[..., 1:, 1:], bias[..., :-1, :-1]) and bias.shape == (4, 7, 7)
            assert not torch.equal(bias[..., 0, 1:], bias[..., 0, :-1])
        # the one new query of a decoding step at `start` gets the row of the full pass
        assert torch.equal(scheme_.bias(q[:, :, 5:6], queries[5:6], keys[:6]), bias[..., 5:6, :6])


def test_alibi_slopes_and_t5_buckets_are_the_papers():
    torch.testing.assert_close(ALiBi(8).slopes, torch.tensor([2.0**-i for i in range(1, 9)]))
    bidirectional, causal = T5Bias(2, 32, 128, bidirectional=True), T5Bias(2, 32, 128, bidirectional=False)
    relative = torch.arange(-300, 301)  # j − i
    b, c = bidirectional.bucket(relative), causal.bucket(relative)
    assert b[300] == 0 and b[301] == 16 + 1 and b[299] == 1  # after: the upper half
    assert b.max() == 31 and b.min() == 0 and c.max() == 31 and torch.all(c[300:] == 0)  # future: bucket 0
    past = c[:301].flip(0)  # distances 0, 1, …, 300 into the past
    assert past[:16].tolist() == list(range(16)) and torch.all(past[1:] >= past[:-1]) and past[128] == 31
    assert torch.all(b[:301].flip(0)[1:] >= b[:301].flip(0)[:-1]) and b[:301].flip(0)[8:].min() >= 8


@pytest.mark.parametrize("scheme", SCHEMES)
def test_trains_a_few_steps_with_finite_loss(scheme):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**(TINY | {"positions": scheme})), V).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(2)
    src = torch.randint(4, V, (16, 8))
    tgt = torch.cat([torch.full((16, 1), BOS), src.flip(1), torch.full((16, 1), EOS)], 1)  # reversal
    losses = []
    for _ in range(12):
        logits = model(src, src != 0, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        if scheme in ("t5", "shaw"):
            assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "positions" in n)
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sequences_longer_than_any_table(scheme):
    """Relative schemes have no table: a source and target longer than the 1024-position cap still run (the
    cap stays, for search and inference, as for every model); sinusoidal refuses past its table."""
    model = _model(scheme, enc_layers=1, dec_layers=1)
    assert model.max_positions == 1024 and source_limit(model) == 1023
    torch.manual_seed(5)
    src, tgt = torch.randint(4, V, (1, 1100)), torch.randint(4, V, (1, 1030))
    with torch.no_grad():
        if scheme == "sinusoidal":
            with pytest.raises(ValueError, match="exceeds the 1024 supported"):
                model(src, src != 0, tgt)
            return
        logits = model(src, src != 0, tgt)
        assert logits.shape == (1, 1030, V) and torch.isfinite(logits).all()
        state = model.encode(src, src != 0)  # and decoding steps past the first 1024 positions
        for t in range(3):
            step, state = model.decode_step(state, tgt[:, t])
            torch.testing.assert_close(step, logits[:, t], atol=1e-5, rtol=1e-5)


NEW_KEYS = ("positions", "t5_buckets", "t5_max_distance", "shaw_clip")
# the tied model of tests/test_models.py before model.positions existed (commit 32d1374): its logits on _batch
BEFORE = ([-3.08634, -0.595915, 1.004506, -1.831504, 0.279928], [1.771836, 1.113049, -0.174296, 0.181183, -0.896906])
BEFORE_SUMS = (102.8775, 1114.5353)


def test_sinusoidal_is_the_model_of_before():
    """The default builds the same parameters and computes the same logits as before the choice existed: as an explicit
    `positions: sinusoidal`, as a config without the key, and as the figures written down then."""
    cfg = dict(name="transformer", d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2)
    old = OmegaConf.to_container(OmegaConf.structured(ModelConfig(**cfg)))
    old = OmegaConf.create({k: v for k, v in old.items() if k not in NEW_KEYS})  # an older run's: no `positions`
    models = []
    for model_cfg in (ModelConfig(**cfg), ModelConfig(**cfg, positions="sinusoidal"), old):
        torch.manual_seed(0)
        models.append(build_model(model_cfg, V).eval())
    torch.manual_seed(1)
    src = torch.randint(4, V, (4, 9))
    src[1, 6:] = 0
    src[3, 2:] = 0
    tgt = torch.randint(4, V, (4, 7))
    with torch.no_grad():
        logits = [m(src, src != 0, tgt) for m in models]
    first = models[0].state_dict()
    assert not [k for k in first if "positions" in k] and models[0].encoder_positions is None
    for m, out in zip(models[1:], logits[1:]):
        assert first.keys() == m.state_dict().keys() and all(torch.equal(first[k], m.state_dict()[k]) for k in first)
        assert torch.equal(out, logits[0])
    torch.testing.assert_close(logits[0][0, 0, 4:9], torch.tensor(BEFORE[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[0][3, 6, 4:9], torch.tensor(BEFORE[1]), atol=1e-5, rtol=0)
    assert logits[0].sum().item() == pytest.approx(BEFORE_SUMS[0], abs=1e-3)
    assert logits[0].abs().sum().item() == pytest.approx(BEFORE_SUMS[1], abs=1e-3)


def test_an_older_checkpoint_without_positions_loads_as_sinusoidal():
    from translate.config.stored import model_for_weights, stored_config

    # a checkpoint's config as training stores it (resolved), written before model.positions existed
    saved = OmegaConf.to_container(compose_train(SMALL_MODELS["transformer"]), resolve=True)
    saved["model"] = {k: v for k, v in saved["model"].items() if k not in NEW_KEYS}
    cfg = stored_config(saved, "old.pt")
    assert cfg.model.positions == "sinusoidal"
    torch.manual_seed(0)
    before = build_model(OmegaConf.create(saved["model"]), V).eval()
    loaded = model_for_weights(cfg.model, V, before.state_dict(), "old.pt").eval()
    src, mask, tgt = _batch()
    with torch.no_grad():
        assert torch.equal(loaded(src, mask, tgt), before(src, mask, tgt))


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.positions=learned", "model.positions=learned (must be one of sinusoidal, rotary, alibi, t5, shaw; "),
        ("model.t5_buckets=7", "model.t5_buckets=7 (must be an even number >= 4; default 32)"),
        ("model.shaw_clip=0", "model.shaw_clip=0 (must be > 0; default 16)"),
        ("model.positions=t5 model.t5_buckets=64 model.t5_max_distance=32", "model.t5_max_distance=32 <= "),
        ("model.positions=rotary model.d_model=12 model.heads=4", "the head size d_model/heads=3 is odd"),
    ],
)
def test_check_config_refuses_a_bad_scheme_in_one_line(override, named):
    from translate.config.rules import check_config
    from translate.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="^bad setting") as refused:
        check_config(compose_train(override.split()))
    assert named in str(refused.value) and "\n" not in str(refused.value)
    for scheme in SCHEMES:
        check_config(compose_train([f"model.positions={scheme}"]))


def test_build_model_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match="unknown model.positions='learned'; choose one of sinusoidal, rotary"):
        build_model(ModelConfig(**TINY, positions="learned"), V)


def test_ct2_export_refuses_relative_positions(monkeypatch, tmp_path):
    from translate.decoding import ct2_export
    from translate.runtime.errors import UserError

    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"model": {"positions": "alibi"}})
    (tmp_path / "best.pt").write_bytes(b"")
    monkeypatch.setattr(ct2_export, "import_ctranslate2", lambda: None)
    monkeypatch.setattr(ct2_export, "find_checkpoint", lambda run, checkpoint: tmp_path / "best.pt")
    monkeypatch.setattr(ct2_export, "load_run", lambda run, checkpoint, device: (None, None, cfg, {}))
    with pytest.raises(UserError) as refused:
        ct2_export.export_run(tmp_path)
    assert str(refused.value) == "model.positions=alibi cannot be exported: the export supports sinusoidal ones only"
