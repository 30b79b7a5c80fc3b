"""The long-sentence probe: consecutive test pairs joined into longer inputs with exact references.

Multi30k sentences are short (≈12 words), so BLEU by length ends early.  Joining
k = 1…K consecutive pairs (source to source, reference to reference) stretches the
length axis to 60+ words while every reference stays a true translation.  By default
every k covers the whole test set, so each length is made of the same sentences and a
fall with length is not a change of content.
"""

from translate.data.corpus import Pairs


def long_sentence_probe(pairs: Pairs, k_max: int = 5, per_k: int = 0) -> tuple[Pairs, list[int]]:
    """Pairs made of k = 1..k_max consecutive, non-overlapping pairs, and each one's k.

    per_k > 0 keeps the first per_k inputs of each k; 0 keeps all (len(pairs) // k of them).
    """
    src, tgt, ks = [], [], []
    for k in range(1, k_max + 1):
        end = len(pairs) - k + 1 if per_k <= 0 else min(len(pairs) - k + 1, per_k * k)
        for start in range(0, end, k):
            src.append(" ".join(pairs.src[start : start + k]))
            tgt.append(" ".join(pairs.tgt[start : start + k]))
            ks.append(k)
    return Pairs(src, tgt), ks
