"""Small files that must not cost much (docs/security.md, "Bounds on files from others"): expansion bombs, sizes a
stored config states, the checkpoints `make average` adds, values read back from a run.  Each is refused in one
line, fast and without allocating; the stored-config reader is fuzzed with Hypothesis.  scripts/forged_inputs.py
measures the same cases as processes, before and after."""

import json
import math
import resource
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf
from test_trust import TINY, make_run, run_command, shared_lists

from translate.config.schema import TrainConfig
from translate.config.stored import MAX_VALUES, stored_config
from translate.evaluation.comparison import load_run_results
from translate.evaluation.records import MAX_BUCKETS, read_evaluation
from translate.models import build_model
from translate.runtime.checkpoints import CheckpointError, save_checkpoint
from translate.runtime.errors import UserError
from translate.runtime.files import UnsafePath, read_json, read_yaml
from translate.serving.registry import load_models
from translate.training.averaging import average_run
from translate.training.run import prepare_run_dir

DEFAULT = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=True)


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def refused_fast(call, error=UserError, match: str | None = None, seconds: float = 1.0, megabytes: int = 200) -> str:
    """The one-line message `call` refuses with, asserting it took under `seconds` and `megabytes` more memory."""
    before, start = peak_kib(), time.perf_counter()
    with pytest.raises(error, match=match) as caught:
        call()
    assert time.perf_counter() - start < seconds
    assert peak_kib() - before < megabytes * 1024
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True, scope="module")
def meta_kernels():
    """torch imports its meta kernels on first use (~1 s once per process, any size): not the refusal's time."""
    with torch.device("meta"):
        build_model(OmegaConf.structured(TINY), 40)


# ---- 1. expansion bombs -----------------------------------------------------------------------------------------


def test_a_pickled_config_whose_lists_share_structure_is_refused_before_it_expands(tmp_path):
    saved = {**DEFAULT, "x": shared_lists(width=20, depth=5)}  # 20**6 leaves, a few hundred bytes pickled
    torch.save(saved, tmp_path / "config.pt")
    assert (tmp_path / "config.pt").stat().st_size < 6_000  # most of it the default config and torch's zip
    loaded = torch.load(tmp_path / "config.pt", weights_only=True)
    message = refused_fast(lambda: stored_config(loaded, tmp_path / "best.pt"), CheckpointError)
    assert f"more than {MAX_VALUES:,} values" in message


def test_a_long_string_shared_many_times_is_counted_at_every_use(tmp_path):
    text = "a" * 60_000
    saved = {**DEFAULT, "trainer": {**DEFAULT["trainer"], "betas": [text] * 1000}}
    assert "characters of text" in refused_fast(lambda: stored_config(saved, tmp_path / "x.pt"), CheckpointError)


def test_a_config_yaml_with_aliases_is_refused_when_a_run_is_resumed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [f"a0: &a0 [{', '.join(['x'] * 20)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 20)}]" for i in range(1, 5)]  # 20**5 values, ~500 bytes
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    cfg = OmegaConf.structured(TrainConfig)
    refused_fast(lambda: prepare_run_dir(cfg, run, auto=True), UnsafePath, "config.yaml: holds a YAML alias")
    (run / "config.yaml").write_text("a: " + "[" * 50_000)  # deeper than PyYAML's recursion
    refused_fast(lambda: read_yaml(run / "config.yaml"), UnsafePath, "config.yaml: ")
    (run / "config.yaml").write_text("model:\n  name: transformer\n" + "# padding\n" * 200_000)  # 2 MB
    refused_fast(lambda: read_yaml(run / "config.yaml"), UnsafePath, r"at most 1,048,576")


@pytest.mark.slow
def test_evaluating_a_memo_bomb_checkpoint_ends_in_one_line(tmp_path):
    run = make_run(tmp_path / "run", lambda c: c.update(x=shared_lists()))
    start = time.perf_counter()
    done = run_command("-m", "translate", "eval", f"run={run}")
    assert done.returncode == 2 and time.perf_counter() - start < 60
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {run / 'best.pt'}: stored config key x[") and "values in all" in line


# ---- 2. sizes a stored config states ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, found",
    [
        (
            lambda d: d["synthetic"].update(symbols=2 * 10**9),
            r"data.synthetic.symbols=2000000000 \(must be in 1..100,000",
        ),
        (lambda d: d["synthetic"].update(min_len=10**8, max_len=10**8), r"data.synthetic.min_len=100000000"),
        (lambda d: d.update(test_limit=10**12), r"data.test_limit=1000000000000 \(must be in 1..10\^9"),
        (lambda d: d["synthetic"].update(test_size=10**6, max_len=100), r"test_size=1000000 × max_len=100 words"),
        (lambda d: d.update(max_tokens=10**9), r"data.max_tokens=1000000000"),
    ],
)
def test_sizes_a_stored_config_states_are_bounded_before_anything_is_allocated(tmp_path, edit, found):
    saved = json.loads(json.dumps(DEFAULT))
    saved["data"]["name"] = "synthetic"
    edit(saved["data"])
    refused_fast(lambda: stored_config(saved, tmp_path / "best.pt"), CheckpointError, found)


def test_length_buckets_are_bounded_in_count():
    from translate.config.rules import broken_rules

    cfg = OmegaConf.structured(TrainConfig)
    cfg.eval.length_buckets = list(range(5_000))
    assert "eval.length_buckets" in broken_rules(cfg)[0]


# ---- 3. make average --------------------------------------------------------------------------------------------


def test_average_reads_no_checkpoint_through_a_link(tmp_path):
    run = make_run(tmp_path / "run")
    outside = tmp_path / "outside.pt"
    (run / "step_1.pt").rename(outside)
    (run / "step_1.pt").symlink_to(outside)
    refused_fast(lambda: average_run(run, last=1), UnsafePath, "step_1.pt: a symbolic link")
    assert not (run / "averaged.pt").exists()


def _numbered(run: Path, shapes: dict[int, tuple[int, ...]], dtype=torch.float32) -> None:
    for step, shape in shapes.items():
        ckpt = torch.load(run / "best.pt", weights_only=True)
        ckpt["model"]["encoder_norm.weight"] = torch.zeros(shape, dtype=dtype)
        save_checkpoint(ckpt, run / f"step_{step}.pt")


def test_average_refuses_tensors_that_would_broadcast_before_adding_them(tmp_path):
    run = make_run(tmp_path / "run")
    _numbered(run, {1: (1, 30_000), 2: (30_000, 1)})  # added, 7.2 GB in float64
    message = refused_fast(lambda: average_run(run, last=2), CheckpointError, "encoder_norm.weight has shape")
    assert "step_1.pt" in message and not (run / "averaged.pt").exists()


def test_average_refuses_a_checkpoint_of_another_dtype(tmp_path):
    run = make_run(tmp_path / "run")
    _numbered(run, {1: (16,)})
    _numbered(run, {2: (16,)}, dtype=torch.float64)
    refused_fast(lambda: average_run(run, last=2), CheckpointError, r"step_2.pt: encoder_norm.weight is torch.float64")


# ---- 4. values read back from a run -----------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["x" * 1000, 10**30, -1, True, 1.5, None])
def test_a_train_state_counter_of_any_type_or_size_refuses_the_run_at_load(tmp_path, step):
    from translate.decoding.inference import load_run

    run = make_run(tmp_path / "run")
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["train_state"] = {"step": step}
    save_checkpoint(ckpt, run / "best.pt")
    refused_fast(lambda: load_run(run), CheckpointError, r"best.pt: train_state.step=.* is not a whole number")


@pytest.mark.parametrize("text", ['{"bleu": NaN}', '{"bleu": 1e999}', '{"bleu": -Infinity}', '{"bleu": "40"}'])
def test_a_score_that_is_not_a_finite_number_in_range_is_refused(tmp_path, text):
    (tmp_path / "test.json").write_text(text)
    refused_fast(lambda: read_evaluation(tmp_path / "test.json"), UserError, "test.json: ")


def test_read_json_keeps_finite_numbers_and_refuses_the_rest(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1.5, "b": [1, 2e3], "c": null}')
    assert read_json(tmp_path / "a.json") == {"a": 1.5, "b": [1, 2000.0], "c": None}
    (tmp_path / "a.json").write_text('{"a": ' + "9" * 5000 + "}")
    refused_fast(lambda: read_json(tmp_path / "a.json"), UnsafePath, "not JSON")


def _evaluated(run: Path, **changes) -> None:
    (run / "eval").mkdir(exist_ok=True)
    buckets = [{"min_words": 0, "max_words": 9, "sentences": 2, "bleu": 10.0}]
    record = {"name": "test", "src_lang": "de", "tgt_lang": "en", "sentences": 2, "bleu": 10.0, "chrf": 30.0}
    (run / "eval" / "test.json").write_text(json.dumps({**record, "bleu_by_length": buckets, **changes}))
    summary = {"model": "transformer", "parameters": 1, "train_minutes": 0.1, "epochs": 1.0, "tokens_per_s": 1.0}
    (run / "train_summary.json").write_text(json.dumps(summary))


def test_a_run_with_too_many_length_buckets_is_refused_by_the_report_and_the_server(tmp_path):
    run = make_run(tmp_path / "run")
    _evaluated(run)
    assert load_run_results(run)["eval"]["bleu"] == 10.0
    assert load_models([run], device="cpu")["run"].describe()["bleu"] == 10.0
    bucket = {"min_words": 0, "max_words": 9, "sentences": 2, "bleu": 10.0}
    _evaluated(run, bleu_by_length=[bucket] * (MAX_BUCKETS + 1))
    refused_fast(lambda: load_run_results(run), UserError, rf"bleu_by_length is {MAX_BUCKETS + 1} buckets")
    refused_fast(lambda: load_models([run], device="cpu"), UserError, "buckets", seconds=5)
    _evaluated(run, probe={"bleu": 5.0, "bleu_by_length": [{"min_words": "0"}]})
    refused_fast(lambda: load_run_results(run), UserError, r"probe.bleu_by_length\[0\] is not a length bucket")


@pytest.mark.slow
def test_the_server_refuses_a_run_whose_bleu_is_infinite_in_one_line(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "eval").mkdir()
    (run / "eval" / "test.json").write_text('{"bleu": 1e999}')
    port = "8"  # never reached: the run is refused while loading
    done = run_command("-m", "translate", "serve", f"run={run}", f"port={port}", "eval.device=cpu")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "eval/test.json: not JSON this program writes (the number 1e999" in line


# ---- the stored-config reader, fuzzed ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["${oc.env:HOME}", "???", "transformer", "../../etc", "de", "synthetic"]),
)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=60,
)
keys = st.sampled_from(sorted(f"{s}.{k}" for s, v in DEFAULT.items() if isinstance(v, dict) for k in v))


@st.composite
def stored_configs(draw):
    """The default config with a few of its values replaced by anything, or a random tree."""
    if draw(st.booleans()):
        return draw(trees)
    saved = json.loads(json.dumps(DEFAULT))
    for key in draw(st.lists(keys, max_size=4)):
        section, name = key.split(".", 1)
        saved[section][name] = draw(trees)
    return saved


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(saved=stored_configs())
def test_fuzz_the_stored_config_reader_returns_a_config_or_refuses_in_one_line(saved, tmp_path_factory):
    before, start = peak_kib(), time.perf_counter()
    try:
        cfg = stored_config(saved, "fuzz.pt")
    except CheckpointError as e:
        assert str(e).isprintable() and str(e).startswith("fuzz.pt: ")
    else:
        assert isinstance(cfg, DictConfig)
        assert all(math.isfinite(v) for v in (cfg.trainer.lr, cfg.model.dropout))
    assert time.perf_counter() - start < 1.0
    assert peak_kib() - before < 200 * 1024


def test_resuming_optimizer_moments_of_another_shape_is_refused_before_a_step(tmp_path):
    from translate.runtime.checkpoints import restore_training

    def parts():
        model = build_model(OmegaConf.structured(TINY), 40)
        optimizer = torch.optim.Adam(model.parameters())
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, scheduler = parts()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(1, 30_000)
    refused_fast(lambda: restore_training(ckpt, *parts(), path="last.pt"), CheckpointError, "exp_avg has shape")
