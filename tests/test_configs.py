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
        (
            ["+experiment=long_inputs", "model.positions=rotary", "trainer.concat_prob=0.1", "trainer.lr=1e-3"],
            "long_inputs_multi30k_de-en_trainer.lr=0.001",
        ),
        (
            ["+experiment=bottleneck_synthetic_early", "trainer.patience=6"],
            "synthetic_reverse_early_stopping_trainer.patience=6",
        ),
    ],
)
def test_comparison_directory_names_every_changed_setting(overrides, sweep_dir):
    """`make compare trainer.lr=…` must not land in (and be skipped as) the finished default comparison."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweep.dir == f"runs/compare/{sweep_dir}"


@pytest.mark.parametrize(
    ("overrides", "joining"),
    [
        ([], (0.5, 5)),  # make train: long inputs (docs/results/long_inputs.md)
        (["trainer=gpu"], (0.5, 5)),
        (["+experiment=bottleneck"], (0.5, 5)),  # make compare, as its report says
        (["+experiment=attention_scorers"], (0.0, 5)),  # measured on the corpus's pairs alone
        (["+experiment=multi30k_best"], (0.0, 5)),
    ],
)
def test_each_recipe_joins_pairs_as_its_results_were_measured(overrides, joining):
    trainer = compose_train(overrides).trainer
    assert (trainer.concat_prob, trainer.concat_max) == joining


def test_every_number_and_choice_of_the_schemas_has_a_rule():
    """A new size, probability or choice in translate/config/schema.py gets a range in translate/config/rules.py."""
    from dataclasses import fields, is_dataclass

    from translate.config.rules import RULES
    from translate.config.schema import TrainConfig

    free = {"trainer.seed", "data.synthetic.seed", "data.url", "eval.checkpoint"}
    free |= {"data.name", "data.src_lang", "data.tgt_lang", "data.train_split", "data.valid_split", "data.test_split"}

    def leaves(cls, prefix=""):
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            if is_dataclass(default):
                yield from leaves(type(default), f"{prefix}{f.name}.")
            elif f.type in (int, float, "int", "float") or (f.type in (str, "str") and not f.name.endswith("dir")):
                yield f"{prefix}{f.name}", f.type

    unruled = [key for key, _ in leaves(TrainConfig) if key not in RULES and key not in free]
    assert not unruled, f"keys without a rule: {unruled}"


@pytest.mark.parametrize(
    "override, named",
    [
        ("trainer.warmup_steps=-1", "trainer.warmup_steps=-1 (must be >= 0"),
        ("trainer.concat_prob=2", "trainer.concat_prob=2.0 (must be a probability in [0, 1]"),
        ("model.cell=rnn", "model.cell=rnn (must be one of gru, lstm"),
        ("model.attention=cosine", "model.attention=cosine (must be one of additive"),
        ("eval.length_buckets=[10,5]", "eval.length_buckets=[10, 5] (must be 2 to 101 increasing bounds"),
        ("data.tokenizer.model_type=wordpiece", "data.tokenizer.model_type=wordpiece (must be one of unigram"),
        ("trainer.lr=0", "trainer.lr=0.0 (must be > 0"),
        ("model.enc_layers=0", "model.enc_layers=0 (must be > 0"),
        ("eval.beam_size=0", "eval.beam_size=0 (must be in 1..256"),
        ("model=rnn_attention model.dec_layers=2", "rnn_attention has a single-layer decoder"),
        ("model.d_model=30 model.heads=4", "not divisible by 4 heads"),
    ],
)
def test_out_of_range_settings_are_named_with_their_default(override, named):
    from translate.config.rules import check_config
    from translate.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="^bad setting") as refused:
        check_config(compose_train(override.split()))
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_the_default_configs_and_presets_break_no_rule():
    from translate.config.rules import check_config

    presets = [[], ["trainer=gpu"], ["trainer=debug"], ["data=synthetic", "model=rnn"], ["model=transformer_ref"]]
    for overrides in presets:
        check_config(compose_train(overrides))
    for experiment in sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")):
        check_config(compose_train([f"+experiment={experiment}"]))


COMMAND_SCHEMAS = {  # config file: its schema's name in translate/config/schema.py
    "train": "TrainConfig",
    "prepare": "TrainConfig",
    "eval": "EvaluateConfig",
    "translate": "TranslateConfig",
    "serve": "ServeConfig",
    "export": "ExportConfig",
    "average": "AverageConfig",
}
# what a default group choice is, not a default: the corpus's checksums belong to configs/data/multi30k.yaml
CHOSEN = {"data.sha256"}


def differences(a, b, prefix=""):
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict) and f"{prefix}{key}" not in CHOSEN:
            yield from differences(x, y, f"{prefix}{key}.")
        elif x != y and f"{prefix}{key}" not in CHOSEN:
            yield f"{prefix}{key}: schema {x!r}, composed {y!r}"


@pytest.mark.parametrize("command", sorted(COMMAND_SCHEMAS))
def test_every_default_has_one_home_the_schema(command):
    """A command's default config, composed by Hydra from configs/, gives each setting its schema default: the
    YAML files choose (a corpus, a model family), they do not hold a second set of defaults."""
    from translate.config import schema

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        composed = OmegaConf.to_container(compose(config_name=command))
    composed.pop("hydra", None)
    defaults = OmegaConf.to_container(OmegaConf.structured(getattr(schema, COMMAND_SCHEMAS[command])))
    assert not list(differences(defaults, composed))


def test_a_run_saved_before_a_setting_existed_is_read_as_it_was_trained():
    from translate.config.schema import TrainConfig, saved_train_config

    saved = OmegaConf.to_container(OmegaConf.structured(TrainConfig))
    for key in ("concat_prob", "concat_max", "ema_decay"):
        del saved["trainer"][key]
    old = saved_train_config(saved).trainer
    assert (old.concat_prob, old.concat_max, old.ema_decay) == (0.0, 3, 0.0)
    assert saved_train_config(OmegaConf.to_container(OmegaConf.structured(TrainConfig))).trainer.ema_decay == 0.999
