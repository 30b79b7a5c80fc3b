"""Translation quality with sacreBLEU: corpus BLEU and chrF, and BLEU per source-length bucket.

Inputs are detokenized hypotheses and raw references, so scores compare with
published ones; every score is reported with its sacreBLEU signature.
"""

from sacrebleu.metrics import BLEU, CHRF


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(b.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "bleu_detail": str(b),
        "chrf": round(c.score, 2),
        "chrf_signature": str(chrf.get_signature()),
    }


def bleu_by_length(sources: list[str], hypotheses: list[str], references: list[str], edges: list[int]) -> list[dict]:
    """BLEU of the sentences whose source has lo <= words < hi, for consecutive bucket edges."""
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = [i for i, s in enumerate(sources) if lo <= len(s.split()) < hi]
        score = BLEU().corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score if idx else None
        buckets.append({"min_words": lo, "max_words": hi - 1, "sentences": len(idx), "bleu": None if score is None else round(score, 2)})
    return buckets
