"""The inference API: load a trained run and translate texts with it.

    model, tokenizer, cfg, ckpt = load_run(run_dir, checkpoint="best", device="auto")
    translations = translate_texts(model, tokenizer, texts, ec)      # ec: an EvalConfig's decoding settings
    outputs, failed = translate_safely(model, tokenizer, lines, ec, first=1)   # one output per line, always
    outputs, failed = translate_safely(model, tokenizer, lines, ec, first=1, language="de")  # … sentence by sentence
    hyps, src_pieces, tgt_pieces = attention_of(model, tokenizer, text, ec)  # one sentence, with its attention
    results = translate_full(model, tokenizer, texts, ec, attention=True)  # Translation: text, score, n-best, maps

`model` is our PyTorch model or a CTranslate2 export (`translate.decoding.ct2.CT2Model`); both decode
under the same rules: the source cut at the model's limit (with a warning naming it), greedy or beam
search with the GNMT length penalty, `n_best` translations per text.  Evaluation, `make translate`,
the export and the scripts all go through here.

Paragraphs: `translate_lines`, `translate_safely` and `translate_full` given the source `language` split each
text into sentences (sentences.py), translate the sentences of all texts in one call (each cut and batched as
any text) and join each text's translations with one space; without `language` (evaluation always: it
scores the test set's lines as they are) a text is translated whole.  With n_best > 1 a text's k-th
translation is the k-th best of each of its sentences joined, scored by the sum of their log-probabilities:
a rank-wise join, not a search over every combination.  `translate_full(…, attention=True)` translates each
text whole: its attention map is of one model input.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from translate.config.stored import model_for_weights, stored_config
from translate.data.batching import collate
from translate.data.tokenizer import BOS, EOS, Tokenizer
from translate.decoding.search import Hypothesis, source_limit, translate_ids
from translate.decoding.sentences import split_into_sentences
from translate.runtime.checkpoints import (
    CheckpointError,
    TrainState,
    find_checkpoint,
    inference_weights,
    load_checkpoint,
)
from translate.runtime.device import resolve_device
from translate.runtime.files import refuse_link

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto"):
    """(model in eval mode, tokenizer, run config, checkpoint dict) of a training run directory.

    The run's files are data (translate/config/stored.py): its stored config is checked, never resolved, and the
    model is built only once the weights' shapes match it; a link where a checkpoint or the tokenizer should be
    is refused."""
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(path, mmap=True)
    cfg = stored_config(ckpt.get("config"), path)
    TrainState.from_checkpoint(ckpt, path)  # its counters checked now: a run is refused at load, not served broken
    tokenizer = run_tokenizer(run_dir)
    if ckpt.get("vocab_size") != len(tokenizer):
        raise CheckpointError(
            f"{path}: its vocabulary has {ckpt.get('vocab_size')!r} pieces, {run_dir / 'tokenizer.model'} "
            f"{len(tokenizer)}; a run directory holds the tokenizer its model was trained with"
        )
    model = model_for_weights(cfg.model, ckpt["vocab_size"], inference_weights(ckpt), path)
    model.to(resolve_device(device)).eval()
    return model, tokenizer, cfg, ckpt


MAX_TOKENIZER_BYTES = 64 << 20  # SentencePiece models of 32 k pieces take about 1 MB


def run_tokenizer(run_dir: Path) -> Tokenizer:
    """The SentencePiece model a run was trained with, read only if it is a plain file of a plausible size."""
    path = run_dir / "tokenizer.model"
    refuse_link(path, "tokenizer")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; a run directory holds the tokenizer its model was trained with "
            "(copy it from the training run)"
        )
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes, not a tokenizer of this project; refused")
    try:
        return Tokenizer(path)
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"{path}: not a SentencePiece model ({type(e).__name__}); copy the run's own") from None


def decoding_options(ec) -> dict:
    """The keyword arguments of `translate_ids` an EvalConfig sets."""
    keys = ("batch_tokens", "max_len_ratio", "max_len_offset", "beam_size", "length_penalty", "n_best")
    return {key: getattr(ec, key) for key in keys}


CHARS_PER_TOKEN = 16  # SentencePiece's longest piece (max_piece_length): N·16 characters give N tokens or more
MAX_SOURCE_CHARS = 1 << 16  # the cut for a model without a source limit (none of ours has none)


@dataclass
class Translation:
    """One text's translation: the best, its n-best list, and (asked for) where the model looked."""

    text: str
    score: float  # log-probability of the best translation, EOS included
    n_best: list[tuple[str, float]]  # (translation, log-probability), best first; the best is the first
    attention: dict | None = None  # attention_record(): source and target pieces, maps by layer and head


def encode_sources(
    model, tokenizer: Tokenizer, texts: list[str], names: list[str] | None = None, warn: bool = True
) -> list[list[int]]:
    """Token ids of each text, cut to what the model can read, with a warning naming each cut text (`names[i]`,
    default `sentence <i + 1>`; none with warn=False): first to `CHARS_PER_TOKEN` characters per token of the
    model's limit (so the tokenizer never sees megabytes), then to the limit in tokens (search cuts there)."""
    limit = source_limit(model)
    chars = MAX_SOURCE_CHARS if limit is None else limit * CHARS_PER_TOKEN
    long = [len(text) > chars for text in texts]
    sources = tokenizer.encode([text[:chars] if cut else text for text, cut in zip(texts, long)])
    for i, ids in enumerate(sources):
        if warn and (long[i] or (limit is not None and len(ids) > limit)):
            name = names[i] if names else f"sentence {i + 1}"
            count = f"{len(texts[i])} characters, at least {len(ids)}" if long[i] else str(len(ids))
            if limit is None:
                log.warning("%s: %s subword tokens; translating its first %d characters", name, count, chars)
            else:
                log.warning("%s: %s subword tokens; translating its first %d (the model's limit)", name, count, limit)
    return sources


def decode_sources(model, sources: list[list[int]], ec, progress: bool = False, need_attention=False):
    """n_best Hypotheses per source, flat (those of source i at [i·n, (i+1)·n)): ours or a CT2Model's search."""
    options = decoding_options(ec)
    if not isinstance(model, torch.nn.Module):  # an engine with its own search over the same rules (CT2Model)
        return model.translate_ids(sources, **options)
    with tqdm(total=len(sources), desc="decoding", disable=not progress, dynamic_ncols=True) as bar:
        return translate_ids(model, sources, BOS, EOS, progress=bar, need_attention=need_attention, **options)


def translate_texts(
    model, tokenizer: Tokenizer, texts: list[str], ec, progress: bool = True, names: list[str] | None = None
) -> list[str]:
    """Raw source sentences in, detokenized translations out (input order kept).

    `model`: ours (search.translate_ids) or a CT2Model (its own translate_ids).  With ec.n_best > 1 each
    sentence has n_best translations in a row, best first.  Long texts are cut (encode_sources).
    """
    hyps = decode_sources(model, encode_sources(model, tokenizer, texts, names), ec, progress)
    return tokenizer.decode([h.tokens for h in hyps])


def sentences_of(texts: list[str], language: str | None) -> list[list[str]]:
    """Each text's sentences by the rules of `language`; a text of one sentence (or none), or every text when
    `language` is None, stays whole, as it is."""
    if language is None:
        return [[text] for text in texts]
    return [sentences if len(sentences := split_into_sentences(text, language)) > 1 else [text] for text in texts]


def translate_full(
    model, tokenizer: Tokenizer, texts: list[str], ec, attention: bool = False, language: str | None = None
) -> list[Translation]:
    """Each text's Translation: text, score, n-best list and, with `attention`, where the model looked
    (None for a model without attention or a CTranslate2 export).  With `language` (and no `attention`) a
    text of several sentences is translated sentence by sentence (module docstring)."""
    parts = sentences_of(texts, None if attention else language)
    if any(len(sentences) > 1 for sentences in parts):
        done = translate_full(model, tokenizer, [s for sentences in parts for s in sentences], ec)
        results, start = [], 0
        for sentences in parts:
            results.append(joined(done[start : start + len(sentences)]))
            start += len(sentences)
        return results
    sources, n = encode_sources(model, tokenizer, texts), ec.n_best
    hyps = decode_sources(model, sources, ec)
    decoded = tokenizer.decode([h.tokens for h in hyps])
    results = [
        Translation(decoded[i * n], hyps[i * n].score, [(decoded[k], hyps[k].score) for k in range(i * n, i * n + n)])
        for i in range(len(texts))
    ]
    if attention and isinstance(model, torch.nn.Module) and model.has_attention and texts:
        best = [hyps[i * n] for i in range(len(texts))]
        for result, record in zip(results, attention_records(model, tokenizer, sources, best)):
            result.attention = record
    return results


def joined(parts: list[Translation]) -> Translation:
    """One text's Translation from those of its sentences, in order: the k-th of its n-best list joins the k-th
    of each sentence's, its score the sum of theirs."""
    if len(parts) == 1:
        return parts[0]
    n_best = [
        (" ".join(p.n_best[k][0] for p in parts), sum(p.n_best[k][1] for p in parts))
        for k in range(len(parts[0].n_best))
    ]
    return Translation(n_best[0][0], n_best[0][1], n_best)


@torch.no_grad()
def attention_records(model, tokenizer: Tokenizer, sources: list[list[int]], best: list[Hypothesis]) -> list[dict]:
    """Where the model looked while writing each best translation, teacher-forced on it in one batch: per text
    {"source": pieces, "target": pieces, "maps": {"<layer>": T×S mean over heads, "<layer>/head<h>": …}}, rows
    the target pieces (EOS included), columns the source pieces (EOS included); weights rounded to 4 places."""
    limit, eos = source_limit(model), tokenizer.id_to_piece([EOS])
    sources = [ids[:limit] for ids in sources]
    targets = [h.tokens[: (model.max_positions or len(h.tokens) + 1) - 1] for h in best]
    batch = collate(sources, targets, list(range(len(sources)))).to(next(model.parameters()).device)
    heads = [None] + (list(range(model.attention_heads)) if model.attention_heads > 1 else [])
    maps = {}
    for head in heads:
        for name, weights in model.attention_maps(batch.src, batch.src_mask, batch.tgt_in, head).items():
            maps[name if head is None else f"{name}/head{head + 1}"] = weights.float().cpu()
    records = []
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        rows, cols = len(tgt) + 1, len(src) + 1
        records.append(
            {
                "source": tokenizer.id_to_piece(src) + eos,
                "target": tokenizer.id_to_piece(tgt) + eos,
                "maps": {name: w[i, :rows, :cols].double().round(decimals=4).tolist() for name, w in maps.items()},
            }
        )
    return records


def translate_lines(model, tokenizer, lines: list[str], ec, first: int = 1, language: str | None = None) -> list[str]:
    """One output line per input line (`first` is the number of the first): blank stays blank, n-best lists
    are joined by tabs.  `model` is a PyTorch model or a CT2Model (engine=ct2).  With `language` a line of
    several sentences is translated sentence by sentence, their translations joined by a space (module
    docstring); the sentences of all lines are decoded in one call."""
    texts = [line.strip() for line in lines]
    todo = [i for i, text in enumerate(texts) if text]
    parts = sentences_of([texts[i] for i in todo], language)
    names = [
        f"line {first + i}" + (f", sentence {j + 1}" if len(sentences) > 1 else "")
        for i, sentences in zip(todo, parts)
        for j in range(len(sentences))
    ]
    sources = [sentence for sentences in parts for sentence in sentences]
    translations = translate_texts(model, tokenizer, sources, ec, progress=False, names=names) if todo else []
    out, n, start = [""] * len(texts), ec.n_best, 0
    for i, sentences in zip(todo, parts):
        own = translations[start * n : (start + len(sentences)) * n]  # sentence j's k-th best at j·n + k
        best = [" ".join(own[j * n + k] for j in range(len(sentences))) for k in range(n)]
        out[i] = "\t".join(t.replace("\n", " ").replace("\r", " ") for t in best)
        start += len(sentences)
    return out


def translate_safely(
    model, tokenizer, lines: list[str], ec, first: int, language: str | None = None
) -> tuple[list[str], int]:
    """translate_lines, but a line that fails leaves its output line empty instead of losing the others:
    (output lines, how many failed)."""
    try:
        return translate_lines(model, tokenizer, lines, ec, first, language), 0
    except (RuntimeError, ValueError, IndexError, MemoryError) as e:
        if len(lines) == 1:
            log.warning("line %d: not translated (%s: %s); its output line is empty", first, type(e).__name__, e)
            return [""], 1
    results = [translate_safely(model, tokenizer, [line], ec, first + i, language) for i, line in enumerate(lines)]
    return [out for outs, _ in results for out in outs], sum(failed for _, failed in results)


def attention_of(model, tokenizer: Tokenizer, text: str, ec) -> tuple[list[Hypothesis], list[str], list[str]]:
    """One sentence's hypotheses (the best first, each with its attention (T, S)) and the source and target
    pieces of the best, EOS included, for drawing: rows are target pieces, columns source pieces."""
    hyps: list[Hypothesis] = decode_sources(model, encode_sources(model, tokenizer, [text]), ec, need_attention=True)
    best, eos = hyps[0], tokenizer.id_to_piece([EOS])
    src_pieces = tokenizer.pieces([text])[0] + eos
    tgt_pieces = (tokenizer.id_to_piece(best.tokens) + eos)[: len(best.attention)]  # no EOS row if cut at the limit
    return hyps, src_pieces, tgt_pieces
