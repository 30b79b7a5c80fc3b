"""Token-bucketed batches: similar lengths together, padded, with masks.

A batch holds as many sentences as fit in `batch_tokens` padded tokens (the
longer of source and target counts).  The order of batches depends only on a
seed and the epoch number, so a run can be replayed or resumed exactly.  An
epoch is planned from the stored lengths alone (numpy arrays, a few bytes per
pair); a batch's tokens are gathered from the memory-mapped store when it is built.
"""

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
    """(B, max_len) long tensor of right-padded sequences (filled in one assignment: no per-row tensors)."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    out = np.full((len(sequences), int(lengths.max())), value, dtype=np.int64)
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.fromiter(
        itertools.chain.from_iterable(sequences), np.int64, int(lengths.sum())
    )
    return torch.from_numpy(out)


def collate(src: list[list[int]], tgt: list[list[int]] | None, indices: list[int]) -> Batch:
    """Build a batch from id lists (without BOS/EOS); `tgt` None for source-only batches."""
    src_t = pad([s + [EOS] for s in src])
    if tgt is None:
        tgt_in = tgt_out = torch.zeros(len(src), 0, dtype=torch.long)
    else:
        tgt_in, tgt_out = pad([[BOS] + t for t in tgt]), pad([t + [EOS] for t in tgt])
    return Batch(src_t, src_t != PAD, tgt_in, tgt_out, indices, int((tgt_out != PAD).sum()))


def token_batch_sizes(lengths: Sequence[int], batch_tokens: int) -> list[int]:
    """Sizes of the groups that greedily take, in the order given, as many items as fit in `batch_tokens` padded."""
    sizes, count, longest = [], 0, 0
    for length in lengths:
        longest_if_added = max(longest, length)
        if count and longest_if_added * (count + 1) > batch_tokens:
            sizes.append(count)
            count, longest_if_added = 0, length
        count, longest = count + 1, longest_if_added
    return sizes + [count] if count else sizes


def token_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Greedily group indices, in the order given, so padded size stays within `batch_tokens`."""
    bounds = np.cumsum([0, *token_batch_sizes(lengths, batch_tokens)]).tolist()
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def bucketed_batch_order(
    lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int, pool_batches: int = 100
) -> list[np.ndarray]:
    """Shuffled batches (arrays of indices) of similar-length sentences, fixed by (seed, epoch).

    Shuffle all indices, sort within pools of roughly `pool_batches` batches by
    length (little padding), cut into token batches, then shuffle the batches.
    `lengths[i]` is the padded cost of sentence i: max(source, target) + 1.
    """
    lengths = np.asarray(lengths)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).numpy()
    mean = max(1, int(lengths.sum(dtype=np.int64)) // max(1, len(lengths)))
    pool = max(1, pool_batches * batch_tokens // mean)
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")].astype(np.int32)  # stable: ties keep shuffled order
        batches += np.split(chunk, np.cumsum(token_batch_sizes(lengths[chunk].tolist(), batch_tokens))[:-1])
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class ExamplePlan:
    """One epoch's training examples: example i is pair i alone or, with probability `prob`, pair i joined to
    1..max_count-1 random others (joined pairs show the model long inputs the corpus lacks); fixed by (seed, epoch).
    Held as one (pairs, max_count - 1) array of partners, -1 where none."""

    def __init__(self, num_pairs: int, prob: float, max_count: int, seed: int, epoch: int):
        self.num_pairs, self.partners = num_pairs, None
        if prob > 0 and max_count >= 2:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
            joined = torch.rand(num_pairs, generator=g) < prob
            counts = torch.randint(2, max_count + 1, (num_pairs,), generator=g)
            partners = torch.randint(0, num_pairs, (num_pairs, max_count - 1), generator=g)
            used = (torch.arange(max_count - 1) < (counts - 1)[:, None]) & joined[:, None]
            self.partners = torch.where(used, partners, -1).to(torch.int32).numpy()

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, i: int) -> tuple[int, ...]:
        if self.partners is None:
            return (int(i),)
        row = self.partners[i]
        return (int(i), *row[row >= 0].tolist())

    def lengths(self, pair_lengths: np.ndarray) -> np.ndarray:
        """Each example's padded cost: the sum of its pairs'."""
        pair_lengths = np.asarray(pair_lengths)
        if self.partners is None:
            return pair_lengths
        return pair_lengths + np.where(self.partners >= 0, pair_lengths[self.partners], 0).sum(axis=1)


class EpochBatches(Sequence):
    """One epoch's batches; `batches[k]` is a list of examples (tuples of pair indices), built when asked for."""

    def __init__(self, plan: ExamplePlan, batches: list[np.ndarray]):
        self.plan, self.batches = plan, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> list[tuple[int, ...]]:
        return [self.plan[j] for j in self.batches[k].tolist()]


def sorted_batch_order(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Batches for decoding: sorted by length (least padding); callers restore the order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [[order[j] for j in b] for b in token_batches([lengths[i] for i in order], batch_tokens)]


def joining_probability(concat_prob: float, joinable: bool, corpus: str) -> float:
    """trainer.concat_prob, or 0 for a corpus whose joined pairs are not pairs (data.joinable=false), said once."""
    if concat_prob > 0 and not joinable:
        log.warning("data.joinable=false (%s): joined pairs are not pairs; trainer.concat_prob ignored", corpus)
    return concat_prob if joinable else 0.0


def epoch_joining_probability(concat_prob: float, ramp_epochs: int, epoch: int) -> float:
    """A length curriculum: the joining probability of epoch `epoch` (from 0) rises linearly, concat_prob·(e+1)/ramp,
    until epoch ramp − 1, and stays at concat_prob after; ramp 0 joins at concat_prob from the first epoch."""
    return concat_prob if ramp_epochs <= 0 else concat_prob * min(1.0, (epoch + 1) / ramp_epochs)


def training_batches(
    lengths: np.ndarray, batch_tokens: int, concat_prob: float, concat_max: int, seed: int, epoch: int
) -> EpochBatches:
    """One epoch's batches of training examples (see ExamplePlan), bucketed by length from the pairs' stored
    `lengths`; fixed by (seed, epoch), so a resumed run replays them exactly."""
    plan = ExamplePlan(len(lengths), concat_prob, concat_max, seed, epoch)
    return EpochBatches(plan, bucketed_batch_order(plan.lengths(lengths), batch_tokens, seed, epoch))


def collate_examples(store, examples: list[tuple[int, ...]]) -> Batch:
    """A batch of training examples from a token store, each the pairs it names joined (source to source,
    target to target)."""
    pairs = [i for example in examples for i in example]
    src, tgt = store.rows("src", pairs), store.rows("tgt", pairs)
    joined_src, joined_tgt, k = [], [], 0
    for example in examples:
        n = len(example)
        joined_src.append(src[k] if n == 1 else [t for row in src[k : k + n] for t in row])
        joined_tgt.append(tgt[k] if n == 1 else [t for row in tgt[k : k + n] for t in row])
        k += n
    return collate(joined_src, joined_tgt, [e[0] for e in examples])


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
