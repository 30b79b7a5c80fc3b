"""Other people's files are data (docs/security.md): hostile checkpoints, run directories and configs, tried the way
a stranger would plant them, with real processes where the harm would be done by one."""

import http.server
import io
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from translate.config.rules import check_config
from translate.config.schema import AverageConfig, EvalConfig, ModelConfig, TokenizerConfig, TrainConfig
from translate.config.stored import evaluation_data, stored_config
from translate.data.tokenizer import train_or_load
from translate.decoding.inference import load_run
from translate.evaluation.comparison import load_run_results
from translate.evaluation.evaluator import evaluate
from translate.models import build_model
from translate.runtime.checkpoints import CheckpointError, check_torch_version, load_checkpoint, save_checkpoint
from translate.runtime.errors import ConfigError, UserError
from translate.runtime.files import UnsafePath, atomic_write, refuse_planted_links
from translate.runtime.lock import UnsafeLock, run_lock
from translate.runtime.ranks import from_bytes, to_bytes
from translate.training.averaging import average_run
from translate.training.run import prepare_run_dir

ROOT = Path(__file__).resolve().parents[1]
WORDS = "ein eine der die das mann frau hund kind spielt läuft sitzt auf dem im park wasser roten blauen ball".split()
TINY = ModelConfig(name="transformer", d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1)


def make_run(run: Path, config_edit=None, weights_edit=None) -> Path:
    """A run directory as training leaves it (tokenizer, best.pt, step_1.pt of a tiny Transformer), with its stored
    config or weights changed by the given functions: what a stranger could hand over."""
    run.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(300)]
    tokenizer = train_or_load(texts, TokenizerConfig(vocab_size=40, cache_dir="tok"), run.parent)
    tokenizer.save(run / "tokenizer.model")
    config = OmegaConf.to_container(OmegaConf.structured(TrainConfig(model=TINY)), resolve=True)
    torch.manual_seed(0)
    weights = build_model(OmegaConf.structured(TINY), len(tokenizer)).state_dict()
    if config_edit:
        config_edit(config)
    if weights_edit:
        weights = weights_edit(weights)
    ckpt = {"format": 2, "model": weights, "config": config, "vocab_size": len(tokenizer)}
    for name in ("best.pt", "step_1.pt"):
        save_checkpoint(ckpt, run / name)
    (run / "my.de").write_text("ein mann spielt\nder hund läuft im park\n")
    (run / "my.en").write_text("a man plays\nthe dog runs in the park\n")
    return run


def shared_lists(width: int = 20, depth: int = 5) -> list:
    """`width`**`depth` leaves in a few hundred bytes once pickled: every level is one list referenced `width` times."""
    node: list = ["x"]
    for _ in range(depth):
        node = [node] * width
    return node


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("good") / "run")


def run_command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


# ---- a checkpoint's config is data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.url", "http://127.0.0.1:1/{split}.{lang}.gz?k=${oc.env:HOME}"),
        ("data.dir", "${oc.env:PATH}"),
        ("model.name", "${oc.decode:'transformer'}"),
        ("trainer.betas", [0.9, "${oc.env:USER}"]),
        ("data.sha256", {"train.de.gz": "\\${escaped}"}),
        ("data.src_lang", "???"),
    ],
)
def test_an_interpolation_or_missing_value_in_a_stored_config_is_refused_not_resolved(key, value, tmp_path):
    config = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=True)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(CheckpointError, match=rf"best.pt: stored config key {key}.*never resolved") as e:
        stored_config(config, tmp_path / "best.pt")
    assert "\n" not in str(e.value) and os.environ["HOME"] not in str(e.value)


@pytest.mark.parametrize(
    "edit, found",
    [
        (lambda c: c["model"].update(hidden_dim="wide"), "does not fit the schema"),
        (lambda c: c["data"].update(unknown_key=1), "does not fit the schema"),
        (lambda c: c["data"].update(src_lang="../../etc"), "data.src_lang=../../etc .must be a plain name"),
        (lambda c: c["data"].update(test_split="a/b"), "data.test_split=a/b"),
        (lambda c: c["model"].update(dropout=3.0), "model.dropout=3.0"),
        (lambda c: c["trainer"].update(betas={"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}), "nested deeper"),
        (lambda c: c.update(model=["transformer"]), "does not fit the schema"),
    ],
)
def test_a_stored_config_goes_through_the_rules_of_a_command(edit, found, tmp_path):
    config = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=True)
    edit(config)
    with pytest.raises(CheckpointError, match=found):
        stored_config(config, tmp_path / "best.pt")


def test_a_stored_config_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a mapping"):
        stored_config(["model"], tmp_path / "x.pt")


def _serve(handler_log: list):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            handler_log.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
@pytest.mark.parametrize("interpolated", [True, False])
def test_a_hostile_checkpoint_makes_evaluation_touch_no_network_and_leak_nothing(tmp_path, interpolated):
    requests: list[str] = []
    server = _serve(requests)
    secret = "s3cr3t-value-4711"
    url = f"http://127.0.0.1:{server.server_port}/{{split}}.{{lang}}.gz"
    url += "?k=${oc.env:TRANSLATE_TEST_SECRET}" if interpolated else f"?k={secret[:2]}"

    def hostile(config):
        config["data"].update(name="evil", dir=None, url=url, hub=None)

    run = make_run(tmp_path / "hostile", hostile)
    env = {"TRANSLATE_TEST_SECRET": secret, "TRANSLATE_ALLOW_LOCAL_HTTP": "1", "TRANSLATE_DATA_DIR": ""}
    done = run_command("-m", "translate", "eval", f"run={run}", env=env)
    server.shutdown()
    assert done.returncode != 0 and requests == []
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error:") and ("interpolation" in error if interpolated else "data.dir" in error)
    assert secret not in done.stdout + done.stderr
    for path in run.rglob("*"):
        assert path.is_dir() or secret.encode() not in path.read_bytes(), path


def test_evaluation_reads_its_split_from_the_project_and_the_command_never_from_the_run(tmp_path, caplog):
    stored = OmegaConf.structured(TrainConfig).data
    stored.name, stored.dir, stored.url, stored.hub = "multi30k", "/srv/theirs", "https://evil.example/{split}", "x/y"
    data = evaluation_data(stored, None)
    assert data.dir is None and data.hub is None and data.url.startswith("https://raw.githubusercontent.com/multi30k/")
    assert "data.dir='/srv/theirs'" in caplog.text and "not followed" in caplog.text
    assert evaluation_data(stored, OmegaConf.create({"dir": str(tmp_path), "hub": None})).dir == str(tmp_path)
    stored.name = "unknown"  # a corpus the project does not ship: no location at all
    assert evaluation_data(stored, None).url is None


def test_a_checkpoint_claiming_a_100_gb_model_is_refused_in_a_second_without_allocating(tmp_path, good_run):
    run = tmp_path / "claim"
    run.mkdir()
    (run / "tokenizer.model").write_bytes((good_run / "tokenizer.model").read_bytes())
    # about 100 GB of fp32 weights; the rest of the config takes the schema's defaults
    config = {"model": dict(name="transformer", d_model=65536, ff_dim=262144, heads=8, enc_layers=2, dec_layers=2)}
    one = torch.zeros(1)
    weights = {f"t{i}": one for i in range(5)}  # one storage, saved once
    torch.save({"format": 2, "model": weights, "config": config, "vocab_size": 40}, run / "best.pt")
    assert (run / "best.pt").stat().st_size < 2_000
    with torch.device("meta"):  # torch imports its meta kernels on first use (~2 s once per process, any size)
        build_model(OmegaConf.structured(TINY), 40)
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with pytest.raises(CheckpointError, match="weights and config disagree"):
        load_run(run)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024  # KiB


@pytest.mark.parametrize(
    "weights_edit, found",
    [
        (lambda w: {**w, "encoder_norm.weight": torch.zeros(999)}, r"encoder_norm.weight has shape \(999,\)"),
        (lambda w: {k: v for k, v in w.items() if k != "generator.weight"}, "generator.weight is missing"),
        (lambda w: {**w, "extra": torch.zeros(2)}, "extra is not part of the model"),
    ],
)
def test_weights_that_do_not_fit_their_config_are_refused_by_name(tmp_path, weights_edit, found):
    run = make_run(tmp_path / "run", weights_edit=weights_edit)
    with pytest.raises(CheckpointError, match=found):
        load_run(run)


def test_a_config_asking_for_more_layers_than_it_holds_tensors_is_refused_before_building(tmp_path):
    run = make_run(tmp_path / "run", lambda c: c["model"].update(enc_layers=10**6))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="1000001 layers"):
        load_run(run)
    assert time.perf_counter() - start < 1.0


def test_torch_without_safe_weights_only_loading_is_refused():
    for version in ("2.4.1", "2.5.1+cu121", "2.9.0"):
        with pytest.raises(CheckpointError, match=rf"torch {version.replace('+', '.')}.*torch>=2.10"):
            check_torch_version(version)
    for version in ("2.10.0", "2.13.0+cpu", "3.0.0"):
        check_torch_version(version)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    path = tmp_path / "best.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    buffer = io.BytesIO()
    torch.save({"model": {}, "x": Payload()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_run_directory_config_yaml_is_read_as_data_when_a_run_continues(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  dir: ${oc.env:HOME}\nmodel:\n  name: transformer\n")
    cfg = OmegaConf.structured(TrainConfig)
    with pytest.raises(CheckpointError, match=r"config.yaml: stored config key data.dir='\$\{oc.env:HOME\}'"):
        prepare_run_dir(cfg, run, auto=True)
    (run / "config.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(UnsafePath, match="not YAML"):
        prepare_run_dir(cfg, run, auto=True)


# ---- run directories: no writing or reading through planted links ---------------------------------------------


def _planted(tmp_path: Path, run: Path, name: str) -> tuple[Path, bytes]:
    """A file outside the run and a link to it planted at `name` inside the run."""
    target = tmp_path / f"victim-{name.replace('/', '_')}"
    content = f"precious {name}\n".encode()
    target.write_bytes(content)
    link = run / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return target, content


@pytest.mark.parametrize("name", ["eval/my.hyp", "eval/my.json", "eval/my_bleu_by_length.png", "eval/my_probe.src"])
def test_evaluation_writes_through_no_planted_link(tmp_path, name):
    run = make_run(tmp_path / "run")
    target, content = _planted(tmp_path, run, name)
    ec = OmegaConf.structured(EvalConfig(src=str(run / "my.de"), ref=str(run / "my.en"), probe_k=2))
    with pytest.raises(UnsafePath, match=rf"{name}: a symbolic link"):
        evaluate(run, ec)
    assert target.read_bytes() == content and (run / name).is_symlink()


@pytest.mark.parametrize("directory", ["eval", "tensorboard"])
def test_a_run_subdirectory_planted_as_a_link_is_refused(tmp_path, directory):
    run = make_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / directory).symlink_to(elsewhere, target_is_directory=True)
    ec = OmegaConf.structured(EvalConfig(src=str(run / "my.de"), ref=str(run / "my.en"), probe_k=0))
    with pytest.raises(UnsafePath, match=rf"{directory}: a symbolic link .* directory"):
        evaluate(run, ec)
    assert list(elsewhere.iterdir()) == []


def test_the_lock_truncates_no_planted_link_or_hard_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target, content = _planted(tmp_path, run, ".lock")
    with pytest.raises(UnsafeLock, match="symbolic link"), run_lock(run):
        pass
    (run / ".lock").unlink()
    os.link(target, run / ".lock")
    with pytest.raises(UnsafeLock, match="not a plain file of its own"), run_lock(run):
        pass
    assert target.read_bytes() == content


@pytest.mark.parametrize("name", ["best.pt", "tokenizer.model"])
def test_a_checkpoint_or_tokenizer_planted_as_a_link_is_not_read(tmp_path, good_run, name):
    run = make_run(tmp_path / "run")
    (run / name).unlink()
    (run / name).symlink_to(good_run / name)
    with pytest.raises(UnsafePath, match=rf"{name}: a symbolic link"):
        load_run(run)


def test_average_and_atomic_writes_replace_no_link_target(tmp_path):
    run = make_run(tmp_path / "run")
    target, content = _planted(tmp_path, run, "averaged.pt")
    with pytest.raises(UnsafePath, match="averaged.pt: a symbolic link"):
        average_run(run, last=1)
    with pytest.raises(UnsafePath), atomic_write(run / "averaged.pt") as f:
        f.write(b"x")
    assert target.read_bytes() == content


def test_resuming_a_run_directory_with_planted_links_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    _planted(tmp_path, run, "train_summary.json")
    with pytest.raises(UnsafePath, match="train_summary.json"):
        refuse_planted_links(run)


@pytest.mark.parametrize(
    "override",
    ["eval.name=/tmp/x", "eval.name=../x", "eval.name=a/b", "eval.name=..", "data.src_lang=de/../../x"],
)
def test_names_that_become_paths_stay_in_their_directory(override):
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.from_dotlist([override]))
    with pytest.raises(ConfigError, match="must be a plain name"):
        check_config(cfg)


@pytest.mark.parametrize("out", ["./last", "../x", "/tmp/avg", "last", "best", "step_3"])
def test_average_out_is_a_plain_name_that_is_not_trainings_own(tmp_path, out):
    cfg = OmegaConf.merge(OmegaConf.structured(AverageConfig), {"run": str(tmp_path), "out": out})
    with pytest.raises(UserError):
        check_config(cfg)
        average_run(tmp_path, 1, out)


def test_a_report_takes_the_run_from_the_directory_never_from_its_files(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    summary = {"run": "/etc", "name": "x", "model": "rnn", "parameters": 1, "train_minutes": 1.0, "epochs": 1.0}
    (run / "train_summary.json").write_text(json.dumps({**summary, "tokens_per_s": 1.0}))
    record = {"bleu": 1.0, "chrf": 1.0, "bleu_by_length": [], "src_lang": "de", "tgt_lang": "en", "sentences": 1}
    (run / "eval" / "test.json").write_text(json.dumps({**record, "name": "test"}))
    row = load_run_results(run)
    assert row["run"] == str(run) and row["name"] == "run"
    (run / "eval" / "test.json").write_text("[" * 100_000)
    with pytest.raises(UserError, match="not JSON"):
        load_run_results(run)


# ---- ranks exchange tensors, never pickles -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_values_ranks_exchange_round_trip_as_tensors_and_refuse_code():
    value = {"run": "runs/x", "rng": torch.get_rng_state(), "python_rng": list(range(5)), "best": (1.5, 3, None)}
    back = from_bytes(to_bytes(value))
    assert back["run"] == "runs/x" and torch.equal(back["rng"], value["rng"]) and back["best"] == (1.5, 3, None)

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    data = torch.frombuffer(bytearray(pickle.dumps(Payload())), dtype=torch.uint8)
    with pytest.raises(pickle.UnpicklingError):
        from_bytes(data)
