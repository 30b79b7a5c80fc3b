"""translate/decoding/attention_maps.py: the one extractor of attention maps, teacher-forced on what search wrote.

Search collects no attention.  Before it stopped, the maps it collected step by step (greedy and beam 4, 24
sentences in batches, rnn_attention and transformer) were compared with these: they differed by at most 2e-7.
"""

import pytest
import torch
from conftest import BOS, EOS, copy_model, copy_sentences

from translate.decoding.attention_maps import attention_maps
from translate.decoding.options import DecodingOptions
from translate.decoding.search import translate_ids


@pytest.mark.parametrize("name", ["rnn_attention", "transformer"])
@pytest.mark.parametrize("beam", [1, 4])
def test_a_batch_gives_each_sentence_the_maps_of_its_own_teacher_forced_pass(name, beam):
    model, sources = copy_model(name), copy_sentences(12, seed=5)
    hyps = translate_ids(model, sources, BOS, EOS, DecodingOptions(beam_size=beam, batch_tokens=60))
    targets = [h.tokens for h in hyps]
    batched = attention_maps(model, sources, targets)
    for src, tgt, maps in zip(sources, targets, batched):
        with torch.no_grad():  # the model's own forward pass, one sentence, no padding
            _, alone = model(
                torch.tensor([src + [EOS]]),
                torch.ones(1, len(src) + 1, dtype=torch.bool),
                torch.tensor([[BOS] + tgt]),
                return_attention=True,
            )
        last = [key for key in maps if "/head" not in key][-1]  # the last layer's mean over heads, or α
        assert maps[last].shape == (len(tgt) + 1, len(src) + 1)
        torch.testing.assert_close(maps[last], alone[0].float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(maps[last].sum(-1), torch.ones(len(tgt) + 1), atol=1e-4, rtol=1e-4)


def test_heads_are_named_and_one_head_can_be_asked_for():
    model, sources = copy_model("transformer"), copy_sentences(3, seed=6)
    targets = [h.tokens for h in translate_ids(model, sources, BOS, EOS)]
    every = attention_maps(model, sources, targets)[0]
    heads = model.attention_heads
    assert sorted(every) == sorted(
        f"layer{i}" + s for i in (1, 2) for s in ["", *(f"/head{h}" for h in range(1, heads + 1))]
    )
    (one,) = attention_maps(model, sources[:1], targets[:1], heads=[1])
    assert sorted(one) == ["layer1/head2", "layer2/head2"]
    torch.testing.assert_close(one["layer2/head2"], every["layer2/head2"])
    mean = torch.stack([every[f"layer2/head{h}"] for h in range(1, heads + 1)]).mean(0)
    torch.testing.assert_close(every["layer2"], mean, atol=1e-6, rtol=1e-5)
