"""The pinned reference architectures of docs/performance.md, and what the defaults are relative to them."""

import pytest
from conftest import compose_train
from omegaconf import OmegaConf


@pytest.mark.parametrize("model", ["transformer", "rnn_attention"])
def test_defaults_are_the_reference_architectures(model):
    default = OmegaConf.to_container(compose_train([f"model={model}"]).model)
    reference = OmegaConf.to_container(compose_train([f"model={model}_ref"]).model)
    assert default == reference


def test_reference_transformer_is_the_joeynmt_baseline():
    cfg = compose_train(["model=transformer_ref"])
    m = cfg.model
    assert (m.enc_layers, m.dec_layers, m.d_model, m.heads, m.ff_dim, m.dropout, m.tie_embeddings) == (3, 3, 256, 4, 1024, 0.1, True)
    assert cfg.trainer.batch_tokens == 4096 and cfg.data.tokenizer.vocab_size == 8000
