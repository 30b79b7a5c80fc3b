import pytest
import torch
import torch.nn.functional as F

from translate.models.attention import (
    SCORERS,
    LocalAttention,
    MonotonicLocalAttention,
    MultiHeadScorer,
    ScaledDotAttention,
    build_attention,
)

B, S, Q = 3, 7, 16
POSITION = torch.tensor([3, 3, 0])  # target positions: with window 5 every real source token is in reach


def _inputs(memory_dim=Q):
    torch.manual_seed(0)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    return torch.randn(B, Q), torch.randn(B, S, memory_dim), mask


@pytest.mark.parametrize("name", list(SCORERS))
def test_weights_sum_to_one_and_ignore_padding(name):
    query, memory, mask = _inputs()
    attn = build_attention(name, Q, Q, attention_dim=8, heads=2)
    context, weights = attn(query, attn.project_keys(memory), memory, mask, POSITION)
    assert context.shape == (B, Q) and weights.shape == (B, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))
    assert torch.all(weights[~mask] == 0)
    if name.startswith("hard"):  # one source position read: one-hot (tests/test_hard_attention.py)
        assert torch.all((weights == 0) | (weights == 1))
    else:
        assert torch.all(weights[mask] > 0)


@pytest.mark.parametrize("name", list(SCORERS))
def test_padding_content_does_not_change_context(name):
    query, memory, mask = _inputs()
    attn = build_attention(name, Q, Q, attention_dim=8, heads=2).eval()  # hard scorers: argmax, not a sample
    noisy = memory.masked_fill(~mask.unsqueeze(-1), 1e4)
    a = attn(query, attn.project_keys(memory), memory, mask, POSITION)[0]
    b = attn(query, attn.project_keys(noisy), noisy, mask, POSITION)[0]
    torch.testing.assert_close(a, b)


def test_additive_keys_differ_from_query_size():
    query, memory, mask = _inputs(memory_dim=2 * Q)
    attn = build_attention("additive", Q, 2 * Q, attention_dim=10)
    context, _ = attn(query, attn.project_keys(memory), memory, mask)
    assert context.shape == (B, 2 * Q)


def test_scaled_dot_matches_torch_sdpa():
    query, memory, mask = _inputs()
    attn = ScaledDotAttention(Q, Q)
    keys = attn.project_keys(memory)
    context, _ = attn(query, keys, memory, mask)
    expected = F.scaled_dot_product_attention(query[:, None], keys, memory, attn_mask=mask[:, None, :])[:, 0]
    torch.testing.assert_close(context, expected)


def test_multihead_with_one_head_and_identity_projections_is_scaled_dot():
    query, memory, mask = _inputs()
    multi = MultiHeadScorer(Q, Q, Q, heads=1)
    single = ScaledDotAttention(Q, Q)
    with torch.no_grad():
        mha = multi.attention
        for layer in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj, single.key_proj):
            layer.weight.copy_(torch.eye(Q))
    a = multi(query, multi.project_keys(memory), memory, mask)
    b = single(query, single.project_keys(memory), memory, mask)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_unknown_scorer_and_dot_size_mismatch_are_clear():
    with pytest.raises(ValueError, match="unknown model.attention='bogus'; choose one of additive"):
        build_attention("bogus", Q, Q, 8)
    with pytest.raises(ValueError, match="use model.attention=general"):
        build_attention("dot", Q, 2 * Q, 8)


def test_local_puts_zero_weight_outside_its_window():
    torch.manual_seed(0)
    long_mask = torch.ones(B, 40, dtype=torch.bool)
    long_mask[1, 25:] = False
    query, memory = torch.randn(B, Q), torch.randn(B, 40, Q)
    attn = LocalAttention(Q, Q, attention_dim=8, window=3)
    _, weights = attn(query, attn.project_keys(memory), memory, long_mask)
    centre = (long_mask.sum(1, keepdim=True) - 1) * torch.sigmoid(attn.centre(query))
    outside = (torch.arange(40) - centre).abs() > 3
    assert torch.all(weights[outside] == 0) and torch.all(weights[~long_mask] == 0)
    assert torch.all((weights > 0).sum(-1) <= 7)  # at most 2D + 1 positions
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))


def test_local_m_window_follows_the_target_position():
    torch.manual_seed(0)
    mask = torch.ones(B, 40, dtype=torch.bool)
    mask[1, 12:] = False  # 12 real tokens: a position past the end clamps to the last one
    query, memory = torch.randn(B, Q), torch.randn(B, 40, Q)
    attn = MonotonicLocalAttention(Q, Q, window=2)
    position = torch.tensor([0, 30, 20])
    _, weights = attn(query, attn.project_keys(memory), memory, mask, position)
    reach = [range(0, 3), range(9, 12), range(18, 23)]
    for row, allowed in enumerate(reach):
        nonzero = set(torch.nonzero(weights[row]).flatten().tolist())
        assert nonzero == set(allowed), row
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))
    with pytest.raises(ValueError, match="local_m attention needs the target position"):
        attn(query, attn.project_keys(memory), memory, mask)
