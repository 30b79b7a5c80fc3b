"""Token-bucketed batches: similar lengths together, padded, with masks.

A batch holds as many sentences as fit in `batch_tokens` padded tokens (the
longer of source and target counts).  The order of batches depends only on a
seed and the epoch number, so a run can be replayed or resumed exactly.
"""

import logging
from dataclasses import dataclass

import torch

from translate.data.tokenizer import BOS, EOS, PAD

log = logging.getLogger(__name__)


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) source ids, EOS-terminated, PAD-padded
    src_mask: torch.Tensor  # (B, S) bool, True on real tokens
    tgt_in: torch.Tensor  # (B, T) BOS + target
    tgt_out: torch.Tensor  # (B, T) target + EOS, PAD-padded
    indices: list[int]  # positions of these sentences in the encoded split
    num_tgt_tokens: int  # non-pad tokens in tgt_out

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            move(self.src),
            move(self.src_mask),
            move(self.tgt_in),
            move(self.tgt_out),
            self.indices,
            self.num_tgt_tokens,
        )


def pad(sequences: list[list[int]], value: int = PAD) -> torch.Tensor:
    """(B, max_len) long tensor of right-padded sequences."""
    out = torch.full((len(sequences), max(map(len, sequences))), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def collate(src: list[list[int]], tgt: list[list[int]] | None, indices: list[int]) -> Batch:
    """Build a batch from id lists (without BOS/EOS); `tgt` None for source-only batches."""
    src_t = pad([s + [EOS] for s in src])
    if tgt is None:
        tgt_in = tgt_out = torch.zeros(len(src), 0, dtype=torch.long)
    else:
        tgt_in, tgt_out = pad([[BOS] + t for t in tgt]), pad([t + [EOS] for t in tgt])
    return Batch(src_t, src_t != PAD, tgt_in, tgt_out, indices, int((tgt_out != PAD).sum()))


def token_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Greedily group indices, in the order given, so padded size stays within `batch_tokens`."""
    batches, current, longest = [], [], 0
    for i in range(len(lengths)):
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def bucketed_batch_order(
    lengths: list[int], batch_tokens: int, seed: int, epoch: int, pool_batches: int = 100
) -> list[list[int]]:
    """Shuffled batches of similar-length sentences, fixed by (seed, epoch).

    Shuffle all indices, sort within pools of roughly `pool_batches` batches by
    length (little padding), cut into token batches, then shuffle the batches.
    `lengths[i]` is the padded cost of sentence i: max(source, target) + 1.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mean = max(1, sum(lengths) // max(1, len(lengths)))
    pool = max(1, pool_batches * batch_tokens // mean)
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [[chunk[j] for j in b] for b in token_batches([lengths[i] for i in chunk], batch_tokens)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def concatenation_plan(num_pairs: int, prob: float, max_count: int, seed: int, epoch: int) -> list[tuple[int, ...]]:
    """Training examples for one epoch: pair i alone, or with probability `prob` joined to 1..max_count-1 random others.

    Joined pairs show the model long inputs that the corpus lacks; the plan is fixed by (seed, epoch).
    """
    if prob <= 0 or max_count < 2:
        return [(i,) for i in range(num_pairs)]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    joined = (torch.rand(num_pairs, generator=g) < prob).tolist()
    counts = torch.randint(2, max_count + 1, (num_pairs,), generator=g).tolist()
    partners = torch.randint(0, num_pairs, (num_pairs, max_count - 1), generator=g).tolist()
    return [(i, *partners[i][: counts[i] - 1]) if joined[i] else (i,) for i in range(num_pairs)]


def sorted_batch_order(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Batches for decoding: sorted by length (least padding); callers restore the order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [[order[j] for j in b] for b in token_batches([lengths[i] for i in order], batch_tokens)]


def joining_probability(concat_prob: float, joinable: bool, corpus: str) -> float:
    """trainer.concat_prob, or 0 for a corpus whose joined pairs are not pairs (data.joinable=false), said once."""
    if concat_prob > 0 and not joinable:
        log.warning("data.joinable=false (%s): joined pairs are not pairs; trainer.concat_prob ignored", corpus)
    return concat_prob if joinable else 0.0


def training_batches(lengths: list[int], batch_tokens: int, concat_prob: float, concat_max: int, seed: int, epoch: int):
    """One epoch's batches of training examples — tuples of pair indices joined into one example (see
    concatenation_plan) — bucketed by length; fixed by (seed, epoch), so a resumed run replays them exactly."""
    plan = concatenation_plan(len(lengths), concat_prob, concat_max, seed, epoch)
    example_lengths = [sum(lengths[i] for i in example) for example in plan]
    return [[plan[j] for j in batch] for batch in bucketed_batch_order(example_lengths, batch_tokens, seed, epoch)]


def collate_examples(src: list[list[int]], tgt: list[list[int]], examples: list[tuple[int, ...]]) -> Batch:
    """A batch of training examples, each the pairs it names joined (source to source, target to target)."""
    join = lambda side, example: [t for i in example for t in side[i]]  # noqa: E731
    return collate([join(src, e) for e in examples], [join(tgt, e) for e in examples], [e[0] for e in examples])


def split_batch(examples: list, parts: int) -> list[list]:
    """A batch cut into `parts` contiguous shares of nearly equal size (its examples are sorted by length, so the
    shares hold nearly equal tokens): one per rank and accumulation step.  Shares past the examples are empty."""
    size, extra = divmod(len(examples), parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return [examples[a:b] for a, b in zip(bounds, bounds[1:])]


def rank_shares(step_batch: list, rank: int, ranks: int, accumulate: int) -> list[tuple[list, float]]:
    """This rank's `accumulate` shares of a step batch, as (examples, weight): a share left empty (a batch of
    fewer examples than shares) trains on a copy of the first example with weight 0."""
    shares = split_batch(step_batch, ranks * accumulate)[rank * accumulate : (rank + 1) * accumulate]
    return [(share, 1.0) if share else (step_batch[:1], 0.0) for share in shares]
