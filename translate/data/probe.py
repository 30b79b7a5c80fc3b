"""The long-sentence probe: consecutive test pairs joined into longer inputs with exact references.

Multi30k sentences are short (≈12 words), so BLEU by length ends early.  Joining
k = 1…K consecutive pairs (source to source, reference to reference) stretches the
length axis to 60+ words while every reference stays a true translation.
"""

from translate.data.corpus import Pairs


def long_sentence_probe(pairs: Pairs, k_max: int = 5, per_k: int = 200) -> tuple[Pairs, list[int]]:
    """Pairs made of k = 1..k_max consecutive, non-overlapping pairs (at most `per_k` each), and each one's k."""
    src, tgt, ks = [], [], []
    for k in range(1, k_max + 1):
        for start in range(0, min(len(pairs) - k + 1, per_k * k), k):
            src.append(" ".join(pairs.src[start : start + k]))
            tgt.append(" ".join(pairs.tgt[start : start + k]))
            ks.append(k)
    return Pairs(src, tgt), ks
