import pytest
import torch
from conftest import padded_batch

from translate.config.schema import ModelConfig
from translate.decoding.search import greedy_search, select
from translate.models import build_model
from translate.runtime.checkpoints import load_checkpoint, save_checkpoint

V = 50
CONFIGS = {
    "rnn": dict(name="rnn", emb_dim=24, hidden_dim=32, enc_layers=2, dec_layers=2),
    "rnn_lstm": dict(
        name="rnn", enc_layers=1, dec_layers=1, cell="lstm", emb_dim=24, hidden_dim=32, bidirectional=False
    ),
    "rnn_attention": dict(
        name="rnn_attention", enc_layers=1, dec_layers=1, emb_dim=24, hidden_dim=32, attention_dim=16
    ),
    "rnn_attention_lstm": dict(
        name="rnn_attention",
        enc_layers=1,
        dec_layers=1,
        cell="lstm",
        emb_dim=24,
        hidden_dim=32,
        attention_dim=16,
        tie_embeddings=False,
    ),
    "rnn_attention_local": dict(
        name="rnn_attention",
        enc_layers=1,
        dec_layers=1,
        attention="local",
        emb_dim=24,
        hidden_dim=32,
        attention_dim=16,
        window=2,
    ),
    "rnn_attention_local_m": dict(
        name="rnn_attention",
        enc_layers=1,
        dec_layers=1,
        attention="local_m",
        emb_dim=24,
        hidden_dim=32,
        window=2,
        bidirectional=False,
    ),
    "rnn_attention_multihead": dict(
        name="rnn_attention",
        enc_layers=1,
        dec_layers=1,
        attention="multihead",
        emb_dim=24,
        hidden_dim=32,
        attention_dim=16,
        heads=2,
    ),
    "transformer": dict(name="transformer", d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2),
    "transformer_post_ln": dict(
        name="transformer",
        enc_layers=1,
        dec_layers=1,
        d_model=32,
        heads=4,
        ff_dim=64,
        pre_norm=False,
        tie_embeddings=False,
    ),
}


def _model(key):
    torch.manual_seed(0)
    return build_model(ModelConfig(**CONFIGS[key]), V).eval()


def _batch():
    return padded_batch(V)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_step_by_step_decoding_reproduces_teacher_forcing(key):
    model = _model(key)
    src, mask, tgt = _batch()
    with torch.no_grad():
        full = model(src, mask, tgt)
        state, steps = model.encode(src, mask), []
        for t in range(tgt.shape[1]):
            logits, state = model.decode_step(state, tgt[:, t])
            steps.append(logits)
    assert full.shape == (4, 7, V)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", ["rnn_attention", "transformer"])
def test_attention_weights_sum_to_one_and_skip_padding(key):
    model = _model(key)
    src, mask, tgt = _batch()
    with torch.no_grad():
        _, weights = model(src, mask, tgt, return_attention=True)  # (B, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 7))
    assert torch.all(weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0)


@pytest.mark.parametrize("key", ["rnn", "rnn_attention", "transformer"])
def test_source_padding_does_not_change_outputs(key):
    model = _model(key)
    src, mask, tgt = _batch()
    wide = torch.cat([src, torch.zeros(4, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(src, mask, tgt), model(wide, wide != 0, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["rnn", "rnn_attention", "transformer"])
def test_checkpoint_round_trip_gives_identical_outputs(key, tmp_path):
    model = _model(key)
    src, mask, tgt = _batch()
    save_checkpoint({"model": model.state_dict(), "step": 3}, tmp_path / "m.pt")
    assert not [p for p in tmp_path.iterdir() if p.name != "m.pt"]  # no temporary file left behind
    other = build_model(ModelConfig(**CONFIGS[key]), V).eval()
    other.load_state_dict(load_checkpoint(tmp_path / "m.pt")["model"])
    with torch.no_grad():
        assert torch.equal(model(src, mask, tgt), other(src, mask, tgt))


@pytest.mark.parametrize("key", ["rnn", "rnn_attention", "transformer"])
def test_greedy_does_not_depend_on_batch_composition(key):
    model = _model(key)
    src, mask, _ = _batch()
    max_len = torch.full((4,), 12)
    together = greedy_search(model, src, mask, 2, 3, max_len)
    for i in range(4):
        n = int(mask[i].sum())
        alone = greedy_search(model, src[i : i + 1, :n], mask[i : i + 1, :n], 2, 3, max_len[:1])[0]
        assert alone.tokens == together[i].tokens
        assert alone.score == pytest.approx(together[i].score, abs=1e-4)


def test_select_reorders_nested_state():
    state = {"a": torch.arange(3), "b": [torch.arange(6).view(3, 2)], "n": 5}
    out = select(state, torch.tensor([2, 0]))
    assert out["a"].tolist() == [2, 0] and out["b"][0].tolist() == [[4, 5], [0, 1]] and out["n"] == 5


def test_unknown_model_name_is_clear():
    with pytest.raises(ValueError, match="unknown model.name='lstm'; choose one of rnn, rnn_attention, transformer"):
        build_model(ModelConfig(name="lstm"), V)


@pytest.mark.parametrize("key", ["rnn_attention", "transformer"])
def test_attention_maps_for_heatmaps(key):
    model = _model(key)
    src, mask, tgt = _batch()
    with torch.no_grad():
        maps = model.attention_maps(src, mask, tgt)
        last = model(src, mask, tgt, return_attention=True)[1]
    assert all(m.shape == (4, 7, 9) for m in maps.values())
    torch.testing.assert_close(list(maps.values())[-1], last)
    if key == "transformer":
        assert list(maps) == ["layer1", "layer2"]
        head0 = model.attention_maps(src, mask, tgt, head=0)["layer1"]
        torch.testing.assert_close(head0.sum(-1), torch.ones(4, 7))


def test_link_checkpoint_is_atomic_and_survives_the_source_being_replaced(tmp_path):
    from translate.runtime.checkpoints import link_checkpoint

    save_checkpoint({"model": {}, "step": 1}, tmp_path / "last.pt")
    link_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    save_checkpoint({"model": {}, "step": 2}, tmp_path / "last.pt")  # replaced by rename: best.pt keeps step 1
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 1 and load_checkpoint(tmp_path / "last.pt")["step"] == 2
    link_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_attention_written_out_for_bf16_equals_sdpa(causal):
    """bf16 on CPU (or weights wanted) takes the written-out attention; fp32 takes SDPA. Both compute the same."""
    import torch.nn.functional as F

    from translate.models.attention import scaled_dot_product_attention, written_out_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 8) for _ in range(3))
    mask = (
        None
        if causal
        else torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)[:, None, None]
    )
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    out, weights = written_out_attention(q, k, v, mask, causal)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights @ v, expected)
    assert scaled_dot_product_attention(q, k, v, mask, causal)[1] is None
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask, causal)[0], expected)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask, causal, need_weights=True)[0], expected)
    bf16 = scaled_dot_product_attention(*(t.bfloat16() for t in (q, k, v)), mask, causal)[0]
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_every_model_keeps_the_decoding_contract(key):
    """The Protocol of translate/models/base.py, by name and by signature, and attention asked of each the same way."""
    import inspect

    from translate.models.base import NoAttentionError, Seq2SeqModel

    model = _model(key)
    assert isinstance(model, Seq2SeqModel)
    for name in ("encode", "decode_step", "features", "attention_maps", "forward"):
        ours = list(inspect.signature(getattr(model, name)).parameters)
        contract = list(inspect.signature(getattr(Seq2SeqModel, "__call__" if name == "forward" else name)).parameters)
        assert ours == contract[1:], (name, ours)
    src, mask, tgt = _batch()
    with torch.no_grad():
        model.encode(src, mask)
        if not model.has_attention:
            for ask in (
                lambda: model.features(src, mask, tgt, return_attention=True),
                lambda: model(src, mask, tgt, return_attention=True),
                lambda: model.attention_maps(src, mask, tgt),
            ):
                with pytest.raises(NoAttentionError, match="has no attention"):
                    ask()
            return
        features, weights = model.features(src, mask, tgt, return_attention=True)
        assert features.shape[:2] == (4, 7) and weights.shape == (4, 7, 9)
        torch.testing.assert_close(features, model.features(src, mask, tgt))
        maps = model.attention_maps(src, mask, tgt)
        assert maps and all(m.shape == (4, 7, 9) for m in maps.values())


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_drops_at_its_rate_and_keeps_the_expectation(p):
    from translate.models.dropout import Dropout, dropout

    torch.manual_seed(0)
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    y = dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.002  # 10^6 draws: 4 standard deviations
    assert abs(y.mean().item() - 2.0) < 0.01 and torch.allclose(y[y != 0], torch.tensor(2.0 / (1 - p)), atol=1e-4)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient passes where the value did, scaled alike
    # the four 16-bit numbers of one 64-bit draw are independent: each position of a group of four drops alike
    rates = (dropout(torch.ones(4_000_000), 0.5) == 0).float().view(-1, 4).mean(0)
    assert torch.allclose(rates, torch.tensor(0.5), atol=0.002)
    # seeded like the rest of training; identity in eval mode and at p = 0; bf16 stays bf16
    torch.manual_seed(7)
    a = Dropout(p)(torch.ones(64))
    torch.manual_seed(7)
    assert torch.equal(a, Dropout(p)(torch.ones(64)))
    assert torch.equal(Dropout(p).eval()(x), x) and dropout(x, 0.0) is x
    assert dropout(torch.ones(8, dtype=torch.bfloat16), p).dtype == torch.bfloat16
