"""On a GPU for real: mixed precision, decoding, checkpoints across devices, torch.compile, nccl, the device choice.

Every test here needs an NVIDIA GPU and is skipped without one (marker `cuda`), so CI stays green;
scripts/gpu_check.sh runs them on the device machine (docs/gpu.md). The models are the CPU tests' tiny ones (a
one-layer Transformer on the synthetic reversal task, test_search's copy models), so each test takes seconds there.

TRANSLATE_CUDA_TESTS_ON_CPU=1 runs them on a CPU instead, as a stand-in that checks the tests' own logic: the GPU
side of each comparison is then the CPU as well, the nccl test runs on gloo, and the two that need CUDA itself (fp16,
torch.compile) stay skipped. It proves nothing about CUDA.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_synthetic
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from translate.data.tokenizer import PAD
from translate.decoding.search import beam_search, greedy_search
from translate.models.loss import sequence_loss
from translate.runtime.checkpoints import TrainState, load_checkpoint
from translate.runtime.device import autocast
from translate.training.run import train
from translate.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
STAND_IN = not HAS_CUDA and os.environ.get("TRANSLATE_CUDA_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (HAS_CUDA or STAND_IN),
        reason="needs an NVIDIA GPU (torch.cuda.is_available() is False); scripts/gpu_check.sh runs these on one",
    ),
]
GPU = "cuda" if HAS_CUDA else "cpu"  # the stand-in's "GPU" is the CPU
needs_cuda_itself = pytest.mark.skipif(STAND_IN, reason="CPU stand-in: this test needs CUDA itself")
TORCHRUN_ONE = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
TINY = [
    *tiny_synthetic(train_size=600, eval_size=8, max_len=10),
    "trainer.batch_tokens=400",
    "trainer.warmup_steps=4",
    "trainer.lr=1e-3",  # the resume tolerance below is half an Adam step at this rate (tests/test_distributed.py)
    "trainer.log_every=1",
    "trainer.max_minutes=0",
    "trainer.ema_decay=0",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    """One SentencePiece cache for the module's runs (the synthetic corpus is the same for all)."""
    return tmp_path_factory.mktemp("tok")


def settings(tok: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.tokenizer.cache_dir={tok}", *extra]


def tiny(tok: Path, *extra: str):
    return compose_train(settings(tok, *extra))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pt")["model"]  # mapped to the CPU


def step_of(run_dir: Path) -> int:
    return TrainState.from_checkpoint(load_checkpoint(run_dir / "last.pt")).step


def losses(run_dir: Path) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def mean_nll(trainer: Trainer, batch, precision: str | None = None) -> float:
    """The batch's NLL per target token in eval mode (no dropout), under the trainer's precision or `precision`."""
    trainer.model.eval()
    with torch.no_grad(), autocast(trainer.device, precision or trainer.precision):
        nll = sequence_loss(trainer.model, batch, trainer.tc.label_smoothing, PAD, trainer.tc.loss_chunk)[1]
    trainer.model.train()
    return float(nll) / batch.num_tgt_tokens


@pytest.fixture
def strict_fp32():
    """fp32 as on a CPU: no TF32 in matmuls or cuDNN (the GRU) while comparing the GPU's numbers with the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- mixed precision -------------------------------------------------------------------------------------------
def test_device_auto_takes_the_gpu_and_bf16_autocast_trains_there(tmp_path, tok):
    trainer = Trainer(tiny(tok, "trainer.device=auto", "trainer.precision=bf16", "trainer.max_steps=30"), tmp_path)
    assert trainer.device.type == GPU and trainer.precision == "bf16"
    batch = trainer.collate(trainer.epoch_batches()[0])
    before, fp32 = mean_nll(trainer, batch), mean_nll(trainer, batch, "fp32")
    assert before != fp32 and before == pytest.approx(fp32, rel=2e-2)  # autocast on, and close to fp32
    trainer.fit()
    trainer.close()
    assert trainer.state.step == 30 and trainer.state.skipped_steps == 0
    assert all(p.dtype == torch.float32 and p.device.type == GPU for p in trainer.model.parameters())
    assert mean_nll(trainer, batch) < 0.9 * before  # it learned
    assert all(math.isfinite(x) for x in losses(tmp_path))


@needs_cuda_itself
def test_fp16_grad_scaler_skips_an_overflowed_update_halves_the_scale_and_is_checkpointed(tmp_path, tok, monkeypatch):
    """tests/test_cluster.py's CPU test, on CUDA with fp16 itself: the GradScaler the trainer makes is on, an update
    whose gradients overflow is skipped and counted, the scale halves, and last.pt keeps both."""
    trainer = Trainer(tiny(tok, "trainer.device=cuda", "trainer.precision=fp16", "trainer.max_steps=1"), tmp_path)
    assert trainer.precision == "fp16" and trainer.update.scaler.is_enabled()
    batch = trainer.collate(trainer.epoch_batches()[0])
    assert mean_nll(trainer, batch) == pytest.approx(mean_nll(trainer, batch, "fp32"), rel=1e-2)
    trainer.update.scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    real = trainer.update.loss
    monkeypatch.setattr(trainer.update, "loss", lambda batch: (real(batch)[0] * float("inf"), real(batch)[1]))
    trainer.fit()
    assert trainer.state.skipped_steps == 1 and trainer.update.scaler.get_scale() == 512.0
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())  # not applied

    monkeypatch.setattr(trainer.update, "loss", real)
    trainer.tc.max_steps = 6
    trainer.fit()  # finite gradients: applied, the scale kept
    trainer.close()
    assert trainer.state.skipped_steps == 1 and trainer.update.scaler.get_scale() == 512.0
    assert not all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["scaler"]["scale"] == 512.0 and ckpt["train_state"]["skipped_steps"] == 1
    assert all(math.isfinite(x) for x in losses(tmp_path))


# ---- decoding --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rnn", "rnn_attention", "transformer"])
def test_greedy_and_beam_on_the_gpu_equal_the_cpus_on_the_same_weights(name, strict_fp32):
    """test_search's tiny copy models (trained on the CPU), decoded on the CPU and, with the same fp32 weights, on
    the GPU: the same tokens, and scores within float rounding."""
    from test_search import BOS, EOS, _batch, _model

    cpu_model, (src, mask, max_len) = _model(name), _batch(12, extra_padding=2)
    gpu_model = copy.deepcopy(cpu_model).to(GPU).eval()
    gpu_src, gpu_mask = src.to(GPU), mask.to(GPU)
    for search, options in ((greedy_search, {}), (beam_search, {"beam_size": 5, "alpha": 0.6, "n_best": 2})):
        on_cpu = search(cpu_model, src, mask, BOS, EOS, max_len, **options)
        on_gpu = search(gpu_model, gpu_src, gpu_mask, BOS, EOS, max_len, **options)
        if search is greedy_search:
            on_cpu, on_gpu = [[h] for h in on_cpu], [[h] for h in on_gpu]
        assert [[h.tokens for h in n] for n in on_gpu] == [[h.tokens for h in n] for n in on_cpu], search.__name__
        cpu_scores = [h.score for n in on_cpu for h in n]
        assert [h.score for n in on_gpu for h in n] == pytest.approx(cpu_scores, abs=1e-3)


# ---- checkpoints across devices --------------------------------------------------------------------------------
def test_a_checkpoint_written_on_the_gpu_resumes_in_a_process_without_cuda(tmp_path, tok):
    run_dir = tmp_path / "run"
    train(tiny(tok, f"trainer.device={GPU}", "trainer.max_steps=4", "trainer.valid_every=4"), run_dir)
    if HAS_CUDA:  # written from CUDA tensors: a plain load in this process puts them back there
        saved = torch.load(run_dir / "last.pt", weights_only=True)
        assert next(iter(saved["model"].values())).device.type == "cuda"
    at_4 = weights(run_dir)
    command = [sys.executable, "-m", "translate", "train", *settings(tok, "trainer.device=cpu", "trainer.max_steps=8")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a process that sees no GPU at all
    done = subprocess.run(
        [*command, "trainer.valid_every=4", f"resume={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"resumed from {run_dir / 'last.pt'} at step 4" in (run_dir / "train.log").read_text()
    assert step_of(run_dir) == 8
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["steps"] == 8
    at_8 = weights(run_dir)
    assert any(not torch.equal(at_8[k], at_4[k]) for k in at_4)  # it went on training
    assert all(torch.isfinite(t).all() for t in at_8.values())


def test_a_checkpoint_written_on_the_cpu_resumes_on_the_gpu(tmp_path, tok):
    run_dir = tmp_path / "run"
    train(tiny(tok, "trainer.device=cpu", "trainer.max_steps=4", "trainer.valid_every=4"), run_dir)
    at_4 = weights(run_dir)
    resumed = tiny(tok, f"trainer.device={GPU}", "trainer.max_steps=8", "trainer.valid_every=4", f"resume={run_dir}")
    trainer = Trainer(resumed, run_dir)
    try:
        assert trainer.state.step == 4 and trainer.device.type == GPU
        for name, tensor in trainer.model.state_dict().items():  # the CPU's weights, now on the GPU
            assert tensor.device.type == GPU and torch.equal(tensor.cpu(), at_4[name]), name
        optimizer_state = [t for s in trainer.update.optimizer.state.values() for t in s.values() if t.dim() > 0]
        assert optimizer_state and all(t.device.type == GPU for t in optimizer_state)
        trainer.fit()
    finally:
        trainer.close()
    assert step_of(run_dir) == 8


def test_a_run_killed_and_resumed_on_the_gpu_ends_as_the_uninterrupted_run(tmp_path, tok):
    """With dropout, so the random streams must be restored too (the CPU's are, tests/test_end_to_end.py): weights
    within half an Adam step at lr 1e-3, as tests/test_distributed.py allows for float rounding. (Resumed with
    dropout drawing other masks, 20 % of the weights differ by more, up to 3.6e-3, measured on the CPU.) SDPA's
    math kernel: the memory-efficient one's backward is not deterministic on CUDA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    common = [f"trainer.device={GPU}", "trainer.valid_every=4", "model.dropout=0.1", "trainer.precision=fp32"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    with sdpa_kernel(SDPBackend.MATH):
        train(tiny(tok, *common, "trainer.max_steps=8"), whole)
        train(tiny(tok, *common, "trainer.max_steps=4"), cut)
        train(tiny(tok, *common, "trainer.max_steps=8", f"resume={cut}"), cut)
    assert step_of(whole) == step_of(cut) == 8
    x, y = weights(whole), weights(cut)
    for name, tensor in x.items():
        torch.testing.assert_close(y[name], tensor, rtol=0, atol=5e-4, msg=lambda m, name=name: f"{name}: {m}")


# ---- torch.compile ---------------------------------------------------------------------------------------------
@needs_cuda_itself
def test_compiled_training_on_the_gpu_matches_eager(tmp_path, tok):
    """trainer.compile=true: the model's features through torch.compile (inductor, Triton kernels) under bf16."""
    compiled = ["trainer.compile=true", "model.dropout=0", "trainer.max_steps=3"]
    trainer = Trainer(tiny(tok, "trainer.device=cuda", "trainer.precision=bf16", *compiled), tmp_path)
    batch = trainer.collate(trainer.epoch_batches()[0])
    compiled, eager = (float(trainer.update.loss(batch, eager=flag)[1]) for flag in (False, True))
    assert compiled == pytest.approx(eager, rel=2e-2)
    trainer.fit()
    trainer.close()
    assert trainer.state.step == 3
    assert all(math.isfinite(x) for x in losses(tmp_path))


# ---- torchrun, nccl, and what the run's log says ---------------------------------------------------------------
NCCL_RANK = """
import os
from pathlib import Path

import torch
import torch.distributed as dist

from omegaconf import OmegaConf

from translate.runtime.ranks import Distributed, from_environment
from translate.training.run import train


class OneRankGroup(Distributed):  # a group of one, its data-parallel code paths on as for several ranks
    @property
    def enabled(self):
        return True


asked, start_group = {{}}, dist.init_process_group


def start_one(backend=None, *args, **kwargs):  # the group from_environment starts, with this one rank in it
    asked["backend"] = backend
    start_group(backend, *args, **{{**kwargs, "world_size": 1, "rank": 0}})


dist.init_process_group, os.environ["WORLD_SIZE"] = start_one, "2"  # from_environment: one rank of several
try:
    several, device = from_environment({device!r})
finally:
    dist.init_process_group, os.environ["WORLD_SIZE"] = start_group, "1"
assert dist.is_initialized() and several.enabled and several.rank == 0, several
if device.type == "cuda":
    assert device == torch.device("cuda", 0) and torch.cuda.current_device() == 0, device
print(f"process group {{asked['backend']}} ({{dist.get_backend()}}), device {{device}}", flush=True)
ranks = OneRankGroup(0, 1, 0)
assert ranks.sum([1.5, 2.0]) == [1.5, 2.0], "Distributed.sum"
assert ranks.gather({{"rank": 0}}) == [{{"rank": 0}}], "Distributed.gather"
assert ranks.broadcast((3, "x")) == (3, "x"), "Distributed.broadcast"
assert ranks.main_first(lambda: 7) == 7
ranks.barrier()
summary = train(OmegaConf.load({config!r}), Path({run_dir!r}), ranks, device)  # DDP and every collective
assert summary["steps"] == 4 and summary["ranks"] == 1, summary
dist.destroy_process_group()
print("one-rank run: ok")
"""


def test_a_one_rank_nccl_group_runs_the_data_parallel_training_loop(tmp_path, tok):
    """One GPU cannot hold two nccl ranks, so one rank under torchrun starts the process group translate's own
    from_environment starts for one rank of several (nccl on CUDA), in a world of one, and takes every data-parallel
    path on it: DistributedDataParallel, the per-step all-reduce, the gathers and broadcasts. (The CPU stand-in:
    gloo.)"""
    overrides = settings(tok, f"trainer.device={GPU}", "trainer.max_steps=4", "trainer.valid_every=2")
    script = tmp_path / "one_rank.py"
    run_dir = str(tmp_path / "run")
    config = tmp_path / "config.yaml"  # composed here, read there: the script needs nothing from tests/
    OmegaConf.save(compose_train(overrides), config, resolve=True)
    script.write_text(NCCL_RANK.format(config=str(config), device=GPU, run_dir=run_dir))
    done = subprocess.run([*TORCHRUN_ONE, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert f"process group {'nccl' if HAS_CUDA else 'gloo'}" in done.stdout and "one-rank run: ok" in done.stdout
    assert step_of(tmp_path / "run") == 4


def test_torchrun_one_rank_trains_on_the_gpu_and_the_log_names_it_and_the_precision(tmp_path, tok):
    """`make train NPROC=1` as torchrun runs it, device and precision left to `auto`: the run's log names the GPU
    and the precision chosen, and the summary the device."""
    run_dir = tmp_path / "run"
    auto = settings(tok, "trainer.device=auto", "trainer.precision=auto", "trainer.max_steps=4")
    command = [*TORCHRUN_ONE, "-m", "translate", "train", *auto, "trainer.valid_every=4", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["device"].startswith(GPU) and summary["steps"] == 4
    log = (run_dir / "train.log").read_text()
    line = next(line for line in log.splitlines() if " parameters on " in line)
    assert f" parameters on {summary['device']}, precision {summary['precision']} (" in line
    if HAS_CUDA:
        assert summary["device"] == "cuda" and summary["precision"] == "bf16"  # Hopper computes in bf16
        assert torch.cuda.get_device_name(0) in line, line
