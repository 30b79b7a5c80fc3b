"""The pinned reference architectures of docs/performance.md, the defaults relative to them, experiment directories."""

import pytest
from conftest import CONFIGS, compose_train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf


@pytest.mark.parametrize("model", ["transformer", "rnn_attention"])
def test_defaults_are_the_reference_architectures(model):
    default = OmegaConf.to_container(compose_train([f"model={model}"]).model)
    reference = OmegaConf.to_container(compose_train([f"model={model}_ref"]).model)
    assert default == reference


def test_reference_transformer_is_the_joeynmt_baseline():
    cfg = compose_train(["model=transformer_ref"])
    m = cfg.model
    assert (m.enc_layers, m.dec_layers, m.d_model, m.heads, m.ff_dim, m.dropout, m.tie_embeddings) == (
        3,
        3,
        256,
        4,
        1024,
        0.1,
        True,
    )
    assert cfg.trainer.batch_tokens == 4096 and cfg.data.tokenizer.vocab_size == 8000


@pytest.mark.parametrize(
    ("overrides", "sweep_dir"),
    [
        (["+experiment=bottleneck"], "multi30k_de-en_800steps_concat0.5"),
        (["+experiment=bottleneck", "trainer.max_steps=1600", "model=rnn"], "multi30k_de-en_1600steps_concat0.5"),
        (
            ["+experiment=bottleneck", "trainer.lr=2e-3", "data.dir=/a"],
            "multi30k_de-en_800steps_concat0.5_data.dir=_a,trainer.lr=0.002",
        ),
        (
            ["+experiment=attention_scorers", "model.attention=dot", "trainer.seed=2"],
            "scorers_multi30k_de-en_400steps_trainer.seed=2",
        ),
    ],
)
def test_comparison_directory_names_every_changed_setting(overrides, sweep_dir):
    """`make compare trainer.lr=…` must not land in (and be skipped as) the finished default comparison."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweep.dir == f"runs/compare/{sweep_dir}"
