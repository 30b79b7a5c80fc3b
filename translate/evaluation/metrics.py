"""Translation quality with sacreBLEU: corpus BLEU, chrF, chrF++ and TER, BLEU per source-length bucket,
and a paired-bootstrap interval for how one system's lead over another changes with length.

Inputs are detokenized hypotheses and raw references, so scores compare with
published ones; every score is reported with its sacreBLEU signature.
"""

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER

_CORPUS_BLEU = BLEU()  # the corpus-BLEU settings (smoothing, n-gram order) that bleu_from_statistics reproduces
BLEU_ORDER = _CORPUS_BLEU.max_ngram_order  # 4: n-gram orders in corpus BLEU and in the rows of bleu_statistics


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """sacreBLEU's corpus scores with their signatures, its defaults throughout: BLEU, chrF, chrF++ (chrF with
    word bigrams, word_order=2) and TER (an edit rate: lower is better)."""
    bleu, chrf, chrf_pp, ter = BLEU(), CHRF(), CHRF(word_order=2), TER()
    b, c, cpp, t = (m.corpus_score(hypotheses, [references]) for m in (bleu, chrf, chrf_pp, ter))
    return {
        "bleu": round(b.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "bleu_detail": str(b),
        "chrf": round(c.score, 2),
        "chrf_signature": str(chrf.get_signature()),
        "chrf_pp": round(cpp.score, 2),
        "chrf_pp_signature": str(chrf_pp.get_signature()),
        "ter": round(t.score, 2),
        "ter_signature": str(ter.get_signature()),
    }


def length_bucket(sources: list[str], lo: int, hi: int) -> list[int]:
    """Indices of the sources with lo <= words < hi."""
    return [i for i, s in enumerate(sources) if lo <= len(s.split()) < hi]


def bleu_by_length(sources: list[str], hypotheses: list[str], references: list[str], edges: list[int]) -> list[dict]:
    """BLEU of the sentences whose source has lo <= words < hi, for consecutive bucket edges."""
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = length_bucket(sources, lo, hi)
        score = BLEU().corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score if idx else None
        buckets.append(
            {
                "min_words": lo,
                "max_words": hi - 1,
                "sentences": len(idx),
                "bleu": None if score is None else round(score, 2),
            }
        )
    return buckets


def bleu_statistics(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """[sentences, 2 + 2 * 4] BLEU sufficient statistics per sentence (lengths, n-gram matches and totals).

    Corpus BLEU of any subset is BLEU of its summed rows (`bleu_from_statistics`); sacreBLEU's own paired
    bootstrap works the same way. The statistics are read off sacreBLEU's public sentence scores, whose
    counts are computed exactly as in its corpus score (effective_order only changes the sentence's score,
    not its counts, and silences the warning sentence_score gives without it).
    """
    bleu = BLEU(effective_order=True)
    rows = []
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        s = bleu.sentence_score(hypothesis, [reference])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 2 + 2 * BLEU_ORDER)


def bleu_from_statistics(stats: np.ndarray) -> float:
    """Corpus BLEU (sacreBLEU's defaults: exp smoothing, 4-grams) of summed `bleu_statistics` rows."""
    sys_len, ref_len, *counts = (int(x) for x in stats)
    return BLEU.compute_bleu(
        correct=counts[:BLEU_ORDER],
        total=counts[BLEU_ORDER:],
        sys_len=sys_len,
        ref_len=ref_len,
        smooth_method=_CORPUS_BLEU.smooth_method,
        smooth_value=_CORPUS_BLEU.smooth_value,
        effective_order=_CORPUS_BLEU.effective_order,
        max_ngram_order=BLEU_ORDER,
    ).score


def lead_growth_interval(
    system: np.ndarray,
    baseline: np.ndarray,
    short: list[int],
    long: list[int],
    resamples: int = 1000,
    seed: int = 12345,
) -> tuple[float, float, float]:
    """How much more `system` leads `baseline` (BLEU) on the `long` sentences than on the `short` ones.

    system, baseline: [sentences, stats] from bleu_statistics on the same sentences; short, long: row indices.
    Returns the growth and its 95 % paired-bootstrap interval: each resample draws sentences with
    replacement within each bucket, the same draw for both systems.
    """
    rng = np.random.default_rng(seed)

    def lead(rows: np.ndarray) -> np.ndarray:  # rows: [resamples, n] -> [resamples]
        sums = zip(system[rows].sum(1), baseline[rows].sum(1))
        return np.array([bleu_from_statistics(a) - bleu_from_statistics(b) for a, b in sums])

    point = lead(np.array([long])) - lead(np.array([short]))
    growth = lead(rng.choice(long, size=(resamples, len(long)))) - lead(rng.choice(short, size=(resamples, len(short))))
    low, high = np.percentile(growth, [2.5, 97.5])
    return round(float(point[0]), 2), round(float(low), 2), round(float(high), 2)
