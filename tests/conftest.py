import functools
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from translate.config.schema import ModelConfig, register_configs
from translate.data.batching import collate
from translate.data.corpus import SHARED_MULTI30K
from translate.data.tokenizer import BOS, EOS
from translate.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_configs()
# `make test` runs two workers (pytest-xdist): each takes its share of the cores, and so do the processes it starts
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The real corpus in ../shared; its absence fails under CI=true and skips elsewhere."""
    if not (SHARED_MULTI30K / "train.de.gz").exists():
        message = f"Multi30k not found at {SHARED_MULTI30K}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_MULTI30K


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, multi30k_dir) -> Path:
    """Three small runs side by side, trained (40 updates) and evaluated, as one `make compare` leaves them; once per
    test process, shared by the server's tests (read only)."""
    from omegaconf import OmegaConf

    from translate.config.schema import EvalConfig
    from translate.evaluation.evaluator import evaluate
    from translate.training.run import train

    root = tmp_path_factory.mktemp("sweep")
    data = ["trainer.precision=fp32", "data.train_limit=1500", "data.valid_limit=20", "data.test_limit=20"]
    data += ["data.tokenizer.vocab_size=600", f"data.tokenizer.cache_dir={root.parent / 'tokenizers'}"]
    steps = ["trainer.max_steps=40", "trainer.valid_every=40", "trainer.batch_tokens=1500", "trainer.warmup_steps=10"]
    for family in ("rnn", "rnn_attention", "transformer"):
        train(compose_train([*data, *SMALL_MODELS[family], *steps]), root / family)
        evaluate(root / family, OmegaConf.structured(EvalConfig(probe_per_k=2)))
    return root


def optional_package(name: str):
    """An optional dependency (pyproject.toml's extras, all in `dev`): imported, or the test skipped, except under
    CI=true, where its absence fails."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (pip install -e '.[dev]')")
        pytest.skip(f"{name} is not installed")


def compose_train(overrides: list[str]):
    """The training config exactly as `translate train <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=overrides)


SMALL_DATA = [  # fp32 pinned: figures compared across runs must not depend on the host's bf16 (precision=auto)
    "trainer.precision=fp32",
    "data.train_limit=1500",
    "data.valid_limit=40",
    "data.test_limit=40",
    "data.tokenizer.vocab_size=600",
]
SMALL_MODELS = {
    "rnn": ["model=rnn", "model.emb_dim=32", "model.hidden_dim=48"],
    "rnn_attention": ["model=rnn_attention", "model.emb_dim=32", "model.hidden_dim=48", "model.attention_dim=32"],
    "transformer": [
        "model=transformer",
        "model.d_model=32",
        "model.heads=2",
        "model.ff_dim=64",
        "model.enc_layers=2",
        "model.dec_layers=2",
    ],
}


def tiny_synthetic(train_size: int, eval_size: int, max_len: int) -> list[str]:
    """Overrides for a one-layer Transformer (d_model 32) on a small reversal task: runs of a few seconds."""
    sizes = {"train": train_size, "valid": eval_size, "test": eval_size}
    data = [f"data.synthetic.{split}_size={n}" for split, n in sizes.items()]
    model = ["model.d_model=32", "model.heads=2", "model.ff_dim=64", "model.enc_layers=1", "model.dec_layers=1"]
    return ["data=synthetic", *data, f"data.synthetic.max_len={max_len}", *model, "trainer.precision=fp32"]


@pytest.fixture
def small_cfg(tmp_path):
    """A config for a tiny model on a slice of Multi30k, with the tokenizer cache in tmp_path's parent."""

    def make(model: str, *extra: str):
        cache = tmp_path.parent / "tokenizers"
        return compose_train([*SMALL_DATA, *SMALL_MODELS[model], f"data.tokenizer.cache_dir={cache}", *extra])

    return make


def pytest_collection_modifyitems(items):
    """The longest test (JoeyNMT installed and trained beside us, minutes) first: under two workers the rest of
    the suite then runs beside it instead of after it."""
    items.sort(key=lambda item: item.path.name != "test_peers.py")


# ---- tiny models trained to copy their input, shared by the search and attention tests ---------------------------
COPY_VOCAB = 24
COPY_MODELS = {
    "rnn": dict(name="rnn", enc_layers=1, dec_layers=1, emb_dim=24, hidden_dim=32, dropout=0.0),
    "rnn_attention": dict(
        name="rnn_attention", enc_layers=1, dec_layers=1, emb_dim=24, hidden_dim=32, attention_dim=16, dropout=0.0
    ),
    "transformer": dict(name="transformer", d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2, dropout=0.0),
}
assert (BOS, EOS) == (2, 3)  # the ids the copy task's sentences (4 and up) leave free


def copy_sentences(n: int, seed: int) -> list[list[int]]:
    """n random sentences of 2-9 tokens from the copy vocabulary, fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(4, COPY_VOCAB, (int(torch.randint(2, 10, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@functools.cache
def copy_model(name: str):
    """A tiny model of family `name` trained for 30 steps to copy its input: neither uniform nor perfect, so outputs
    vary in length, end with EOS or at the length limit, and beam search has something to find.  One per process."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**COPY_MODELS[name]), COPY_VOCAB)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        seqs = copy_sentences(32, seed=100 + step)
        batch = collate(seqs, seqs, list(range(32)))
        logits = model(batch.src, batch.src_mask, batch.tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# ---- tiny models and batches, shared by the model tests -------------------------------------------------------------
def padded_batch(vocab: int, tgt_len: int = 7):
    """src (4, 9) with two padded rows (lengths 6 and 2), its mask, and tgt_in (4, tgt_len): random ids ≥ 4, seed 1."""
    torch.manual_seed(1)
    src = torch.randint(4, vocab, (4, 9))
    src[1, 6:] = 0
    src[3, 2:] = 0
    return src, src != 0, torch.randint(4, vocab, (4, tgt_len))


def tiny_attention_rnn(attention: str, vocab: int = 40, seed: int = 0, **changes):
    """An attention RNN (one layer each side, embeddings 16, hidden 24, attention 12) with scorer `attention`."""
    torch.manual_seed(seed)
    sizes = dict(enc_layers=1, dec_layers=1, emb_dim=16, hidden_dim=24, attention_dim=12)
    return build_model(ModelConfig(name="rnn_attention", attention=attention, **(sizes | changes)), vocab)
