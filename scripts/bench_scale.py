"""What corpus size costs: Multi30k's training split repeated 1×, 10×, 100× (29 k → 2.9 M pairs), measured in one run.

    python scripts/bench_scale.py [--scales 1 10 100] [--steps 40] [--work runs/bench_scale] [--out docs/bench/scale]

For each scale, with `data=files` on a directory holding the repeated training files (Multi30k's own validation
and test sets):
  * `translate prepare` with empty caches (tokenizer + token store): wall time, store size on disk;
  * the same again with the caches ready: wall time of a second start (process start and imports included);
  * `translate train` for --steps updates of the default Transformer: peak RSS of the process
    (VmHWM) and its peaks of anonymous memory (the process's own) and of file-backed memory (the mapped store
    and libraries, shared with other processes), and target tokens/s (the run's own count, validation excluded);
  * the same training on 2 data-parallel ranks × 1 thread (torchrun, gloo) at the smallest and largest scale:
    each rank's anonymous memory and the ranks' summed proportional set size (PSS, shared pages split).
Each finished measurement is kept in <work>/results.json, so a run cut short continues where it stopped.
Prints and writes <out>.md / <out>.json with the host.
"""

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

from measure import proc_status_mib, run_measured

from translate.evaluation.tables import markdown_table
from translate.runtime.host import describe_host, host_line

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"
MEMORY_FILES = ("status", "smaps_rollup")  # VmHWM, RssAnon, RssFile; Pss
TRAIN = ["trainer.valid_every=100000", "trainer.valid_bleu_sentences=20", "trainer.max_minutes=0"]


def corpus(work: Path, times: int) -> Path:
    """<work>/corpus_<times>x: train.{de,en} = Multi30k train repeated, val and test as they are."""
    directory = work / f"corpus_{times}x"
    if (directory / "done").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for lang in ("de", "en"):
        train = gzip.decompress((MULTI30K / f"train.{lang}.gz").read_bytes())
        with open(directory / f"train.{lang}", "wb") as out:
            for _ in range(times):
                out.write(train)
        for split in ("val", "test_2016_flickr"):
            shutil.copy(MULTI30K / f"{split}.{lang}.gz", directory / f"{split}.{lang}.gz")
    (directory / "done").touch()
    return directory


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
    return found


def measured(command: list[str], ranks: int = 1, cwd: Path = ROOT) -> dict:
    """Run `command`, sampling the memory of its Python processes every 0.2 s: per process the peaks, in MB."""
    peaks: dict[int, dict[str, float]] = {}
    pss_sum = 0.0

    def sample(pid: int) -> None:
        nonlocal pss_sum
        now = {p: proc_status_mib(p, ("VmHWM", "RssAnon", "RssFile", "Pss"), MEMORY_FILES) for p in tree(pid)}
        workers = {p: s for p, s in now.items() if s and (ranks == 1 or p != pid)}
        for p, s in workers.items():
            peaks[p] = {k: max(v, peaks.get(p, {}).get(k, 0)) for k, v in s.items()}
        pss_sum = max(pss_sum, sum(s.get("Pss", 0) for s in workers.values()))

    done = run_measured(command, cwd=cwd, stderr=subprocess.STDOUT, sample=sample, interval=0.2)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}")
    procs = sorted(peaks.values(), key=lambda s: -s.get("RssAnon", 0))[:ranks]
    return {
        "wall_s": round(done.seconds, 1),
        "peak_rss_mb": max(round(s.get("VmHWM", 0)) for s in procs),
        "peak_anon_mb": [round(s.get("RssAnon", 0)) for s in procs],
        "peak_file_mb": [round(s.get("RssFile", 0)) for s in procs],
        "peak_pss_sum_mb": round(pss_sum),
        "output": done.stdout,
    }


def data_args(directory: Path, work: Path) -> list[str]:
    return ["data=files", f"data.dir={directory}", "data.valid_split=val", "data.test_split=test_2016_flickr"] + [
        f"data.tokenizer.cache_dir={work / 'cache' / directory.name / 'tok'}"
    ]


def before(scale: int, steps: int, work: Path, revision: str) -> dict:
    """The same training with the code of `revision` (a git worktree in <work>/before), which read and encoded the
    corpus into Python lists in every run: its peak memory and tokens/s, measured in this run."""
    tree_dir = work / "before"
    if not tree_dir.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree_dir), revision], cwd=ROOT, check=True)
    directory = corpus(work, scale)
    run_dir = work / f"run_{scale}x_before"
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [f"data.dir={directory}", "data.valid_split=val", "data.test_split=test_2016_flickr"]
    args += [f"data.tokenizer.cache_dir={work / 'cache' / 'before' / 'tok'}", f"hydra.run.dir={run_dir}"]
    command = [sys.executable, "-m", "translate", "train", *args, *TRAIN, f"trainer.max_steps={steps}"]
    train = measured(command, cwd=tree_dir)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return (
        {"scale": scale, "pairs": 29_000 * scale, "revision": revision, "wall_s": train["wall_s"]}
        | {k: train[k] for k in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb")}
        | {"tokens_per_s": summary["tokens_per_s"]}
    )


def bench(scale: int, steps: int, work: Path, ranks: int) -> dict:
    directory = corpus(work, scale)
    args = data_args(directory, work)
    row = {"scale": scale, "pairs": 29_000 * scale}
    if ranks == 1:
        shutil.rmtree(work / "cache" / directory.name, ignore_errors=True)
        cold = measured([sys.executable, "-m", "translate", "prepare", *args])
        warm = measured([sys.executable, "-m", "translate", "prepare", *args])
        store = next((work / "cache" / directory.name / "stores").iterdir())
        row |= {
            "prepare_s": cold["wall_s"],
            "prepare_peak_rss_mb": cold["peak_rss_mb"],
            "second_start_s": warm["wall_s"],
        }
        row["store_mb"] = round(sum(f.stat().st_size for f in store.iterdir()) / 1e6, 1)
        launcher = [sys.executable]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    run_dir = work / f"run_{scale}x_{ranks}r"
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = [*TRAIN, f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}"]
    settings += ["trainer.threads=1", "trainer.batch_tokens=2048"] if ranks > 1 else []
    train = measured([*launcher, "-m", "translate", "train", *args, *settings], ranks)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    row |= {"ranks": ranks, "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"]}
    row |= {k: train[k] for k in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb", "peak_pss_sum_mb")}
    shutil.rmtree(run_dir, ignore_errors=True)
    return row


def markdown(rows: list[dict], earlier: list[dict], machine: dict, steps: int) -> str:
    one = [r for r in rows if r["ranks"] == 1]
    two = [r for r in rows if r["ranks"] > 1]
    header = ["training pairs", "prepare (cold)", "second start", "store on disk", "peak RSS", "own (anon)"]
    table = [
        [f"{r['pairs']:,}", f"{r['prepare_s']:.1f} s", f"{r['second_start_s']:.1f} s", f"{r['store_mb']:.1f} MB"]
        + [f"{r['peak_rss_mb']:,} MB", f"{r['peak_anon_mb'][0]:,} MB", f"{r['peak_file_mb'][0]:,} MB"]
        + [f"{r['tokens_per_s']:,.0f}"]
        for r in one
    ]
    lines = [
        f"Host: {host_line(machine)}. `python scripts/bench_scale.py` — {steps} updates of the default Transformer "
        "per training row; memory sampled every 0.2 s (peaks).",
        "",
        markdown_table([*header, "mapped (file)", "target tokens/s"], table, align="r" * 8),
    ]
    if two:
        header = ["training pairs", "own (anon) per rank", "mapped (file) per rank", "PSS, both ranks"]
        table = [
            [f"{r['pairs']:,}", " / ".join(f"{v:,}" for v in r["peak_anon_mb"]) + " MB"]
            + [" / ".join(f"{v:,}" for v in r["peak_file_mb"]) + " MB", f"{r['peak_pss_sum_mb']:,} MB"]
            + [f"{r['tokens_per_s']:,.0f}"]
            for r in two
        ]
        lines += [
            "",
            "Two data-parallel ranks × 1 thread (torchrun, gloo), 2,048 tokens per rank:",
            "",
            markdown_table([*header, "target tokens/s"], table, align="r" * 5),
        ]
    if earlier:
        now = {r["scale"]: r for r in one}
        table = [
            [f"{r['pairs']:,}", f"{r['peak_rss_mb']:,} MB", f"{now[r['scale']]['peak_rss_mb']:,} MB"]
            + [f"{r['peak_anon_mb'][0]:,} MB", f"{now[r['scale']]['peak_anon_mb'][0]:,} MB"]
            for r in earlier
        ]
        lines += [
            "",
            f"The same training with the code before the store (`{earlier[0]['revision']}`: every run read and "
            "encoded the corpus into Python lists), measured in the same run:",
            "",
            markdown_table(
                ["training pairs", "peak RSS before", "now", "own (anon) before", "now"], table, align="r" * 5
            ),
        ]
        lines += [
            "",
            "(Tokens/s are not compared with the earlier code: its summary left the last validation's time out of "
            "training time but took it off again, overstating tokens/s by that validation's share.)",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_scale")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "scale")
    parser.add_argument("--before", help="also train with the code of this git revision (smallest, largest scale)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    done_file = args.work / "results.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    plan = [(s, 1) for s in args.scales] + [(s, 2) for s in sorted({min(args.scales), max(args.scales)})]
    for scale, ranks in plan:
        key = f"{scale}x{ranks}r{args.steps}"
        if key not in done:
            print(f"measuring {scale}x, {ranks} rank(s) ...", flush=True)
            done[key] = bench(scale, args.steps, args.work, ranks)
            done_file.write_text(json.dumps(done, indent=1))
        print(json.dumps(done[key]), flush=True)
    rows = [done[f"{s}x{r}r{args.steps}"] for s, r in plan]
    earlier = []
    for scale in sorted({min(args.scales), max(args.scales)}) if args.before else []:
        key = f"{scale}x-before-{args.before}-{args.steps}"
        if key not in done:
            print(f"measuring {scale}x with {args.before} ...", flush=True)
            done[key] = before(scale, args.steps, args.work, args.before)
            done_file.write_text(json.dumps(done, indent=1))
        earlier.append(done[key])
    machine = describe_host()
    text = markdown(rows, earlier, machine, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    result = {"host": machine, "rows": rows, "before": earlier}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
