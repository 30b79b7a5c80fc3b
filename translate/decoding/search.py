"""Decoding through the contract every model keeps (translate/models/base.py: encode / decode_step).

Search knows tensors and token ids, not tokenizers or trainers.  A decoding
state is a dict whose tensors (alone, in lists or in NamedTuples) have the batch
in dim 0, so `select` can keep, drop or reorder sentences without knowing the model:
greedy search decodes B rows, beam search B·K rows (K beams per sentence).
"""

from dataclasses import dataclass

import torch

from translate.data.batching import collate, sorted_batch_order
from translate.decoding.options import DecodingOptions
from translate.models.base import Seq2SeqModel


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # sum of log-probabilities, EOS included when emitted
    normalized: float | None = None  # beam search ranks by score / gnmt_length_penalty(T, alpha)


def select(state, index: torch.Tensor):
    """Index every tensor of a decoding state along the batch dimension."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: select(v, index) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a NamedTuple, e.g. the Transformer's KV
        return type(state)(*(select(v, index) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(select(v, index) for v in state)
    return state


def max_output_lengths(src_mask: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    """(B,) limit on output tokens: ratio × source tokens + offset, at least 1."""
    return ((src_mask.sum(1).float() * ratio).long() + offset).clamp(min=1)


@torch.no_grad()
def greedy_search(model: Seq2SeqModel, src, src_mask, bos: int, eos: int, max_len: torch.Tensor) -> list[Hypothesis]:
    """Pick the most probable token at every step, for a whole batch at once.

    src, src_mask (B, S); max_len (B,) -> one Hypothesis per sentence.
    """
    batch = src.shape[0]
    state = model.encode(src, src_mask)
    prev = torch.full((batch,), bos, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    tokens = []
    for t in range(int(max_len.max())):
        logits, state = model.decode_step(state, prev)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        best_score, prev = log_probs.max(dim=-1)
        scores += best_score.masked_fill(finished, 0.0)
        tokens.append(prev)
        finished |= (prev == eos) | (t + 1 >= max_len)
        if bool(finished.all()):
            break
    tokens = torch.stack(tokens, dim=1).tolist()
    hypotheses = []
    for i, seq in enumerate(tokens):
        seq = seq[: int(max_len[i])]  # a sentence at its limit went on decoding beside the others: not its tokens
        length = seq.index(eos) if eos in seq else len(seq)
        hypotheses.append(Hypothesis(seq[:length], float(scores[i])))
    return hypotheses


def gnmt_length_penalty(length, alpha: float):
    """GNMT (Wu et al. 2016):  lp(Y) = ((5 + |Y|) / 6)^α;  beam search ranks by log P(Y|X) / lp(Y).

    |Y| counts the decoded steps, EOS included.  α = 0 ranks by the raw score.
    """
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    src,
    src_mask,
    bos: int,
    eos: int,
    max_len: torch.Tensor,
    beam_size: int = 5,
    alpha: float = 0.6,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Batched beam search: the K beams of all B sentences decode together as B·K rows.

    src, src_mask (B, S); max_len (B,) -> per sentence its `n_best` hypotheses, best first
    (by score / gnmt_length_penalty(len, alpha)).

    Each step extends every live beam by every token, keeps the 2K best candidates
    per sentence and then: an EOS among the K best finishes a hypothesis; the K best
    non-EOS candidates become the live beams (at a sentence's max_len, all of the K
    best finish instead).  A sentence is done, and leaves the batch, once it has K
    finished hypotheses, or when no live beam can still beat its `n_best` finished ones:
    log-probs are ≤ 0 and lp grows with length (alpha ≥ 0), so a live beam's score s
    bounds its normalized score by s / lp(max_len).
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")
    if alpha < 0:
        raise ValueError(f"length penalty alpha={alpha} must be >= 0")
    B, K, device = src.shape[0], beam_size, src.device
    state = select(model.encode(src, src_mask), torch.arange(B, device=device).repeat_interleave(K))  # (B·K, …)
    sent = torch.arange(B, device=device)  # (A,) original index of each sentence still decoding
    limit = max_len.to(device)  # (B,)
    scores = torch.full((B, K), float("-inf"), device=device)  # (A, K) sum of log-probs of each live beam
    scores[:, 0] = 0.0  # all beams start equal: keep one, or the first step would fill the beam with copies
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=device)  # (A, K, t) live beams' tokens
    prev = torch.full((B * K,), bos, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    num_finished = torch.zeros(B, dtype=torch.long, device=device)  # (B,)
    top_finished = torch.full((B, n_best), float("-inf"), device=device)  # (B, n_best) best normalized scores so far

    for t in range(int(max_len.max())):
        A = sent.numel()
        logits, state = model.decode_step(state, prev)
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(A, K, -1)  # (A, K, V)
        V = log_probs.shape[-1]
        cand_scores, cand = (scores.unsqueeze(-1) + log_probs).view(A, K * V).topk(2 * K, dim=1)  # (A, 2K), best first
        origin, token = cand // V, cand % V  # the beam each candidate extends, and its new token
        rows = torch.arange(A, device=device).unsqueeze(1)  # (A, 1)
        history = tokens[rows, origin]  # (A, 2K, t)

        # finish the EOS candidates among the K best; at a sentence's length limit, finish all K best
        at_limit = t + 1 >= limit[sent]  # (A,)
        ends = ((token == eos) | at_limit.unsqueeze(1)) & torch.isfinite(cand_scores)
        ends[:, K:] = False
        normalized = cand_scores / gnmt_length_penalty(t + 1, alpha)  # (A, 2K)
        for a, j in ends.nonzero().tolist():
            seq = history[a, j].tolist() + ([] if int(token[a, j]) == eos else [int(token[a, j])])
            finished[int(sent[a])].append(Hypothesis(seq, float(cand_scores[a, j]), float(normalized[a, j])))
        num_finished[sent] += ends.sum(1)
        top_finished[sent] = torch.cat([top_finished[sent], normalized.masked_fill(~ends, float("-inf"))], 1).topk(
            n_best, 1
        )[0]

        # the K best non-EOS candidates live on (a stable sort keeps them in rank order)
        keep = (token == eos).argsort(dim=1, stable=True)[:, :K]  # (A, K)
        scores, origin, token = cand_scores.gather(1, keep), origin.gather(1, keep), token.gather(1, keep)
        tokens = torch.cat([history.gather(1, keep.unsqueeze(-1).expand(-1, -1, t)), token.unsqueeze(-1)], dim=2)

        # retire sentences with K finished hypotheses, or whose n best no live beam can beat any more
        best_live = scores[:, 0] / gnmt_length_penalty(limit[sent].float(), alpha)  # upper bound: scores only fall
        done = at_limit | (num_finished[sent] >= K) | (top_finished[sent, -1] >= best_live)
        if bool(done.all()):
            break
        alive = (~done).nonzero().squeeze(1)  # (A',)
        state = select(state, ((alive * K).unsqueeze(1) + origin[alive]).flatten())  # reorder beams, drop done rows
        sent, scores, tokens, prev = sent[alive], scores[alive], tokens[alive], token[alive].flatten()

    return [sorted(hyps, key=lambda h: h.normalized, reverse=True)[:n_best] for hyps in finished]


def source_limit(model) -> int | None:
    """Source tokens a model (ours or a CT2Model) can read, its EOS not counted.  Every model of translate/models
    has a finite `max_positions` (the RNNs too); None only for a model without one, which is read whole."""
    return None if model.max_positions is None else model.max_positions - 1


def check_n_best(beam_size: int, n_best: int) -> None:
    """n-best lists come from beam search: refuse n_best > 1 with greedy decoding."""
    if beam_size == 1 and n_best != 1:
        raise ValueError(f"n_best={n_best} needs beam search; set beam_size >= n_best")


@torch.no_grad()
def translate_ids(
    model: Seq2SeqModel,
    sources: list[list[int]],
    bos: int,
    eos: int,
    options: DecodingOptions = DecodingOptions(),
    progress=None,
) -> list[Hypothesis]:
    """Decode many tokenized sentences in length-sorted batches; results come back in input order.

    A source longer than the model can place is cut to `source_limit(model)` tokens, an output to
    `model.max_positions` (callers warn: `translate.decoding.inference.encode_sources`).

    beam_size 1 is greedy search.  Returns `n_best` hypotheses per sentence, flat and best
    first: those of sentence i are results[i * n_best : (i + 1) * n_best].
    `batch_tokens` counts source tokens × beam_size, so a batch's decoding rows stay bounded.
    """
    beam_size, n_best, length_penalty = options.beam_size, options.n_best, options.length_penalty
    check_n_best(beam_size, n_best)
    device, limit = next(model.parameters()).device, model.max_positions
    sources = [s[: source_limit(model)] for s in sources]
    results: list[list[Hypothesis]] = [[] for _ in sources]
    for indices in sorted_batch_order([(len(s) + 1) * beam_size for s in sources], options.batch_tokens):
        batch = collate([sources[i] for i in indices], None, indices).to(device)
        max_len = max_output_lengths(batch.src_mask, options.max_len_ratio, options.max_len_offset)
        max_len = max_len if limit is None else max_len.clamp(max=limit)
        if beam_size == 1:
            hyps = [[h] for h in greedy_search(model, batch.src, batch.src_mask, bos, eos, max_len)]
        else:
            hyps = beam_search(model, batch.src, batch.src_mask, bos, eos, max_len, beam_size, length_penalty, n_best)
        for i, nbest in zip(indices, hyps):
            results[i] = nbest
        if progress is not None:
            progress.update(len(indices))
    return [h for nbest in results for h in nbest]
