"""Decoding through the one interface every model shares (encode / decode_step).

Search knows tensors and token ids, not tokenizers or trainers.  A decoding
state is a dict whose tensors (possibly inside lists) have the batch in dim 0,
so `select` can keep, drop or reorder sentences without knowing the model.
"""

from dataclasses import dataclass

import torch

from translate.data.batching import collate, sorted_batch_order


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # sum of log-probabilities, EOS included when emitted
    attention: torch.Tensor | None = None  # (T, S) for models that expose attention


def select(state, index: torch.Tensor):
    """Index every tensor of a decoding state along the batch dimension."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: select(v, index) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(select(v, index) for v in state)
    return state


def max_output_lengths(src_mask: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    """(B,) limit on output tokens: ratio × source tokens + offset."""
    return (src_mask.sum(1).float() * ratio).long() + offset


@torch.no_grad()
def greedy_search(model, src, src_mask, bos: int, eos: int, max_len: torch.Tensor, need_attention: bool = False) -> list[Hypothesis]:
    """Pick the most probable token at every step, for a whole batch at once.

    src, src_mask (B, S); max_len (B,) -> one Hypothesis per sentence.
    """
    batch = src.shape[0]
    state = model.encode(src, src_mask)
    prev = torch.full((batch,), bos, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    tokens, attention = [], []
    for t in range(int(max_len.max())):
        logits, state = model.decode_step(state, prev, need_attention=need_attention)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        best_score, prev = log_probs.max(dim=-1)
        scores += best_score.masked_fill(finished, 0.0)
        tokens.append(prev)
        if need_attention:
            attention.append(state["attention"])
        finished |= (prev == eos) | (t + 1 >= max_len)
        if bool(finished.all()):
            break
    tokens = torch.stack(tokens, dim=1).tolist()
    attention = torch.stack(attention, dim=1) if attention else None
    hypotheses = []
    for i, seq in enumerate(tokens):
        length = seq.index(eos) if eos in seq else min(len(seq), int(max_len[i]))
        att = attention[i, : length + 1, : int(src_mask[i].sum())].cpu() if attention is not None else None
        hypotheses.append(Hypothesis(seq[:length], float(scores[i]), att))
    return hypotheses


@torch.no_grad()
def translate_ids(
    model,
    sources: list[list[int]],
    bos: int,
    eos: int,
    batch_tokens: int = 6000,
    max_len_ratio: float = 2.0,
    max_len_offset: int = 10,
    need_attention: bool = False,
    progress=None,
) -> list[Hypothesis]:
    """Decode many tokenized sentences in length-sorted batches; results come back in input order."""
    device = next(model.parameters()).device
    results: list[Hypothesis | None] = [None] * len(sources)
    for indices in sorted_batch_order([len(s) + 1 for s in sources], batch_tokens):
        batch = collate([sources[i] for i in indices], None, indices).to(device)
        max_len = max_output_lengths(batch.src_mask, max_len_ratio, max_len_offset)
        for i, hyp in zip(indices, greedy_search(model, batch.src, batch.src_mask, bos, eos, max_len, need_attention)):
            results[i] = hyp
        if progress is not None:
            progress.update(len(indices))
    return results
