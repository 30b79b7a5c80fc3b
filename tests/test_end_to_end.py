"""Each model trained for a few steps on a slice of the real Multi30k, evaluated, its events read back."""

import json
import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from translate.config.schema import EvalConfig
from translate.decoding.inference import load_run
from translate.evaluation.evaluator import evaluate
from translate.evaluation.validation import validate
from translate.runtime import device as runtime
from translate.runtime.checkpoints import TrainState, load_checkpoint
from translate.training.run import train
from translate.training.trainer import NonFiniteLossError, Trainer

pytestmark = pytest.mark.slow  # each test trains a model (in process or as a command)

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "trainer.max_steps=6",
    "trainer.valid_every=3",
    "trainer.log_every=2",
    "trainer.batch_tokens=1500",
    "trainer.warmup_steps=2",
]


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("model", ["rnn", "rnn_attention", "transformer"])
def test_train_evaluate_and_read_events(model, multi30k_dir, small_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = small_cfg(model, *STEPS)
    train(cfg, run)
    for name in ("config.yaml", "tokenizer.model", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert OmegaConf.load(run / "config.yaml").model.name == model
    assert TrainState.from_checkpoint(load_checkpoint(run / "last.pt")).step == 6

    result = evaluate(run, OmegaConf.structured(EvalConfig(probe_per_k=4)))  # the probe: 4 inputs of each k
    assert result["sentences"] == 40 and result["model"] == model and result["probe"]["sentences"] == 20
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]), rel=1e-2) and result["loss"] > 0
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert sum(b["sentences"] for b in result["bleu_by_length"]) == 40
    assert json.loads((run / "eval" / "test.json").read_text())["bleu"] == result["bleu"]
    assert len((run / "eval" / "test.hyp").read_text().splitlines()) == 40

    acc = _events(run)
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/tokens_per_s",
        "train/grad_norm",
        "train/peak_memory_mib",
        "valid/loss",
        "valid/ppl",
        "valid/bleu",
    } <= tags
    assert [e.step for e in acc.Scalars("valid/loss")] == [3, 6]
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert {"eval/test/bleu", "eval/test/chrf", "eval/test/loss", "eval/test/ppl"} <= tags
    assert not [t for t in tags if "bleu_by_length" in t]  # a figure, not one single-point card per bucket
    assert {"valid/samples/text_summary", "eval/test/samples/text_summary"} <= set(acc.Tags()["tensors"])
    images = set(acc.Tags()["images"])
    figure = acc.Images("eval/test/bleu_by_length")[0]
    assert figure.step == result["step"] and figure.encoded_image_string.startswith(b"\x89PNG")
    assert (run / "eval" / "test_bleu_by_length.png").read_bytes().startswith(b"\x89PNG")
    attention = {t for t in images if "attention/" in t}
    expected = {
        "rnn": set(),
        "rnn_attention": {"attention/sentence0/alignment", "eval/test/attention/sentence0/alignment"},
        "transformer": {"attention/sentence1/layer2", "eval/test/attention/sentence1/layer2"},
    }
    assert expected[model] <= attention and (model != "rnn" or not attention)
    if attention:
        assert len(acc.Images(sorted(attention)[0])) == 2  # one per validation

    curve = tmp_path / "curve.png"
    command = [sys.executable, "scripts/time_to_bleu.py", str(run), "--png", str(curve)]
    table = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    rows = [
        line.split("|")[1:4] for line in table.stdout.splitlines() if line.startswith("| ") and "minutes" not in line
    ]
    assert [int(step) for _, step, _ in rows] == [3, 6]
    assert [float(bleu) for *_, bleu in rows] == [round(e.value, 2) for e in acc.Scalars("valid/bleu")]
    assert 0 <= float(rows[0][0]) <= float(rows[1][0])
    assert curve.read_bytes().startswith(b"\x89PNG")


def test_bf16_autocast_trains(multi30k_dir, small_cfg, tmp_path):
    # 8 validation pairs: where the CPU has no bf16 units (AVX2-only hosts) PyTorch emulates it, 40x slower than fp32
    trainer = Trainer(
        small_cfg("transformer", *STEPS, "trainer.precision=bf16", "data.valid_limit=8"), tmp_path / "run"
    )
    result = trainer.fit()
    assert trainer.state.step == 6 and math.isfinite(result["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    with pytest.raises(ValueError, match="unknown trainer.precision='fp8'; choose auto, fp32 or bf16"):
        Trainer(small_cfg("rnn", "trainer.precision=fp8"), tmp_path / "bad")


def test_precision_auto_follows_the_hardware(multi30k_dir, small_cfg, tmp_path, monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    assert runtime.resolve_precision("auto", cpu) == ("bf16", "the CPU has AVX512-BF16 and AMX-BF16")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f"})
    precision, why = runtime.resolve_precision("auto", cpu)
    assert precision == "fp32" and "neither AVX512-BF16 nor AMX" in why
    assert runtime.resolve_precision("bf16", cpu) == ("bf16", "trainer.precision=bf16")  # a choice is kept
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="translate.training.trainer"):  # the default, on this host
        trainer = Trainer(small_cfg("rnn", "trainer.precision=auto"), tmp_path / "run")
    expected = "bf16" if runtime.native_bf16(cpu) else "fp32"
    assert trainer.precision == expected and f"parameters on cpu, precision {expected} (" in caplog.text


def test_concatenated_training_examples(multi30k_dir, small_cfg, tmp_path):
    trainer = Trainer(small_cfg("rnn", *STEPS, "trainer.concat_prob=1.0", "trainer.concat_max=3"), tmp_path / "run")
    examples = [e for batch in trainer.epoch_batches() for e in batch]
    assert sorted(e[0] for e in examples) == list(range(len(trainer.data.store)))
    assert all(2 <= len(e) <= 3 for e in examples)
    batch = trainer.collate(examples[:1])
    assert batch.src.shape[1] == sum(len(trainer.data.store.src(i)) for i in examples[0]) + 1  # joined, then EOS
    assert list(trainer.epoch_batches()) == list(trainer.epoch_batches())  # fixed by seed and epoch
    trainer.fit()
    assert trainer.state.step == 6


def test_length_curriculum_joins_more_pairs_each_epoch(multi30k_dir, small_cfg, tmp_path):
    cfg = small_cfg("rnn", *STEPS, "trainer.concat_prob=1.0", "trainer.concat_max=3", "trainer.concat_ramp_epochs=2")
    trainer = Trainer(cfg, tmp_path / "run")
    first = [len(e) > 1 for batch in trainer.epoch_batches() for e in batch]
    trainer.state.epoch = 1
    assert all(len(e) > 1 for batch in trainer.epoch_batches() for e in batch)  # the ramp's end: every pair joined
    assert 0.4 < sum(first) / len(first) < 0.6  # the first of two epochs: half


@pytest.mark.parametrize("ema", [[], ["trainer.ema_decay=0.9"]], ids=["plain", "ema"])
def test_resume_continues_exactly(ema, multi30k_dir, small_cfg, tmp_path):
    straight = Trainer(small_cfg("transformer", *STEPS, *ema), tmp_path / "a")
    straight.fit()
    first = Trainer(small_cfg("transformer", *STEPS[1:], *ema, "trainer.max_steps=3"), tmp_path / "b")
    first.fit()
    resumed = Trainer(small_cfg("transformer", *STEPS, *ema, f"resume={tmp_path / 'b'}"), tmp_path / "b")
    assert resumed.state.step == 3
    resumed.fit()
    pairs = [(straight.model, resumed.model)]
    pairs += [(straight.update.ema, resumed.update.ema)] if ema else []  # its weights and its count of updates
    for a, b in pairs:
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


def test_the_moving_average_is_what_validation_and_evaluation_decode_with(multi30k_dir, small_cfg, tmp_path):
    """trainer.ema_decay=d: after update t, e = a·e + (1 − a)·w with a = min(d, (1 + t) / (10 + t)) (the first
    copies w); validation scores e, last.pt keeps it beside the training weights, and load_run (eval, translate,
    export) decodes with it."""
    decay, run_dir = 0.3, tmp_path / "run"
    trainer = Trainer(small_cfg("transformer", *STEPS, f"trainer.ema_decay={decay}"), run_dir)
    expected, step = {}, trainer.update.step

    def step_and_average(*args):
        out = step(*args)
        t = len(expected.get("updates", []))
        a = min(decay, (1 + t) / (10 + t))  # 0.18, 0.25 for t = 1, 2; then the decay, 0.3
        for name, w in trainer.model.state_dict().items():
            expected[name] = w.clone() if t == 0 else a * expected[name] + (1 - a) * w
        expected.setdefault("updates", []).append(t)
        return out

    trainer.update.step = step_and_average
    last_valid = trainer.fit()
    average, updates = trainer.update.ema.module.state_dict(), expected.pop("updates")
    assert updates == [0, 1, 2, 3, 4, 5]
    for name, tensor in expected.items():
        torch.testing.assert_close(average[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(average[n], w) for n, w in trainer.model.state_dict().items())

    ema, tokenizer, valid = trainer.update.ema.module, trainer.data.tokenizer, trainer.data.valid
    result = validate(ema, tokenizer, valid, 1024, 1, autocast=trainer.autocast)
    assert last_valid["loss"] == pytest.approx(result.loss, rel=1e-6)  # validation decoded with the average
    model, *_ = load_run(run_dir, "last", "cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, average[name]), name
    assert load_checkpoint(run_dir / "last.pt")["ema"]["n_averaged"].item() == 6


def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(multi30k_dir, tmp_path):
    """A real training process killed with SIGKILL between validations, resumed from its last.pt by a new process."""
    from conftest import SMALL_DATA, SMALL_MODELS

    common = [*SMALL_DATA, *SMALL_MODELS["transformer"], *STEPS[1:], "trainer.max_steps=12", "trainer.keep_last=0"]
    common.append("trainer.valid_bleu_sentences=8")
    common.append(f"data.tokenizer.cache_dir={tmp_path / 'tok'}")
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert _cli("-m", "translate", "train", *common, f"hydra.run.dir={straight}").returncode == 0

    command = [sys.executable, "-m", "translate", "train", *common, f"hydra.run.dir={cut}"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved_step = lambda: TrainState.from_checkpoint(load_checkpoint(cut / "last.pt")).step  # noqa: E731
    deadline = time.monotonic() + 300
    while (
        proc.poll() is None and time.monotonic() < deadline and not ((cut / "last.pt").exists() and saved_step() >= 6)
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert 3 <= saved_step() < 12, "killed before its first checkpoint or after the end"

    assert _cli("-m", "translate", "train", *common, f"resume={cut}", f"hydra.run.dir={cut}").returncode == 0
    a, b = (load_checkpoint(run / "last.pt") for run in (straight, cut))
    assert TrainState.from_checkpoint(b).step == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(multi30k_dir, small_cfg, tmp_path, monkeypatch):
    trainer = Trainer(small_cfg("rnn", *STEPS), tmp_path / "run")
    trainer.validate()  # writes last.pt / best.pt
    before = (tmp_path / "run" / "last.pt").read_bytes()
    original = trainer.update.loss
    monkeypatch.setattr(trainer.update, "loss", lambda batch: tuple(x * float("nan") for x in original(batch)))
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at step 2; lower trainer.lr"):
        trainer.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_command_line_train_then_eval_any_files(multi30k_dir, tmp_path):
    run = tmp_path / "cli-run"
    from conftest import SMALL_DATA, SMALL_MODELS

    cache = f"data.tokenizer.cache_dir={tmp_path / 'tok'}"
    done = _cli(
        "-m", "translate", "train", *SMALL_DATA, *SMALL_MODELS["rnn_attention"], *STEPS, cache, f"hydra.run.dir={run}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "train.log").read_text().count("valid loss") == 2
    assert f"make eval RUN={run}\n" in done.stdout and "make tensorboard" in done.stdout

    src, ref = tmp_path / "my.de", tmp_path / "my.en"
    src.write_text("Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    ref.write_text("A man rides a bike.\nTwo dogs play in the snow.\n")
    done = _cli("-m", "translate", "eval", f"run={run}", f"eval.src={src}", f"eval.ref={ref}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "my: 2 sentences, rnn_attention" in done.stdout
        and "BLEU" in done.stdout
        and "nrefs:1|case:mixed" in done.stdout
    )
    assert json.loads((run / "eval" / "my.json").read_text())["sentences"] == 2
    model, tokenizer, cfg, _ = load_run(run)
    assert cfg.model.name == "rnn_attention" and not model.training


def test_command_line_errors_are_one_line(tmp_path):
    done = _cli("-m", "translate", "eval", f"run={tmp_path}")
    assert done.returncode != 0
    assert (
        done.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/best.pt: no checkpoint here; "
        "train first (make train) or choose eval.checkpoint=last|best|<file.pt>"
    )
    done = _cli("-m", "translate", "train", "model.hiden_dim=3")
    assert done.returncode != 0 and "Key 'hiden_dim' not in 'ModelConfig'" in done.stderr
    done = _cli("-m", "translate", "train", "model=lstm")
    assert done.returncode != 0 and "Could not find 'model/lstm'" in done.stderr
