"""Faults a user meets, tried with real processes and real signals: each ends in one line and a documented exit
code, and nothing already written is lost (translate.runtime.errors lists the codes)."""

import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_synthetic
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from translate.decoding.options import DecodingOptions
from translate.runtime.checkpoints import CheckpointError, TrainState, load_checkpoint
from translate.runtime.errors import EXIT_USER_ERROR

pytestmark = pytest.mark.slow  # trains tiny runs and drives the commands as processes

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *tiny_synthetic(train_size=600, eval_size=12, max_len=10),
    "trainer.batch_tokens=300",
    "trainer.warmup_steps=5",
    "trainer.log_every=2",
    "trainer.valid_every=5",
    "trainer.max_minutes=0",
    "trainer.threads=1",
]


def tiny(tmp: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.tokenizer.cache_dir={tmp / 'tok'}", *extra]


def run(*args: str, stdin: bytes | None = None, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    """A real `python …` process of the project; stdout and stderr as text."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=300,
        preexec_fn=limit if limit_file_size else None,
    )
    done.stdout, done.stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    return done


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `error: …` line a refused command ends with (and no traceback)."""
    assert done.returncode == EXIT_USER_ERROR, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def step_of(path: Path) -> int:
    return TrainState.from_checkpoint(load_checkpoint(path)).step


def finished_run(tmp: Path, steps: int) -> Path:
    """A tiny run of `steps` updates, trained to the end by a real process."""
    done = run("-m", "translate", "train", *tiny(tmp, f"trainer.max_steps={steps}"), f"hydra.run.dir={tmp / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run (20 updates)."""
    return finished_run(tmp_path_factory.mktemp("trained"), 20)


# ---- settings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, named",
    [
        (["trainer.batch_tokens=-5"], ["trainer.batch_tokens=-5"]),
        (["model.dropout=1.5", "trainer.label_smoothing=-0.1"], ["model.dropout=1.5", "trainer.label_smoothing=-0.1"]),
        (["trainer.precision=fp8", "data.tokenizer.vocab_size=0"], ["trainer.precision=fp8", "vocab_size=0"]),
    ],
)
def test_bad_settings_stop_the_command_before_any_data_is_read(bad, named, tmp_path):
    missing = tmp_path / "no-such-corpus"  # read before the settings were checked, this would be the error
    done = run("-m", "translate", "train", f"data.dir={missing}", *bad, f"hydra.run.dir={tmp_path / 'run'}")
    line = one_error_line(done)
    assert all(key in line for key in named) and "default" in line and str(missing) not in line
    assert not (tmp_path / "run" / "config.yaml").exists()


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def damaged(path: Path, how: str, rng: random.Random) -> None:
    good = path.read_bytes()
    if how == "truncated":
        path.write_bytes(good[: rng.randrange(1, len(good) - 1)])
    elif how == "random bytes":
        path.write_bytes(rng.randbytes(rng.randrange(1, 50_000)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bytes flipped in its index":  # the zip's central directory, at the end of the file
        tail = bytearray(good[-200:])
        for i in rng.sample(range(len(tail)), 20):
            tail[i] ^= 0xFF
        path.write_bytes(good[:-200] + bytes(tail))
    elif how == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif how == "newer format":
        torch.save({**torch.load(path, weights_only=True), "format": 99}, path)


@pytest.mark.parametrize(
    "how", ["truncated", "random bytes", "empty", "bytes flipped in its index", "not a checkpoint", "newer format"]
)
def test_a_damaged_checkpoint_is_named_and_refused(how, trained, tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes((trained / "best.pt").read_bytes())
    damaged(path, how, random.Random(how))
    with pytest.raises(CheckpointError, match=f"^{path}: ") as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("how", ["truncated", "random bytes"])
def test_make_eval_refuses_a_damaged_best_pt_in_one_line(how, trained, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("best.pt", "tokenizer.model", "config.yaml"):
        (copy / name).write_bytes((trained / name).read_bytes())
    damaged(copy / "best.pt", how, random.Random(7))
    line = one_error_line(run("-m", "translate", "eval", f"run={copy}"))
    assert line.startswith(f"error: {copy / 'best.pt'}: unreadable") and "last.pt" in line


def test_resume_with_another_model_or_tokenizer_is_refused_before_training(trained, tmp_path):
    before = (trained / "last.pt").read_bytes()
    changed = ["data.tokenizer.vocab_size=40", "model.ff_dim=48"]
    done = run("-m", "translate", "train", *tiny(trained.parent, *changed), f"resume={trained}")
    line = one_error_line(done)
    assert "data.tokenizer.vocab_size=36 (now 40)" in line and "model.ff_dim=64 (now 48)" in line
    assert line.endswith("add data.tokenizer.vocab_size=36 model.ff_dim=64")
    assert (trained / "last.pt").read_bytes() == before


def test_training_into_a_directory_holding_a_run_is_refused(trained):
    before = (trained / "last.pt").read_bytes()
    line = one_error_line(run("-m", "translate", "train", *tiny(trained.parent), f"hydra.run.dir={trained}"))
    assert f"resume={trained}" in line
    assert (trained / "last.pt").read_bytes() == before


# ---- corpora -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "train_lines, expected",
    [
        (([], []), "train.de + train.en: no training pairs"),
        ((["", "  "], ["a", ""]), "no training pairs with text on both sides"),
        ((["ein langer satz hier"] * 3, ["a long sentence here"] * 3), "vocab_size=8000 pieces from 6 lines"),
        ((["ein langer satz hier"] * 3, ["a long sentence here"] * 3, "char"), "longer than data.max_tokens=2"),
    ],
)
def test_an_empty_corpus_is_one_line(train_lines, expected, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    model_type = train_lines[2] if len(train_lines) > 2 else "unigram"
    for split, (de, en, *_) in {"train": train_lines, "val": (["ein hund"], ["a dog"])}.items():
        (corpus / f"{split}.de").write_text("".join(line + "\n" for line in de))
        (corpus / f"{split}.en").write_text("".join(line + "\n" for line in en))
    for lang in ("de", "en"):
        (corpus / f"test_2016_flickr.{lang}").write_text("x\n")
    settings = [f"data.dir={corpus}", f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "data.max_tokens=2"]
    if model_type == "char":
        settings += ["data.tokenizer.model_type=char", "data.tokenizer.vocab_size=20"]
    line = one_error_line(run("-m", "translate", "train", *settings, f"hydra.run.dir={tmp_path / 'run'}"))
    assert expected in line


# ---- the translate command -------------------------------------------------------------------------------------------
def test_translate_gives_one_line_per_input_line_whatever_the_input(trained):
    rng = random.Random(17)
    garbage = bytes(b for b in rng.randbytes(3000) if b != 0x0A)  # invalid UTF-8 on one line
    huge = " ".join(f"s{rng.randrange(32)}" for _ in range(5000))  # beyond the Transformer's 1,024 positions
    lines = [b"s1 s2 s3", garbage, b"", huge.encode(), "s4 s5 \u00e9\u4e2d".encode(), b"\xff\xfe s7", b"s8 s9"]
    done = run("-m", "translate", "translate", f"run={trained}", stdin=b"\n".join(lines) + b"\n")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == ""
    assert out[2] == ""  # an empty line stays empty; the others are translated (what a 20-update model says)
    assert "line 2: invalid UTF-8" in done.stderr and "line 6: invalid UTF-8" in done.stderr
    assert re.search(r"line 4: \d+ characters, at least \d+ subword tokens; translating its first 1023", done.stderr)
    assert "Traceback" not in done.stderr and "not translated" not in done.stderr


def test_a_line_that_fails_leaves_an_empty_line_and_the_others_translated(trained, monkeypatch):

    import translate.decoding.inference as cli
    from translate.decoding.inference import load_run

    model, tokenizer, _, _ = load_run(trained)

    def fails_on_s9(model, tokenizer, texts, options, *args):  # a stand-in decoder: upper case, or a failure
        if any("s9" in text for text in texts):
            raise RuntimeError("out of memory (injected)")
        return [cli.Translation(text.upper(), 0.0, [(text.upper(), 0.0)]) for text in texts]

    monkeypatch.setattr(cli, "translate_full", fails_on_s9)
    lines = ["s1 s2", "s3 s9", "", "s4"]
    out, failed = cli.translate_safely(model, tokenizer, lines, DecodingOptions(), first=10)
    assert failed == 1 and out == ["S1 S2", "", "", "S4"]


# ---- one writer per run, signals, resume -------------------------------------------------------------------------
def start_training(tmp: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "translate", "train", *tiny(tmp, *extra), f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)


def test_one_writer_per_run_directory_and_no_stale_lock_after_kill_9(tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(tmp_path, run_dir, "trainer.max_steps=100000")
    try:
        wait_for_checkpoint(first, run_dir / "last.pt")
        for attempt in ([f"hydra.run.dir={run_dir}"], [f"resume={run_dir}"]):
            line = one_error_line(run("-m", "translate", "train", *tiny(tmp_path), *attempt))
            assert f"in use by process {first.pid}" in line and f"kill {first.pid}" in line
    finally:
        first.kill()
        first.communicate()
    step = step_of(run_dir / "last.pt")
    done = run("-m", "translate", "train", *tiny(tmp_path, f"trainer.max_steps={step + 2}"), f"resume={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert step_of(run_dir / "last.pt") == step + 2


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of 60 updates, the reference for the interrupted ones."""
    return finished_run(tmp_path_factory.mktemp("straight"), 60)


def same_weights(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    for name, tensor in x.items():
        assert torch.equal(tensor, y[name]), name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_last_pt_prints_the_resume_command_and_the_resumed_run_is_exact(sig, straight, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training(tmp_path, run_dir, "trainer.max_steps=60")
    wait_for_checkpoint(proc, run_dir / "last.pt")
    time.sleep(random.Random(sig).uniform(0, 0.3))  # somewhere in an update, a validation or a save
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    stopped = step_of(run_dir / "last.pt")
    assert f"stopped by {sig.name} at step {stopped}; last.pt saved" in stderr and "Traceback" not in stderr
    resume = stderr.split("resume:\n", 1)[1].strip().splitlines()[0].split()
    assert resume[:2] == ["make", "train"] and resume[-1] == f"resume={run_dir}" and "trainer.max_steps=60" in resume
    assert 5 <= stopped < 60, "the signal came after the end"

    done = run("-m", "translate", "train", *resume[2:])  # the printed command, without make
    assert done.returncode == 0, done.stderr[-3000:]
    same_weights(straight / "last.pt", run_dir / "last.pt")
    no_step_twice(run_dir)


def no_step_twice(run_dir: Path) -> None:
    """Read back as TensorBoard shows it: every training-loss step once, in order."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)), steps
    assert steps[-1] == 60


def test_a_second_ctrl_c_aborts_at_once():
    from translate.runtime.signals import GracefulStop

    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises here, at once
    assert signal.getsignal(signal.SIGINT) is before


def test_kill_9_then_resume_shows_every_step_once_in_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training(tmp_path, run_dir, "trainer.max_steps=60")
    wait_for_checkpoint(proc, run_dir / "last.pt")
    while step_of(run_dir / "last.pt") < 10:  # events past the checkpoint are written, then lost with the process
        assert proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.2)
    proc.kill()
    proc.communicate()
    done = run("-m", "translate", "train", *tiny(tmp_path, "trainer.max_steps=60"), f"resume={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    no_step_twice(run_dir)


# ---- disks that refuse ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [150_000, 600_000])
def test_a_file_size_limit_is_one_line_and_leaves_no_half_file(limit, tmp_path):
    """150 kB stops the tokenizer's copy into the run, 600 kB the first checkpoint (d_model 64: ~1.1 MB)."""
    run_dir = tmp_path / "run"
    args = tiny(tmp_path, "model.d_model=64", "model.ff_dim=128")
    warm = run("-m", "translate", "train", *args, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'warm'}")
    assert warm.returncode == 0, warm.stderr[-3000:]  # the tokenizer cache, written without the limit
    done = run(
        "-m", "translate", "train", *args, "trainer.max_steps=10", f"hydra.run.dir={run_dir}", limit_file_size=limit
    )
    line = one_error_line(done)
    assert "ulimit -f" in line and str(run_dir) in line
    assert not [p for p in run_dir.iterdir() if p.name.endswith((".tmp", ".link"))]
    for path in run_dir.glob("*.pt"):
        load_checkpoint(path)


# ---- crashes while writing -----------------------------------------------------------------------------------------
def test_a_crash_at_any_point_of_checkpoint_writing_resumes_from_a_checkpoint_that_loads(tmp_path):
    """tests/crash_at.py kills training (os._exit) at the k-th fsync, rename, link or half-written torch.save,
    for every k of a 10-update run with two validations (config, tokenizer, last.pt, step_N.pt, best.pt, summary);
    each time every checkpoint left loads, and `resume=auto` in the same directory finishes the run with the
    weights of an uninterrupted one."""
    settings = tiny(tmp_path, "trainer.max_steps=10", "resume=auto")
    done = run("tests/crash_at.py", str(tmp_path), *settings)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("crash_at: ")]
    points, runs = int(lines[0][1]), [tuple(map(int, line)) for line in lines[1:]]
    assert points >= 20 and len(runs) == points
    for k, crashed, resumed in runs:
        assert (crashed, resumed) == (86, 0), (k, crashed, resumed, done.stderr[-3000:])
        run_dir = tmp_path / f"crash{k}"
        same_weights(tmp_path / "reference" / "last.pt", run_dir / "last.pt")
        assert step_of(run_dir / "best.pt") == step_of(tmp_path / "reference" / "best.pt"), k
        assert (run_dir / "train_summary.json").is_file()
        assert not [p for p in run_dir.iterdir() if p.name.endswith((".tmp", ".link"))], k
