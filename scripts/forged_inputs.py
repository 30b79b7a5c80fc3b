"""Forged run directories against the commands that read them: status, wall time and peak memory of each.

    python scripts/forged_inputs.py [--timeout 60] [--memory-gb 6] [--case NAME …]

Each case plants one small hostile file (an expansion bomb, a size the data must not obey, a link or a broadcast
among the checkpoints averaged, a value that is not what a run writes) and runs the command a user would run on
it as a process of its own, under a wall-clock limit and an address-space limit, so that the old behaviour
(minutes, gigabytes) is measured without taking the machine down.  It prints one markdown row per case: the
command's exit status, its wall time, its peak resident memory, and its last line of output (the refusal).
docs/security.md lists the bounds these cases meet; tests/test_bounded_files.py asserts them.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from measure import run_measured

from translate.evaluation.metrics import corpus_scores

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_trust import make_run, shared_lists  # noqa: E402  a tiny real run; a config that expands

PY = sys.executable


def memo_bomb(run: Path) -> list[str]:
    make_run(run, lambda c: c.update(x=shared_lists()))
    return [PY, "-m", "translate", "eval", f"run={run}"]


def yaml_bomb(run: Path) -> list[str]:
    """A config.yaml of ~500 bytes whose anchors expand to 20**5 values, read when a run is resumed."""
    make_run(run)
    lines = [f"a0: &a0 [{', '.join(['x'] * 20)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 20)}]" for i in range(1, 5)]
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    return [PY, "-m", "translate", "train", f"hydra.run.dir={run}", "resume=auto", "trainer.max_steps=1"]


def synthetic_sizes(run: Path) -> list[str]:
    def edit(c):
        c["data"].update(name="synthetic", test_limit=10**12)
        c["data"]["synthetic"].update(symbols=2 * 10**9, min_len=10**8, max_len=10**8)

    make_run(run, edit)
    return [PY, "-m", "translate", "eval", f"run={run}"]


def average_link(run: Path) -> list[str]:
    make_run(run)
    outside = run.parent / "outside.pt"
    (run / "step_1.pt").rename(outside)
    (run / "step_1.pt").symlink_to(outside)
    return [PY, "-m", "translate", "average", f"run={run}", "last=1"]


def average_broadcast(run: Path) -> list[str]:
    """Two checkpoints of ~120 KB whose tensors broadcast: [1, 30000] + [30000, 1] is 7.2 GB in float64."""
    make_run(run)
    for step, shape in ((1, (1, 30_000)), (2, (30_000, 1))):
        ckpt = torch.load(run / "best.pt", weights_only=True)
        ckpt["model"]["encoder_norm.weight"] = torch.zeros(shape)
        torch.save(ckpt, run / f"step_{step}.pt")
    return [PY, "-m", "translate", "average", f"run={run}", "last=2"]


def step_not_a_number(run: Path) -> list[str]:
    make_run(run)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["train_state"] = {"step": "x" * 10_000_000}
    torch.save(ckpt, run / "best.pt")
    return [PY, "-m", "translate", "eval", f"run={run}", "eval.probe_k=0", *own_data(run)]


def bleu_infinite(run: Path) -> list[str]:
    make_run(run)
    (run / "eval").mkdir()
    (run / "eval" / "test.json").write_text('{"bleu": 1e999}')
    return serve_once(run)


def many_buckets(run: Path) -> list[str]:
    make_run(run)
    (run / "eval").mkdir()
    buckets = [{"min_words": i, "max_words": i, "sentences": 10, "bleu": 1.0} for i in range(5_000)]
    scores = corpus_scores(["a dog runs"], ["a dog runs"])
    record = {"model": "transformer", "step": 1, "name": "test", "src_lang": "de", "tgt_lang": "en", "sentences": 1}
    record |= {**scores, "bleu_by_length": buckets, "probe": None, "decoding": {"search": "greedy"}}
    (run / "eval" / "test.json").write_text(json.dumps(record))
    summary = {"model": "transformer", "seed": 1, "precision": "fp32", "parameters": 1, "steps": 1, "epochs": 1.0}
    summary |= {"train_minutes": 0.1, "valid_minutes": 0.0, "target_tokens": 1, "tokens_per_s": 1.0}
    (run / "train_summary.json").write_text(json.dumps(summary))
    return [PY, "-m", "translate", "report", f"--out={run.parent / 'report'}", "--", str(run)]


def own_data(run: Path) -> list[str]:
    return [f"eval.src={run / 'my.de'}", f"eval.ref={run / 'my.en'}"]


def serve_once(run: Path) -> list[str]:
    """Load the run as the server does and answer /v1/models once, in-process (no port needed)."""
    code = (
        "import sys, json; from fastapi.testclient import TestClient; from translate.serving.registry import "
        "load_models; from translate.serving.app import create_app; from translate.serving.batcher import Batcher; "
        "from translate.decoding.options import DecodingOptions; from translate.runtime.errors import UserError\n"
        "try: models = load_models([sys.argv[1]], device='cpu')\n"
        "except UserError as e: sys.exit(f'error: {e}')\n"
        "app = create_app(models, Batcher(models, 1, 1, 0), DecodingOptions())\n"
        "r = TestClient(app, raise_server_exceptions=False)"
        ".get('/v1/models', headers={'Host': '127.0.0.1'})\n"
        "print(r.status_code, len(r.content), 'bytes'); sys.exit(0 if r.status_code == 200 else 1)"
    )
    return [PY, "-c", code, str(run)]


CASES = {
    "memo_bomb": (memo_bomb, "make eval: a 3.2-million-leaf stored config in a few hundred pickled bytes"),
    "yaml_bomb": (yaml_bomb, "resume: config.yaml with anchors expanding to 3.2 million values"),
    "synthetic_sizes": (synthetic_sizes, "make eval: stored data.synthetic.symbols=2e9, lengths 1e8, test_limit 1e12"),
    "average_link": (average_link, "make average: step_1.pt a symbolic link to a file outside the run"),
    "average_broadcast": (average_broadcast, "make average: two ~120 KB checkpoints that broadcast to 7.2 GB"),
    "step_not_a_number": (step_not_a_number, "make eval: train_state.step a 10 MB string"),
    "bleu_infinite": (bleu_infinite, "/v1/models of a run whose eval/test.json says bleu 1e999"),
    "many_buckets": (many_buckets, "make report: eval/test.json with 5,000 length buckets"),
}


def limit_memory(gigabytes: float):
    def apply():
        size = int(gigabytes * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return apply


def measure(name: str, timeout: float, memory_gb: float) -> dict:
    """Run one case as a process of its own: its exit status, wall time, peak resident memory and last line."""
    make, what = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        command = make(Path(tmp) / "run")
        env = {**os.environ, "TRANSLATE_MALLOC": "system", "PYTHONPATH": str(ROOT)}
        done = run_measured(
            command, cwd=tmp, env=env, timeout=timeout, stderr=subprocess.STDOUT, preexec_fn=limit_memory(memory_gb)
        )  # this child's own peak, not the largest of all so far
    status, seconds, output = done.returncode, done.seconds, done.stdout
    status = f"killed at {timeout:.0f} s" if status == -9 and seconds >= timeout else status
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return {"case": name, "what": what, "status": status, "seconds": round(seconds, 2),
            "peak_mb": round(done.peak_rss_mib), "last_line": (lines[-1] if lines else "")[:160]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case is killed")
    parser.add_argument("--memory-gb", type=float, default=6.0, help="address-space limit of each case")
    parser.add_argument("--case", nargs="*", choices=sorted(CASES), help="only these (default: all)")
    args = parser.parse_args()
    print("| case | status | seconds | peak MB | last line |\n|---|---|---|---|---|", flush=True)
    for name in args.case or CASES:
        row = measure(name, args.timeout, args.memory_gb)
        print(f"| {name} | {row['status']} | {row['seconds']} | {row['peak_mb']} | {row['last_line']} |", flush=True)


if __name__ == "__main__":
    main()
