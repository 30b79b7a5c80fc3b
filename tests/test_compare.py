"""make compare on the synthetic task: a real Hydra multirun, evaluation, report, and a cut run picking up again."""

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from translate.config.schema import SyntheticConfig
from translate.data.corpus import Pairs, SyntheticSplit
from translate.data.probe import long_sentence_probe
from translate.evaluation.spread import load_reports
from translate.runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic",
    "data.synthetic.train_size=400",
    "data.synthetic.valid_size=20",
    "data.synthetic.test_size=40",
    "data.synthetic.max_len=24",
    "model.emb_dim=24",
    "model.hidden_dim=32",
    "model.attention_dim=16",
    "model.d_model=32",
    "model.heads=2",
    "model.ff_dim=64",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "trainer.max_steps=4",
    "trainer.valid_every=2",
    "trainer.batch_tokens=600",
    "trainer.warmup_steps=1",
    "eval.probe_k=3",
    "eval.probe_per_k=8",
]


def test_synthetic_task_is_fixed_and_reversed():
    cfg = SyntheticConfig(train_size=50, max_len=30)
    a, b = Pairs.read(SyntheticSplit(cfg, "train")), Pairs.read(SyntheticSplit(cfg, "train"))
    assert a.src == b.src and a.src != Pairs.read(SyntheticSplit(cfg, "test")).src[:50]
    assert all(t.split() == s.split()[::-1] for s, t in zip(a.src, a.tgt))
    assert max(len(s.split()) for s in a.src) <= 30


def test_probe_joins_consecutive_pairs():
    pairs = Pairs([f"s{i}" for i in range(7)], [f"t{i}" for i in range(7)])
    probe, ks = long_sentence_probe(pairs, k_max=3, per_k=2)
    assert probe.src == ["s0", "s1", "s0 s1", "s2 s3", "s0 s1 s2", "s3 s4 s5"]
    assert probe.tgt[3] == "t2 t3" and ks == [1, 1, 2, 2, 3, 3]
    every, ks = long_sentence_probe(pairs, k_max=3)  # per_k=0: the whole set for every k
    assert ks == [1] * 7 + [2] * 3 + [3] * 2
    assert every.src[7:10] == ["s0 s1", "s2 s3", "s4 s5"] and every.src[-1] == "s3 s4 s5"


@pytest.mark.slow
def test_compare_multirun_writes_report_and_resumes(tmp_path):
    sweep = tmp_path / "compare"
    args = [
        sys.executable,
        "-m",
        "translate",
        "train",
        "+experiment=bottleneck",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        f"data.tokenizer.cache_dir={tmp_path / 'tok'}",
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = sweep / "report"
    rows = json.loads((report / "report.json").read_text())
    assert [r["model"] for r in rows] == ["rnn", "rnn_attention", "transformer"]
    for r in rows:
        assert r["steps"] == 4 and r["parameters"] > 0 and r["tokens_per_s"] > 0
        assert r["eval"]["probe"]["sentences"] == 24 and r["eval"]["bleu_signature"].startswith("nrefs:1")
        assert sum(b["sentences"] for b in r["eval"]["bleu_by_length"]) == 40
    text = (report / "report.md").read_text()
    assert (
        "| rnn_attention | rnn_attention |" in text
        and "long-sentence probe" in text
        and "drop shortest→longest" in text
    )
    assert "BLEU above `rnn`" in text
    assert Image.open(report / "bleu_vs_length.png").size[0] > 500
    acc = EventAccumulator(str(sweep / "rnn_seed1234" / "tensorboard"))
    acc.Reload()
    assert "compare/bleu_vs_length" in acc.Tags()["images"]

    # cut after training: drop one evaluation and one summary; a re-run redoes only what is missing
    (sweep / "transformer_seed1234" / "eval" / "test.json").unlink()
    (sweep / "rnn_seed1234" / "train_summary.json").unlink()
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not training again" in (sweep / "transformer_seed1234" / "train.log").read_text()
    assert "resumed from" in (sweep / "rnn_seed1234" / "train.log").read_text()
    assert (sweep / "transformer_seed1234" / "eval" / "test.json").exists()
    assert json.loads((report / "report.json").read_text())[0]["steps"] == 4

    # candidates chosen on the validation set: its evaluation and probe, compared by `make report EVAL=valid`
    runs = [sweep / f"{m}_seed1234" for m in ("rnn", "transformer")]
    for run in runs:
        done = subprocess.run(
            [sys.executable, "-m", "translate", "eval", f"run={run}", "eval.split=valid"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    chosen = tmp_path / "valid_report"
    report_cmd = [sys.executable, "-m", "translate", "report", f"--out={chosen}", "--eval", "valid", *map(str, runs)]
    done = subprocess.run(report_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((chosen / "report.json").read_text())
    assert [(r["name"], r["eval"]["name"], r["eval"]["sentences"]) for r in rows] == [
        ("rnn", "valid", 20),
        ("transformer", "valid", 20),
    ]
    text = (chosen / "report.md").read_text()
    assert "consecutive valid pairs joined" in text and "(words), valid set" in text and "test set" not in text
    refused = [*report_cmd[:4], "--eval", "../test", str(runs[0])]
    done = subprocess.run(refused, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith("error: --eval='../test'")

    # where the reversal goes wrong, on the real run: the script's exact share is the hypotheses' own
    run = sweep / "transformer_seed1234"
    done = subprocess.run([sys.executable, "scripts/reversal_errors.py", str(run)], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    errors = json.loads((run / "eval" / "reversal_errors.json").read_text())
    test = Pairs.read(SyntheticSplit(SyntheticConfig(test_size=40, max_len=24), "test"))
    hyps = (run / "eval" / "test.hyp").read_text().splitlines()
    exact = [h == r for h, r in zip(hyps, test.tgt)]
    rows = [row for row in errors["test"] if row["sentences"]]
    assert sum(row["sentences"] for row in rows) == 40
    assert sum(row["exact_percent"] * row["sentences"] for row in rows) / 100 == pytest.approx(sum(exact), abs=0.1)
    probe = (run / "eval" / "without_repeats.src").read_text().splitlines()
    assert len(probe) == 40 and [len(s.split()) for s in probe] == [len(s.split()) for s in test.src]
    assert all(not any(a == b for a, b in zip(w, w[1:])) for w in (s.split() for s in probe))
    assert len((run / "eval" / "without_repeats.hyp").read_text().splitlines()) == 40


def test_reversal_errors_count_repeat_sites_and_misaligned_positions():
    from translate.evaluation.reversal import error_table, repeat_sites, without_repeats, wrong_positions

    assert repeat_sites("a b b c a a a".split()) == {1, 2, 4, 5, 6} and repeat_sites(["a"]) == set()
    assert wrong_positions("a b b c".split(), "a b c".split()) == {2}  # one of a pair dropped
    assert len(wrong_positions("a b b c".split(), "a b c b".split())) == 1  # a pair broken by a swap
    assert wrong_positions("a b".split(), "a b".split()) == set()
    broken = without_repeats("a a a b b", random.Random(0), ["a", "b", "c"]).split()
    assert len(broken) == 5 and all(x != y for x, y in zip(broken, broken[1:]))
    rows = error_table(["x x x x", "x x"], ["a b b c", "d e"], ["a b c", "d e"], [1, 3, 10])
    assert rows[0] == {
        "bucket": "1-2",
        "sentences": 1,
        "exact_percent": 100.0,
        "repeat_sites": 0,
        "repeat_site_error_percent": 0.0,
        "other_positions": 2,
        "other_error_percent": 0.0,
    }
    assert rows[1]["exact_percent"] == 0.0 and rows[1]["repeat_sites"] == 2
    assert rows[1]["repeat_site_error_percent"] == 50.0 and rows[1]["other_error_percent"] == 0.0


@pytest.mark.slow
def test_seeds_are_a_sweep_axis_and_the_report_spreads_over_them(tmp_path):
    sweep = tmp_path / "compare"
    # the whole test set for every k, so that two probe buckets hold the 10 sentences a lead's growth needs
    args = ["-m", "translate", "train", "+experiment=bottleneck", *TINY, "eval.probe_per_k=0", "trainer.seed=1,2"]
    args.append(f"hydra.sweep.dir={sweep}")
    done = subprocess.run(
        [sys.executable, *args, f"data.tokenizer.cache_dir={tmp_path / 'tok'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    models = ["rnn", "rnn_attention", "transformer"]
    assert sorted(p.name for p in sweep.iterdir() if (p / "config.yaml").exists()) == sorted(
        f"{m}_seed{s}" for m in models for s in (1, 2)
    )
    report = sweep / "report"
    per_seed = [json.loads((report / f"seed_{s}" / "report.json").read_text()) for s in (1, 2)]
    assert [[(r["model"], r["seed"]) for r in rows] for rows in per_seed] == [[(m, s) for m in models] for s in (1, 2)]
    assert per_seed[0][0]["eval"]["bleu_by_length"] != per_seed[1][0]["eval"]["bleu_by_length"]  # seeds differ
    seeds = json.loads((report / "seeds.json").read_text())
    assert seeds["seeds"] == [1, 2] and list(seeds["models"]) == models
    for model, m in seeds["models"].items():
        runs = [next(r for r in rows if r["model"] == model) for rows in per_seed]
        bleus = [r["eval"]["bleu"] for r in runs]
        assert m["bleu"]["mean"] == round(statistics.fmean(bleus), 2)
        assert m["bleu"]["std"] == round(statistics.stdev(bleus), 2)
        for i, bucket in enumerate(m["probe_bleu_by_length"]):
            scores = [r["eval"]["probe"]["bleu_by_length"][i]["bleu"] for r in runs]
            scores = [b for b in scores if b is not None]  # an empty bucket has no BLEU
            assert (bucket["min"], bucket["max"]) == ((min(scores), max(scores)) if scores else (None, None))
    for model in models[1:]:
        growth = seeds["models"][model]["lead_growth"]
        own = [next(r for r in rows if r["model"] == model)["probe_lead_growth"] for rows in per_seed]
        assert growth["per_seed"] == {
            "1": {"growth": own[0]["growth"], "ci95": own[0]["ci95"]},
            "2": {"growth": own[1]["growth"], "ci95": own[1]["ci95"]},
        }
        assert growth["mean"] == round(statistics.fmean(g["growth"] for g in own), 2)
    text = (report / "seeds.md").read_text()
    assert "over 2 seeds (1, 2)" in text and "| rnn_attention | 2 |" in text and "grows on every seed" in text
    assert Image.open(report / "bleu_vs_length_seeds.png").size[0] > 500
    assert "The comparison over 2 seeds" in done.stdout  # the multirun shows the seeds report
    with pytest.raises(UserError, match="seed 1 given twice"):
        load_reports([report / "seed_1", report / "seed_1" / "report.json"])


@pytest.mark.slow
def test_an_override_gets_its_own_comparison_directory(tmp_path):
    """The sweeper rewrites 3e-3 as 0.003 in each job's overrides; the sweep and its job must still name one
    directory."""
    args = [
        sys.executable,
        "-m",
        "translate",
        "train",
        "+experiment=bottleneck",
        *TINY,
        "hydra.sweeper.params.model=rnn",
        "trainer.lr=3e-3",
    ]
    done = subprocess.run(
        [*args, f"data.tokenizer.cache_dir={tmp_path / 'tok'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [sweep] = (tmp_path / "runs" / "compare").iterdir()
    assert sweep.name.startswith("synthetic_src-tgt_4steps_concat0.5_overrides-")  # too many overrides to spell out
    assert (sweep / "rnn_seed1234" / "eval" / "test.json").exists() and (sweep / "report" / "report.md").exists()

    # the same directory with another learning rate: refused, not skipped as finished
    args[-1] = f"hydra.sweep.dir={sweep}"
    again = subprocess.run(
        [*args, f"data.tokenizer.cache_dir={tmp_path / 'tok'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode != 0 and "trainer.lr=0.003 (now 0.002)" in again.stderr, again.stderr[-3000:]


def test_bleu_drop_ignores_tiny_buckets():
    from translate.evaluation.comparison import bleu_drop

    buckets = [
        {"bleu": 30.0, "sentences": 400},
        {"bleu": 20.0, "sentences": 34},
        {"bleu": 50.0, "sentences": 1},
        {"bleu": None, "sentences": 0},
    ]
    assert bleu_drop(buckets) == 10.0
    assert bleu_drop(buckets[:1]) is None


def test_gap_to_the_plain_rnn_per_length():
    from translate.evaluation.comparison import gap_lines, gap_to_baseline

    def row(name, test, probe):
        sizes = [400, 300, 50, 5]
        bucket = lambda bleus: [{"bleu": b, "sentences": n} for b, n in zip(bleus, sizes)]  # noqa: E731
        return {
            "name": name,
            "model": name,
            "eval": {"bleu_by_length": bucket(test), "probe": {"bleu_by_length": bucket(probe)}},
        }

    rnn = row("rnn", [20, 15, 10, 1], [20, 10, 4, 0])
    attention = row("rnn_attention", [30, 28, 26, 90], [30, 25, 20, 90])
    assert gap_to_baseline(attention["eval"]["bleu_by_length"], rnn["eval"]["bleu_by_length"]) == (
        10,
        16,
    )  # 5-sentence bucket ignored
    lines = gap_lines([rnn, attention])
    assert "| rnn_attention | +10.00 | +16.00 | +10.00 | +16.00 | yes |" in lines  # no probe texts: no interval
    assert gap_lines([attention]) == []


def test_lead_growth_has_a_paired_bootstrap_interval(tmp_path):
    """Read back from probe files as evaluation writes them: a lead that grows clearly, and one that does not."""
    from translate.evaluation.comparison import probe_lead_growth
    from translate.evaluation.evaluator import write_lines

    words = "a man in a blue shirt is riding a bike down the street while two dogs run".split()
    src = [" ".join(words[: 3 + i % 5]) for i in range(30)] + [" ".join((words * 2)[: 12 + i]) for i in range(30)]
    ref = [f"ref {i} " + " ".join(words[i % 7 :]) for i in range(60)]
    bucket = lambda lo, hi: {"min_words": lo, "max_words": hi, "sentences": 30, "bleu": 0.0}  # noqa: E731
    buckets = [bucket(0, 9), bucket(10, 999)]

    def run(name, hyps):
        for suffix, lines in (("src", src), ("ref", ref), ("hyp", hyps)):
            (tmp_path / name / "eval").mkdir(parents=True, exist_ok=True)
            write_lines(tmp_path / name / "eval" / f"test_probe.{suffix}", lines)
        return {
            "run": str(tmp_path / name),
            "name": name,
            "eval": {"name": "test", "probe": {"bleu_by_length": buckets}},
        }

    half_right = [r if i % 2 else "x y z" for i, r in enumerate(ref)]
    rnn = run("rnn", half_right[:30] + ["x y z"] * 30)  # half right on short inputs, nothing on long ones
    attention = run("attention", ref)  # all right everywhere
    grows = probe_lead_growth(attention, rnn)
    low, high = grows["ci95"]
    assert grows["growth"] > 40 and 0 < low <= grows["growth"] <= high
    same = probe_lead_growth(run("same", half_right[:30] + ["x y z"] * 30), rnn)
    assert same == {"baseline": "rnn", "growth": 0.0, "ci95": [0.0, 0.0]}
    one_more = probe_lead_growth(run("one_more", half_right[:30] + ref[30:31] + ["x y z"] * 29), rnn)
    assert one_more["ci95"][0] == 0.0 < one_more["growth"]  # one long sentence better: left out of 36 % of resamples


def test_reversal_pairs_are_never_joined(tmp_path, caplog):
    from conftest import compose_train

    from translate.training.trainer import Trainer

    overrides = [o for o in TINY if o.startswith(("data", "model.", "trainer"))]
    cfg = compose_train([*overrides, "trainer.concat_prob=1.0", f"data.tokenizer.cache_dir={tmp_path / 'tok'}"])
    cfg.resume = None
    trainer = Trainer(cfg, tmp_path / "run")
    assert all(len(example) == 1 for batch in trainer.epoch_batches() for example in batch)
    assert "trainer.concat_prob ignored" in caplog.text
