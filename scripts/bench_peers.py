"""This project against JoeyNMT 2.3, side by side in one run on this machine: `make bench-peers`.

    python scripts/bench_peers.py [--updates 300] [--repeats 1] [--no-fp32] [--out docs/bench/peers]

About an hour on 2 cores with the defaults (JoeyNMT trains at ~850-1,050 target tokens/s here); docs/bench/peers.md
was made with --updates 300 --repeats 3 (53 minutes).

JoeyNMT goes into a virtual environment of its own under data/cache/peers/ (pinned so that it installs with
today's libraries: importlib_metadata, a SentencePiece that still has SetVocabulary, this project's torch).  Both
tools train the reference Transformer (3 + 3 layers, d_model 256, 4 heads, feed-forward 1,024, tied embeddings) and
the reference attention GRU (embeddings 256, bidirectional GRU encoder 512, GRU decoder 512, Bahdanau attention) on
Multi30k de->en with the same SentencePiece model and vocabulary, 4,096-token batches (both count a sentence as
max(source, target) + 1 padded tokens) and the same learning-rate schedule, for the same number of updates; then
both decode the same 1,000 test sentences greedily and with beam 5 (GNMT length penalty 0.6, 6,000-token batches)
from those updates, each with its own output limit (JoeyNMT's default 1.5 × the batch's longest source, ours
2 × each source + 10).  This project runs in its default configuration (trainer.precision=auto) and, for training,
also in fp32.  Measured: target tokens/s of training (median over 10-update windows after the first; batch
building included, validation excluded, as both tools log it), decoding sentences/s and output tokens/s (the
decoding loop alone, model loading excluded), each process's peak RSS (from the kernel, wait4), BLEU.
Writes <out>.json and <out>.md; every ratio is taken within this one run.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sacrebleu
import torch
import yaml
from measure import run_measured

from translate.config.stored import run_config
from translate.evaluation.tables import markdown_table
from translate.runtime.allocator import INSTALL_HINT, find_tcmalloc, malloc_environment
from translate.runtime.host import describe_host, host_line

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "cache" / "peers"
JOEYNMT = "joeynmt==2.3.0"
JOEYNMT_PINS = [JOEYNMT, "importlib_metadata", "sentencepiece==0.1.99"]  # 0.2.x dropped SetVocabulary
ROLES = {"train": "train", "dev": "valid", "test": "test"}  # JoeyNMT's split names -> this project's
DEV_SENTENCES = 100  # decoded at the one validation, at the end of training; both tools leave it out of tokens/s
OURS = {"transformer": "model=transformer_ref", "rnn_attention": "model=rnn_attention_ref"}


def run_logged(command: list[str], log: Path, cwd: Path = ROOT, env: dict | None = None) -> tuple[float, float]:
    """Run `command` (output to `log`); its wall seconds and its own peak RSS in MiB, from the kernel."""
    with log.open("w") as out:
        done = run_measured(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, command[:4]))} … failed ({done.returncode}); {log}:\n{tail}")
    return done.seconds, done.peak_rss_mib


# ---- JoeyNMT's side ------------------------------------------------------------------------------------------
def joeynmt_environment(malloc: str) -> dict:
    """JoeyNMT's process environment: on glibc's malloc, as installed (`system`), or with tcmalloc preloaded."""
    library = find_tcmalloc() if malloc == "tcmalloc" else None
    if malloc == "tcmalloc" and library is None:
        raise SystemExit(f"--peer-malloc tcmalloc: no tcmalloc found; {INSTALL_HINT}")
    return malloc_environment(os.environ, library)


def joeynmt_python(venv: Path) -> Path:
    """JoeyNMT's own virtual environment, built once (a marker names what it holds)."""
    pins = [f"torch=={torch.__version__.split('+')[0]}", *JOEYNMT_PINS]
    python, marker = venv / "bin" / "python", venv / ".installed"
    if not marker.exists() or marker.read_text().split() != pins:
        print(f"installing {JOEYNMT} into {venv} ({' '.join(pins)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
        marker.write_text(" ".join(pins) + "\n")
    return python


def joeynmt_data(cfg, tokenizer_model: Path, work: Path, dev: int) -> dict:
    """Plain-text copies of the splits as this project reads them (JoeyNMT reads {prefix}.{lang}), the dev split
    cut to `dev` sentences, and the vocabulary file of our SentencePiece model: its pieces in id order."""
    import sentencepiece as spm

    from translate.data.pipeline import load_split

    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    for joey, ours in ROLES.items():
        pairs = load_split(cfg.data, ours).head(dev if joey == "dev" else None)
        for lang, lines in ((cfg.data.src_lang, pairs.src), (cfg.data.tgt_lang, pairs.tgt)):
            (out / f"{joey}.{lang}").write_text("\n".join(lines) + "\n")
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    (out / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    return {"dir": out, "vocab": out / "vocab.txt", "spm": tokenizer_model, "refs": out / f"test.{cfg.data.tgt_lang}"}


def joeynmt_config(name: str, data: dict, cfg, updates: int, beam: int, model_dir: Path, edit=None) -> dict:
    """JoeyNMT's configuration for our settings `cfg`; `edit(config)`, where given, changes it in place after
    (scripts/gpu_check.py: CUDA and fp16, and in its dry run a tiny model)."""
    tc, d, limit = cfg.trainer, data["dir"], cfg.data.max_tokens
    tokenizer = {"tokenizer_type": "sentencepiece", "tokenizer_cfg": {"model_file": str(data["spm"])}}
    side = lambda lang: {"lang": lang, "level": "bpe", "voc_file": str(data["vocab"]), **tokenizer, "max_length": limit}
    config = {
        "name": f"peers_{name}",
        "joeynmt_version": "2.3.0",
        "model_dir": str(model_dir),
        "use_cuda": False,
        "random_seed": tc.seed,
        "data": {
            **{role: str(d / role) for role in ROLES},
            "dataset_type": "plain",
            "src": side(cfg.data.src_lang),
            "trg": side(cfg.data.tgt_lang),
        },
        "testing": {
            "beam_size": beam,
            "beam_alpha": cfg.eval.length_penalty,
            "batch_size": cfg.eval.batch_tokens,
            "batch_type": "token",
            "n_best": 1,
            "eval_metrics": ["bleu"],
            "sacrebleu_cfg": {"tokenize": "13a"},
            "load_model": str(model_dir / "latest.ckpt"),
        },
        "training": {
            "optimizer": "adam",
            "adam_betas": list(tc.betas),
            "weight_decay": tc.weight_decay,
            "learning_rate": tc.lr,
            "scheduling": "warmupinversesquareroot",
            "learning_rate_warmup": tc.warmup_steps,
            "learning_rate_min": 1e-8,
            "label_smoothing": tc.label_smoothing,
            "clip_grad_norm": tc.clip_norm,
            "batch_size": tc.batch_tokens,
            "batch_type": "token",
            "normalization": "tokens",
            "updates": updates,
            "epochs": 1000,
            "validation_freq": updates,
            "logging_freq": 10,
            "early_stopping_metric": "bleu",
            "eval_metrics": ["bleu"],
            "shuffle": True,
            "keep_best_ckpts": 1,
            "overwrite": True,
            "print_valid_sents": [],
        },
        "model": yaml.safe_load((ROOT / "scripts" / "peers" / f"joeynmt_{name}.yaml").read_text()),
    }
    if edit is not None:
        edit(config)
    return config


def joeynmt_side(name: str, python: Path, data: dict, cfg, args, edit=None) -> dict:
    """JoeyNMT trains and decodes (greedy, beam 5); `edit` goes to joeynmt_config."""
    model_dir, row = args.work / f"joeynmt_{name}", {"tool": "JoeyNMT 2.3", "model": name}
    config = args.work / f"joeynmt_{name}_train.yaml"
    settings = joeynmt_config(name, data, cfg, args.updates, 1, model_dir, edit)
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    row["allocator"], env = args.peer_malloc, joeynmt_environment(args.peer_malloc)
    _, row["train_peak_mib"] = run_logged(
        [str(python), "-m", "joeynmt", "train", str(config), "--skip-test"],
        args.work / f"joeynmt_{name}_train.log",
        env=env,
    )
    rates = [float(r) for r in re.findall(r"Tokens per Sec:\s+([\d.]+)", (model_dir / "train.log").read_text())]
    row["train_tokens_per_s"] = round(statistics.median(rates[1:]), 1)
    refs = data["refs"].read_text().splitlines()
    for beam in (1, 5):
        config = args.work / f"joeynmt_{name}_beam{beam}.yaml"
        config.write_text(yaml.safe_dump(joeynmt_config(name, data, cfg, args.updates, beam, model_dir, edit)))
        seconds, peaks, hyps = [], [], args.work / f"joeynmt_{name}_beam{beam}"
        for _ in range(args.repeats):
            log = args.work / f"joeynmt_{name}_beam{beam}.log"
            _, peak = run_logged([str(python), "-m", "joeynmt", "test", str(config), "-o", str(hyps)], log, env=env)
            # "Generation took N[sec]." once for the dev split, then once for the test split
            seconds.append(float(re.findall(r"Generation took ([\d.]+)\[sec\]", log.read_text())[-1]))
            peaks.append(peak)
        outputs = Path(f"{hyps}.test").read_text().splitlines()
        row[f"beam{beam}"] = decoding_row(outputs, refs, statistics.median(seconds), max(peaks), data["spm"])
    return row


def decoding_row(outputs: list[str], refs: list[str], seconds: float, peak_mib: float, spm_model: Path) -> dict:
    import sentencepiece as spm

    tokens = sum(len(t) + 1 for t in spm.SentencePieceProcessor(model_file=str(spm_model)).encode(outputs))
    bleu = sacrebleu.corpus_bleu(outputs, [refs])
    return {
        "sentences_per_s": round(len(outputs) / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "seconds": round(seconds, 2),
        "bleu": round(bleu.score, 2),
        "peak_rss_mib": round(peak_mib, 1),
    }


# ---- this project's side ---------------------------------------------------------------------------------------
def our_training(name: str, setting: str, args, tag: str) -> tuple[dict, Path]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = args.work / f"ours_{name}_{tag}"
    command = [
        sys.executable,
        "-m",
        "translate",
        "train",
        *setting.split(),
        *args.overrides,
        f"trainer.max_steps={args.updates}",
        f"trainer.valid_every={args.updates}",
        f"trainer.valid_bleu_sentences={args.dev}",
        "trainer.max_minutes=0",
        "trainer.keep_last=0",
        f"hydra.run.dir={run}",
    ]
    shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resume
    _, peak = run_logged(command, args.work / f"ours_{name}_{tag}_train.log")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    rates = [e.value for e in events.Reload().Scalars("train/tokens_per_s")]
    found = re.search(r"precision (\w+) \((.*?)\), allocator (.*)$", (run / "train.log").read_text(), re.MULTILINE)
    row = {
        "tool": "translate",
        "model": name,
        "setting": setting,
        "precision": found[1],
        "why": found[2],
        "allocator": found[3],
        "train_tokens_per_s": round(statistics.median(rates[1:]), 1),
        "train_peak_mib": round(peak, 1),
    }
    return row, run


def our_side(name: str, args) -> tuple[dict, Path]:
    """Train, then decode the test split in isolated processes (scripts/benchmark.py --one: speed, BLEU with the
    same sacreBLEU call as decoding_row, the process's own peak RSS)."""
    row, run = our_training(name, OURS[name], args, "default")
    for beam in (1, 5):
        command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--one", str(beam), str(run)]
        log = args.work / f"ours_{name}_beam{beam}.log"
        run_logged([*command, "--repeats", str(args.repeats)], log)
        row[f"beam{beam}"] = json.loads(log.read_text().strip().splitlines()[-1])
    return row, run


# ---- report ------------------------------------------------------------------------------------------------------
TARGETS = {  # the speed targets: (model, measure) -> the least ratio to JoeyNMT
    ("transformer", "train_tokens_per_s"): 5.0,
    ("rnn_attention", "train_tokens_per_s"): 3.0,
    ("transformer", "beam5"): 5.0,
    ("rnn_attention", "beam5"): 5.0,
}


def ratios(ours: dict, peer: dict) -> dict:
    out = {
        "train_tokens_per_s": ours["train_tokens_per_s"] / peer["train_tokens_per_s"],
        "train_peak_mib": ours["train_peak_mib"] / peer["train_peak_mib"],
    }
    for beam in ("beam1", "beam5"):
        if beam in ours:
            out[beam] = ours[beam]["sentences_per_s"] / peer[beam]["sentences_per_s"]
            out[f"{beam}_peak_mib"] = ours[beam]["peak_rss_mib"] / peer[beam]["peak_rss_mib"]
    return {k: round(v, 3) for k, v in out.items()}


def verdicts(report: dict) -> list[str]:
    lines = []
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        peer = next(r for r in report["rows"] if r["tool"] != "translate" and r["model"] == model)
        ours = next(r for r in report["rows"] if r["tool"] == "translate" and r["model"] == model and "beam1" in r)
        for (m, measure), least in TARGETS.items():
            if m == model:
                got = ours["ratios"][measure]
                word = "met" if got >= least else f"missed by {least / got:.2f}×"
                what = measure.replace("_", " ")
                lines.append(f"- {model}, {what}: {got:.2f}× JoeyNMT (target ≥ {least:g}×): {word}")
        rss = max(ours["train_peak_mib"], ours["beam5"]["peak_rss_mib"])
        peer_rss = max(peer["train_peak_mib"], peer["beam5"]["peak_rss_mib"])
        word = "met" if rss < peer_rss else f"missed by {rss - peer_rss:,.0f} MiB"
        lines.append(f"- {model}, peak RSS {rss:,.0f} MiB against JoeyNMT's {peer_rss:,.0f} MiB (target below): {word}")
    return lines


def markdown(report: dict) -> str:
    header = ["tool", "model", "precision", "train target tok/s", "× JoeyNMT", "train peak MiB", "greedy sent/s", "×"]
    header += ["beam 5 sent/s", "×", "decode peak MiB", "BLEU greedy / beam 5"]
    rows = []
    for r in report["rows"]:
        x = r.get("ratios", {})
        cell = lambda key, x=x: f"{x[key]:.2f}×" if key in x else ""
        decode = [f"{r[b]['sentences_per_s']:,.1f}" if b in r else "" for b in ("beam1", "beam5")]
        peak = f"{max(r[b]['peak_rss_mib'] for b in ('beam1', 'beam5')):,.0f}" if "beam1" in r else ""
        bleu = f"{r['beam1']['bleu']:.2f} / {r['beam5']['bleu']:.2f}" if "beam1" in r else ""
        rows.append(
            [r["tool"], r["model"], r.get("precision", "fp32"), f"{r['train_tokens_per_s']:,.0f}"]
            + [cell("train_tokens_per_s"), f"{r['train_peak_mib']:,.0f}", decode[0], cell("beam1")]
            + [decode[1], cell("beam5"), peak, bleu]
        )
    lines = [
        f"Host: {host_line(report['host'])}. `make bench-peers` ({report['updates']} updates each, decoding repeated "
        f"{report['repeats']}×, medians), {report['date']}; every ratio from this one run.",
        "",
        markdown_table(header, rows, align="lll" + "r" * 8 + "l"),
    ]
    targets = "Against the speed targets (training and decoding, each as a least ratio to JoeyNMT):"
    lines += ["", targets, "", *verdicts(report), ""]
    why = next(r["why"] for r in report["rows"] if r.get("why"))
    lines += [f"`trainer.precision=auto` chose {report['rows'][1]['precision']} here: {why}."]
    ours, peer = report["rows"][1], report["rows"][0]
    peer_malloc = "tcmalloc (`--peer-malloc tcmalloc`)" if peer.get("allocator") == "tcmalloc" else "glibc malloc"
    lines += [f"Allocator: this project {ours.get('allocator', 'glibc malloc')}; JoeyNMT {peer_malloc}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1, help="decoding repeats (median)")
    parser.add_argument("--no-fp32", action="store_true", help="skip this project's fp32 training rows")
    parser.add_argument("--models", nargs="+", choices=list(OURS), default=list(OURS))
    parser.add_argument("--sentences", type=int, help="decode only the first N test sentences (default: all)")
    parser.add_argument("--work", type=Path, default=CACHE, help="runs, logs and corpus copies go here")
    parser.add_argument("--venv", type=Path, default=CACHE / "joeynmt-2.3", help="JoeyNMT's virtual environment")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "peers")
    parser.add_argument(
        "--peer-malloc", choices=["system", "tcmalloc"], default="system", help="JoeyNMT's allocator (default: glibc's)"
    )
    args = parser.parse_args()
    # the peer trains on the corpus's pairs as they are: so does this side (no joined pairs), the same work
    args.overrides = ["trainer.concat_prob=0.0"] + ([f"data.test_limit={args.sentences}"] if args.sentences else [])
    args.dev = min(DEV_SENTENCES, args.sentences or DEV_SENTENCES)
    args.work.mkdir(parents=True, exist_ok=True)
    python = joeynmt_python(args.venv)
    report = {
        "host": describe_host(),
        "updates": args.updates,
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d"),
        "rows": [],
    }
    for name in args.models:
        ours, run = our_side(name, args)
        cfg = run_config(run)  # JoeyNMT gets the settings our side trained with
        data = joeynmt_data(cfg, run / "tokenizer.model", args.work, args.dev)
        peer = joeynmt_side(name, python, data, cfg, args)
        rows = [peer, ours]
        if not args.no_fp32:
            rows.append(our_training(name, f"{OURS[name]} trainer.precision=fp32", args, "fp32")[0])
        for row in rows[1:]:
            row["ratios"] = ratios(row, peer)
        report["rows"] += rows
        for row in rows:
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
