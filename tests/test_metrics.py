"""translate.evaluation.metrics against sacreBLEU itself on small hand-made cases: corpus scores (BLEU, chrF, chrF++,
TER: sacreBLEU's API and its command line), where they are shown (evaluation's summary, TensorBoard, the report),
the length buckets and their edges, per-sentence BLEU statistics, and the paired bootstrap of a lead's growth with
length."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu

from translate.evaluation.metrics import (
    BLEU_ORDER,
    bleu_by_length,
    bleu_from_statistics,
    bleu_statistics,
    corpus_scores,
    lead_growth_interval,
    length_bucket,
)

REFS = [
    "A man is riding a bicycle down the street.",
    "Two dogs play with a red ball in the park.",
    "The girl in the blue dress is reading a book on a bench.",
    "People walk past a large building at night.",
    "A child jumps into the swimming pool.",
]
HYPS = [
    "A man rides a bicycle down the street.",
    "Two dogs are playing with a ball in a park.",
    "A girl in a blue dress reads a book on the bench.",
    "People are walking by a big building at night.",
    "A kid jumps in the pool.",
]


def sacre_bleu(hyps: list[str], refs: list[str]) -> float:
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def test_corpus_scores_are_sacrebleus_with_their_signatures():
    scores = corpus_scores(HYPS, REFS)
    bleu, chrf = sacrebleu.corpus_bleu(HYPS, [REFS]), sacrebleu.corpus_chrf(HYPS, [REFS])
    assert 5 < bleu.score < 95 and 5 < chrf.score < 95  # a case where neither score is trivially 0 or 100
    assert scores["bleu"] == round(bleu.score, 2)
    assert scores["chrf"] == round(chrf.score, 2)
    assert scores["bleu_detail"] == str(bleu)
    for part in ("nrefs:1", "case:mixed", "tok:13a", "smooth:exp", f"version:{sacrebleu.__version__}"):
        assert part in scores["bleu_signature"]
    for part in ("nrefs:1", "nc:6", "nw:0", f"version:{sacrebleu.__version__}"):
        assert part in scores["chrf_signature"]
    chrf_pp, ter = sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2), sacrebleu.corpus_ter(HYPS, [REFS])
    assert 5 < ter.score < 95 and chrf_pp.score != chrf.score
    assert scores["chrf_pp"] == round(chrf_pp.score, 2) and scores["ter"] == round(ter.score, 2)
    for part in ("nrefs:1", "nc:6", "nw:2", f"version:{sacrebleu.__version__}"):
        assert part in scores["chrf_pp_signature"]
    for part in ("nrefs:1", "case:lc", "tok:tercom", f"version:{sacrebleu.__version__}"):
        assert part in scores["ter_signature"]
    # references as given, not tokenized or lowercased: another casing of the hypotheses scores lower
    assert corpus_scores([h.lower() for h in HYPS], REFS)["bleu"] < scores["bleu"]


def sacrebleu_command(*args: str) -> list[dict]:
    """What `python -m sacrebleu <args> -f json` prints, one dict per measure."""
    done = subprocess.run(
        [sys.executable, "-m", "sacrebleu", *args, "-w", "6", "-f", "json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    return printed if isinstance(printed, list) else [printed]


@pytest.mark.slow  # spawns sacreBLEU's command line
def test_corpus_scores_are_sacrebleus_command_line_on_the_same_files(tmp_path):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("".join(line + "\n" for line in REFS))
    hyp.write_text("".join(line + "\n" for line in HYPS))
    bleu, chrf, ter = sacrebleu_command(str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "ter")
    [chrf_pp] = sacrebleu_command(str(ref), "-i", str(hyp), "-m", "chrf", "--chrf-word-order", "2")
    assert [m["name"] for m in (bleu, chrf, chrf_pp, ter)] == ["BLEU", "chrF2", "chrF2++", "TER"]
    scores = corpus_scores(HYPS, REFS)
    for key, printed in (("bleu", bleu), ("chrf", chrf), ("chrf_pp", chrf_pp), ("ter", ter)):
        assert scores[key] == round(printed["score"], 2), key
        assert scores[f"{key}_signature"] == printed["signature"], key


def test_evaluation_summary_shows_every_measure_with_its_signature():
    from translate.evaluation.evaluator import format_result

    scores = corpus_scores(HYPS, REFS)
    result = {
        "name": "test",
        "sentences": 5,
        "model": "transformer",
        "step": 7,
        "decoding": {"search": "greedy"},
        **scores,
        "loss": 1.0,
        "ppl": 2.72,
        "bleu_by_length": bleu_by_length([words(3)] * 5, HYPS, REFS, [1, 10]),
        "probe": None,
    }
    lines = format_result(result).splitlines()
    for label, key in (("BLEU", "bleu"), ("chrF", "chrf"), ("chrF++", "chrf_pp"), ("TER", "ter")):
        shown = f"{label} {scores[key]:.2f}  ({scores[key + '_signature']}"
        assert [x for x in lines if x.startswith(shown)], (shown, lines)


def test_tensorboard_gets_every_measure():
    from translate.evaluation.validation import Validation, write_validation

    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (value, step)

    writer, scores = Writer(), corpus_scores(HYPS, REFS)
    write_validation(writer, "eval/test", 9, Validation(1.5, scores, [], [], HYPS), None)
    assert writer.scalars == {
        "eval/test/loss": (1.5, 9),
        "eval/test/ppl": (pytest.approx(4.4817, abs=1e-4), 9),
        **{f"eval/test/{k}": (scores[k], 9) for k in ("bleu", "chrf", "chrf_pp", "ter")},
    }


def report_row(name: str, evaluation: dict) -> dict:
    """A row of the comparison report, as load_run_results reads it from a run's summary and evaluation."""
    evaluation = {
        "name": "test",
        "sentences": 5,
        "src_lang": "de",
        "tgt_lang": "en",
        "decoding": {"search": "greedy"},
        "bleu_by_length": [{"min_words": 0, "max_words": 9, "sentences": 5, "bleu": evaluation["bleu"]}],
        "probe": None,
        **evaluation,
    }
    summary = {"model": name, "parameters": 1000, "train_minutes": 1.0, "epochs": 2.0, "tokens_per_s": 500.0}
    return {**summary, "name": name, "run": f"runs/{name}", "eval": evaluation}


def test_the_report_table_shows_chrf_pp_and_ter_and_reads_evaluations_without_them():
    from translate.evaluation.comparison import markdown

    scores = corpus_scores(HYPS, REFS)
    old = {k: v for k, v in scores.items() if not k.startswith(("chrf_pp", "ter"))}  # evaluated before they were
    lines = markdown([report_row("transformer", scores), report_row("rnn_attention", old)]).splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[6:11] == ["BLEU", "chrF", "chrF++", "TER", "probe BLEU"]
    new_row, old_row = ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:6])
    assert new_row[6:10] == [f"{scores[k]:.2f}" for k in ("bleu", "chrf", "chrf_pp", "ter")]
    assert old_row[6:10] == [f"{scores['bleu']:.2f}", f"{scores['chrf']:.2f}", "–", "–"]
    signatures = next(line for line in lines if line.startswith("BLEU signature"))
    assert f"chrF++ signature: `{scores['chrf_pp_signature']}`" in signatures
    assert f"TER signature: `{scores['ter_signature']}`" in signatures
    old_first = markdown([report_row("rnn_attention", old)])  # a report of old evaluations only: no empty signatures
    assert "chrF++ signature" not in old_first and "TER" in old_first.splitlines()[2]


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_length_bucket_edges():
    lengths = [0, 1, 9, 10, 11, 19, 20, 999, 1000]
    sources = [words(n) for n in lengths]
    picked = lambda lo, hi: [lengths[i] for i in length_bucket(sources, lo, hi)]
    assert picked(0, 10) == [0, 1, 9]  # the empty source is 0 words, in the first bucket
    assert picked(10, 20) == [10, 11, 19]  # a source of exactly a bound's length opens the next bucket
    assert picked(20, 1000) == [20, 999]  # the last bound is exclusive too
    assert picked(1, 10) == [1, 9]
    assert picked(5, 5) == []
    # words are whitespace-separated tokens, however much whitespace; punctuation stays on its word
    assert length_bucket(["", "   ", "a  b\tc\n", "Hello, world."], 0, 1) == [0, 1]
    assert length_bucket(["", "   ", "a  b\tc\n", "Hello, world."], 2, 4) == [2, 3]


def test_bleu_by_length_is_sacrebleu_on_exactly_each_buckets_sentences():
    # sources of 2, 2, 4, 5, 12 and 3 words; the [6, 10) bucket stays empty; a 0-word source lies below every bucket
    sources = [words(n) for n in (2, 2, 4, 5, 12, 3)] + [""]
    hyps, refs = [*HYPS, "Two dogs play with a red ball in the park.", "nothing"], [*REFS, REFS[1], "something"]
    buckets = bleu_by_length(sources, hyps, refs, [1, 3, 6, 10, 20])
    assert [(b["min_words"], b["max_words"], b["sentences"]) for b in buckets] == [
        (1, 2, 2),
        (3, 5, 3),
        (6, 9, 0),
        (10, 19, 1),
    ]
    members = [[0, 1], [2, 3, 5], [], [4]]
    for bucket, idx in zip(buckets, members):
        expected = sacre_bleu([hyps[i] for i in idx], [refs[i] for i in idx]) if idx else None
        assert bucket["bleu"] == (None if expected is None else round(expected, 2))
    assert buckets[2]["bleu"] is None
    # per-bucket scores, not the corpus score repeated: they differ from one another and from the whole set's
    scored = [b["bleu"] for b in buckets if b["bleu"] is not None]
    assert len(set(scored)) == 3
    assert round(sacre_bleu(hyps[:6], refs[:6]), 2) not in scored


def test_bleu_statistics_sum_to_corpus_bleu():
    stats = bleu_statistics(HYPS, REFS)
    assert stats.shape == (len(HYPS), 2 + 2 * BLEU_ORDER) and stats.dtype == np.int64
    assert bleu_from_statistics(stats.sum(0)) == sacre_bleu(HYPS, REFS)
    for idx in ([0], [1, 3], [4, 4, 2]):  # any subset, repeats included as the bootstrap draws them
        assert bleu_from_statistics(stats[idx].sum(0)) == sacre_bleu([HYPS[i] for i in idx], [REFS[i] for i in idx])
    one = sacrebleu.corpus_bleu([HYPS[2]], [[REFS[2]]])
    assert stats[2].tolist() == [one.sys_len, one.ref_len, *one.counts, *one.totals]


def test_bleu_statistics_by_hand():
    # 13a tokenization splits the final period: hypothesis 4 tokens, reference 5; all 4 unigrams match,
    # 2 of 3 bigrams ("sat ." does not), 1 of 2 trigrams, no 4-gram
    stats = bleu_statistics(["the cat sat.", "", "dog"], ["the cat sat down.", "a b", "cat"])
    assert stats.tolist() == [
        [4, 5, 4, 2, 1, 0, 4, 3, 2, 1],
        [0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 0, 0, 0],
    ]
    assert bleu_statistics([], []).shape == (0, 2 + 2 * BLEU_ORDER)


def test_bleu_from_statistics_smooths_like_corpus_bleu():
    # no 4-gram matches but some 1- to 3-gram ones: sacreBLEU's exp smoothing gives a score above 0
    hyps, refs = ["a b c x e f g"], ["a b c d e f g"]
    expected = sacre_bleu(hyps, refs)
    assert expected > 0
    assert bleu_from_statistics(bleu_statistics(hyps, refs).sum(0)) == expected
    assert bleu_from_statistics(bleu_statistics(["x y z"], ["a b c"]).sum(0)) == 0.0


def paired_systems(seed: int = 0) -> dict:
    """40 short and 40 long sentences; `good` is better than `poor` by a margin that grows with length."""
    rnd = random.Random(seed)
    vocab = [f"v{i}" for i in range(30)]

    def noisy(ref: list[str], p: float) -> str:
        return " ".join(w if rnd.random() > p else rnd.choice(vocab) for w in ref)

    refs, good, poor, sources = [], [], [], []
    for n in [4] * 40 + [25] * 40:
        ref = [rnd.choice(vocab) for _ in range(n)]
        refs.append(" ".join(ref))
        sources.append(words(n))
        good.append(noisy(ref, 0.2))
        poor.append(noisy(ref, 0.25 if n < 10 else 0.6))
    return {
        "refs": refs,
        "good": good,
        "poor": poor,
        "short": length_bucket(sources, 0, 10),
        "long": length_bucket(sources, 10, 1000),
    }


@pytest.fixture(scope="module")
def systems() -> dict:
    s = paired_systems()
    s["good_stats"], s["poor_stats"] = bleu_statistics(s["good"], s["refs"]), bleu_statistics(s["poor"], s["refs"])
    return s


def lead(s: dict, idx: list[int]) -> float:
    pick = lambda texts: [texts[i] for i in idx]
    return sacre_bleu(pick(s["good"]), pick(s["refs"])) - sacre_bleu(pick(s["poor"]), pick(s["refs"]))


def test_lead_growth_point_estimate_is_the_difference_of_sacrebleu_leads(systems):
    growth, low, high = lead_growth_interval(
        systems["good_stats"], systems["poor_stats"], systems["short"], systems["long"]
    )
    assert growth == round(lead(systems, systems["long"]) - lead(systems, systems["short"]), 2)
    assert low <= growth <= high and low < high
    assert low > 0  # the lead clearly grows with length: the interval excludes 0


def test_lead_growth_interval_is_a_paired_bootstrap_in_a_fixed_order(systems):
    """The same draws as a plain reimplementation on the texts: long bucket first, then short, one draw per
    resample shared by both systems; so reruns (and reports made before) give the same interval."""
    resamples, seed = 40, 7
    rng = np.random.default_rng(seed)
    long_draws = rng.choice(systems["long"], size=(resamples, len(systems["long"])))
    short_draws = rng.choice(systems["short"], size=(resamples, len(systems["short"])))
    growth = [lead(systems, list(a)) - lead(systems, list(b)) for a, b in zip(long_draws, short_draws)]
    low, high = np.percentile(growth, [2.5, 97.5])
    got = lead_growth_interval(
        systems["good_stats"], systems["poor_stats"], systems["short"], systems["long"], resamples=resamples, seed=seed
    )
    assert got[1:] == (round(float(low), 2), round(float(high), 2))


def test_lead_growth_interval_is_deterministic_for_a_seed(systems):
    args = systems["good_stats"], systems["poor_stats"], systems["short"], systems["long"]
    first = lead_growth_interval(*args, resamples=200, seed=1)
    assert lead_growth_interval(*args, resamples=200, seed=1) == first
    other = lead_growth_interval(*args, resamples=200, seed=2)
    assert other[0] == first[0] and other[1:] != first[1:]  # the seed moves the interval, not the point estimate


def test_lead_growth_swapping_the_systems_negates_it(systems):
    args = systems["short"], systems["long"]
    growth, low, high = lead_growth_interval(systems["good_stats"], systems["poor_stats"], *args, resamples=200)
    back = lead_growth_interval(systems["poor_stats"], systems["good_stats"], *args, resamples=200)
    assert back == pytest.approx((-growth, -high, -low), abs=0.011)
    assert back[2] < 0


def test_lead_growth_of_identical_systems_is_zero(systems):
    stats = systems["good_stats"]
    assert lead_growth_interval(stats, stats.copy(), systems["short"], systems["long"], resamples=100) == (
        0.0,
        0.0,
        0.0,
    )


def test_lead_growth_of_a_constant_lead_is_not_significant():
    # the same gap between the systems at both lengths: growth near 0, and an interval that straddles it
    s = paired_systems(seed=3)
    rnd = random.Random(4)
    s["poor"] = [" ".join(w if rnd.random() > 0.3 else "zz" for w in r.split()) for r in s["refs"]]
    good, poor = bleu_statistics(s["good"], s["refs"]), bleu_statistics(s["poor"], s["refs"])
    growth, low, high = lead_growth_interval(good, poor, s["short"], s["long"], resamples=300)
    assert low < 0 < high
    assert growth == round(lead(s, s["long"]) - lead(s, s["short"]), 2)
