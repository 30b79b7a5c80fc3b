"""Where a model trained on the reversal task (data=synthetic, task reverse) goes wrong: exact reversals and the
reference positions missed at *repeat sites* (a symbol next to an equal one, as in `s3 s3`) and elsewhere, by
source length; and the probe that breaks every repeat (scripts/reversal_errors.py)."""

import difflib
import random

from translate.evaluation.metrics import length_bucket


def repeat_sites(words: list[str]) -> set[int]:
    """Positions whose symbol equals a neighbour's."""
    return {i for i in range(len(words)) if (i and words[i - 1] == words[i]) or words[i + 1 : i + 2] == [words[i]]}


def wrong_positions(ref: list[str], hyp: list[str]) -> set[int]:
    """Reference positions not matched by the alignment of hyp to ref."""
    matched = set()
    for block in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_matching_blocks():
        matched.update(range(block.a, block.a + block.size))
    return set(range(len(ref))) - matched


def without_repeats(source: str, rng: random.Random, symbols: list[str]) -> str:
    """`source` with every symbol equal to its left neighbour redrawn from `symbols` until it differs (same length)."""
    words = source.split()
    for i in range(1, len(words)):
        while words[i] == words[i - 1]:
            words[i] = rng.choice(symbols)
    return " ".join(words)


def error_table(sources: list[str], refs: list[str], hyps: list[str], buckets: list[int]) -> list[dict]:
    """Per source-length bucket [lo, hi): sentences, exact reversals, and the reference positions hyp gets wrong at
    repeat sites and elsewhere (counts and percentages)."""
    rows = []
    for lo, hi in zip(buckets, buckets[1:]):
        bucket = length_bucket(sources, lo, hi)
        n, exact = len(bucket), sum(refs[i] == hyps[i] for i in bucket)
        sites = site_errors = others = other_errors = 0
        for i in bucket:
            r, h = refs[i].split(), hyps[i].split()
            repeats, wrong = repeat_sites(r), wrong_positions(r, h)
            sites, site_errors = sites + len(repeats), site_errors + len(repeats & wrong)
            others, other_errors = others + len(r) - len(repeats), other_errors + len(wrong - repeats)
        rows.append(
            {
                "bucket": f"{lo}-{hi - 1}",
                "sentences": n,
                "exact_percent": round(100 * exact / max(n, 1), 1),
                "repeat_sites": sites,
                "repeat_site_error_percent": round(100 * site_errors / max(sites, 1), 2),
                "other_positions": others,
                "other_error_percent": round(100 * other_errors / max(others, 1), 2),
            }
        )
    return rows
