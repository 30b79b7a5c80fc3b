"""Validation: how well a model translates a set of pairs, and what of it TensorBoard shows.

    result = validate(model, tokenizer, pairs, ...)     loss and perplexity (teacher forced), decoded
                                                        hypotheses, sacreBLEU BLEU, chrF, chrF++ and TER with
                                                        signatures
    write_validation(writer, tag, step, result, ...)    scalars, sample translations, attention images

Training calls it at every validation (greedy, on the validation split); evaluation on the set it
scores (with the decoding settings asked for).  Nothing here knows a trainer.
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from translate.data.batching import collate
from translate.data.corpus import Pairs
from translate.data.tokenizer import BOS, EOS, PAD, Tokenizer
from translate.decoding.attention_maps import attention_maps
from translate.decoding.options import DecodingOptions
from translate.decoding.search import Hypothesis, translate_ids
from translate.evaluation.metrics import corpus_scores
from translate.evaluation.plots import attention_figure
from translate.models.base import Seq2SeqModel
from translate.models.loss import sequence_loss

LOSS_BATCH = 64  # sentences per teacher-forced batch


@dataclass
class Validation:
    loss: float  # mean NLL per target token (no label smoothing), over all pairs
    scores: dict  # translate.evaluation.metrics.corpus_scores of the decoded pairs: bleu, chrf, chrf_pp, ter, …
    sources: list[list[int]]  # the decoded sources' subword ids
    hyps: list[Hypothesis]  # best hypothesis per decoded source
    hypotheses: list[str]  # the same, detokenized

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 50))

    @property
    def bleu(self) -> float:
        return self.scores["bleu"]

    def summary(self, step: int) -> dict:
        return {"step": step, "loss": self.loss, "ppl": self.ppl, "bleu": self.bleu, "chrf": self.scores["chrf"]}


@torch.no_grad()
def target_nll(
    model: Seq2SeqModel, src: list[list[int]], tgt: list[list[int]], loss_chunk: int, autocast=nullcontext
) -> float:
    """Mean negative log-likelihood per target token, teacher forced, `LOSS_BATCH` sentences at a time."""
    device = next(model.parameters()).device
    nll, tokens = torch.zeros((), device=device), 0
    for start in range(0, len(src), LOSS_BATCH):
        idx = list(range(start, min(start + LOSS_BATCH, len(src))))
        batch = collate([src[i] for i in idx], [tgt[i] for i in idx], idx).to(device)
        with autocast():
            nll += sequence_loss(model, batch, 0.0, PAD, loss_chunk)[1]
        tokens += batch.num_tgt_tokens
    return nll.item() / max(1, tokens)


@torch.no_grad()
def validate(
    model: Seq2SeqModel,
    tokenizer: Tokenizer,
    pairs: Pairs,
    loss_chunk: int = 1024,
    decode_first: int = 0,
    options: DecodingOptions = DecodingOptions(),
    autocast=nullcontext,
    progress=None,
) -> Validation:
    """Loss and perplexity over all `pairs`; BLEU, chrF, chrF++ and TER of the first `decode_first` (0: all) decoded
    with `options` (greedy by default), the best of each n-best list scored (the four
    together cost well under a second on 1,000 sentences, next to decoding them).
    `autocast` is a context factory (translate.runtime.device.autocast) for the model's arithmetic."""
    model.eval()
    src, tgt = tokenizer.encode(pairs.src), tokenizer.encode(pairs.tgt)
    loss = target_nll(model, src, tgt, loss_chunk, autocast)
    n = decode_first or len(pairs)
    with autocast():
        hyps = translate_ids(model, src[:n], BOS, EOS, options, progress=progress)[:: options.n_best]
    hypotheses = tokenizer.decode([h.tokens for h in hyps])
    return Validation(loss, corpus_scores(hypotheses, pairs.tgt[:n]), src[:n], hyps, hypotheses)


def attention_images(
    model: Seq2SeqModel, tokenizer: Tokenizer, result: Validation, count: int, head: int | None, title: str
):
    """{"sentence<i>/<map>": figure}: the model's attention (source × hypothesis) for the first `count` sentences."""
    if not model.has_attention:
        return {}
    shown = min(count, len(result.hyps))
    sources, targets, figures = result.sources[:shown], [h.tokens for h in result.hyps[:shown]], {}
    for i, maps in enumerate(attention_maps(model, sources, targets, heads=[head]) if shown else []):
        src_pieces = tokenizer.id_to_piece(sources[i]) + ["</s>"]
        tgt_pieces = tokenizer.id_to_piece(targets[i]) + ["</s>"]
        for name, weights in maps.items():
            figures[f"sentence{i}/{name.split('/')[0]}"] = attention_figure(
                weights.numpy(), src_pieces, tgt_pieces, title
            )
    return figures


def write_validation(
    writer, tag: str, step: int, result: Validation, pairs: Pairs, samples: int = 0, images: dict | None = None
):
    """`tag`/loss, ppl, bleu, chrf, chrf_pp, ter as scalars; the first `samples` translations as text; attention
    images."""
    for name, value in (
        ("loss", result.loss),
        ("ppl", result.ppl),
        ("bleu", result.bleu),
        ("chrf", result.scores["chrf"]),
        ("chrf_pp", result.scores["chrf_pp"]),
        ("ter", result.scores["ter"]),
    ):
        writer.add_scalar(f"{tag}/{name}", value, step)
    if samples:
        text = "\n\n".join(
            f"**src** {pairs.src[i]}  \n**ref** {pairs.tgt[i]}  \n**hyp** {result.hypotheses[i]}"
            for i in range(min(samples, len(result.hypotheses)))
        )
        writer.add_text(f"{tag}/samples", text, step)
    for name, figure in (images or {}).items():
        writer.add_figure(f"attention/{name}" if tag == "valid" else f"{tag}/attention/{name}", figure, step)
