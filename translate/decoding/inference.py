"""The inference API: load a trained run and translate texts with it.

    model, tokenizer, cfg, ckpt = load_run(run_dir, checkpoint="best", device="auto")
    options = DecodingOptions.of(cfg.eval)                            # options.py: how to decode, one value
    results = translate_full(model, tokenizer, texts, options, language="de")  # Translation: text, score, n-best
    results = translate_full(model, tokenizer, texts, replace(options, attention=True))  # … with where it looked
    outputs = translate_lines(model, tokenizer, lines, options, first=1)  # translate_full's answers as lines
    outputs, failed = translate_safely(model, tokenizer, lines, options, first=1)  # one output per line, always
    translations = translate_texts(model, tokenizer, texts, options)  # each text whole (evaluation)

`model` is our PyTorch model or a CTranslate2 export (`translate.decoding.ct2.CT2Model`); both decode
under the same rules: the source cut at the model's limit (with a warning naming it), greedy or beam
search with the GNMT length penalty, `n_best` translations per text.  Evaluation, `make translate`, the
server, the export and the scripts all go through here.

Paragraphs: given the source `language` and options.split_sentences, `translate_full` splits each text into
sentences (sentences.py), translates the sentences of all texts in one call (each cut and batched as any text)
and joins each text's translations with one space; without `language` (evaluation always: it scores the test
set's lines as they are) a text is translated whole.  With n_best > 1 a text's k-th translation is the k-th
best of each of its sentences joined, scored by the sum of their log-probabilities: a rank-wise join, not a
search over every combination.  With options.attention each text is translated whole: its attention map
(attention_maps.py) is of one model input.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from translate.config.stored import model_for_weights, stored_config
from translate.data.tokenizer import BOS, EOS, Tokenizer
from translate.decoding.attention_maps import attention_maps
from translate.decoding.options import DecodingOptions
from translate.decoding.search import source_limit, translate_ids
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


def decode_sources(model, sources: list[list[int]], options: DecodingOptions, progress: bool = False):
    """n_best Hypotheses per source, flat (those of source i at [i·n, (i+1)·n)): ours or a CT2Model's search."""
    if not isinstance(model, torch.nn.Module):  # an engine with its own search over the same rules (CT2Model)
        return model.translate_ids(sources, options)
    with tqdm(total=len(sources), desc="decoding", disable=not progress, dynamic_ncols=True) as bar:
        return translate_ids(model, sources, BOS, EOS, options, progress=bar)


def translate_texts(
    model, tokenizer: Tokenizer, texts: list[str], options: DecodingOptions, progress: bool = True, names=None
) -> list[str]:
    """Raw source sentences in, detokenized translations out (input order kept), each text whole.

    `model`: ours (search.translate_ids) or a CT2Model (its own translate_ids).  With n_best > 1 each
    sentence has n_best translations in a row, best first.  Long texts are cut (encode_sources).
    """
    hyps = decode_sources(model, encode_sources(model, tokenizer, texts, names), options, progress)
    return tokenizer.decode([h.tokens for h in hyps])


def sentences_of(texts: list[str], language: str | None) -> list[list[str]]:
    """Each text's sentences by the rules of `language`; a text of one sentence (or none), or every text when
    `language` is None, stays whole, as it is."""
    if language is None:
        return [[text] for text in texts]
    return [sentences if len(sentences := split_into_sentences(text, language)) > 1 else [text] for text in texts]


def translate_full(
    model,
    tokenizer: Tokenizer,
    texts: list[str],
    options: DecodingOptions,
    language: str | None = None,
    names: list[str] | None = None,
) -> list[Translation]:
    """Each text's Translation: text, score, n-best list and, with options.attention, where the model looked
    (None for a model without attention or a CTranslate2 export).  With `language` and options.split_sentences
    (and no attention) a text of several sentences is translated sentence by sentence (module docstring); the
    sentences of all texts are decoded in one call.  `names[i]` names text i in the warning about a cut."""
    split = language if options.split_sentences and not options.attention else None
    parts = sentences_of(texts, split)
    sentences = [sentence for own in parts for sentence in own]
    labels = None
    if names is not None:
        labels = [
            f"{name}, sentence {j + 1}" if len(own) > 1 else name
            for name, own in zip(names, parts)
            for j in range(len(own))
        ]
    sources, n = encode_sources(model, tokenizer, sentences, labels), options.n_best
    hyps = decode_sources(model, sources, options)
    decoded = tokenizer.decode([h.tokens for h in hyps])
    done = [
        Translation(decoded[i * n], hyps[i * n].score, [(decoded[k], hyps[k].score) for k in range(i * n, i * n + n)])
        for i in range(len(sentences))
    ]
    if options.attention and isinstance(model, torch.nn.Module) and model.has_attention and sentences:
        best = [hyps[i * n].tokens for i in range(len(sentences))]
        for result, record in zip(done, attention_records(model, tokenizer, sources, best)):
            result.attention = record
    results, start = [], 0
    for own in parts:
        results.append(joined(done[start : start + len(own)]))
        start += len(own)
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


def attention_records(model, tokenizer: Tokenizer, sources: list[list[int]], targets: list[list[int]]) -> list[dict]:
    """Where the model looked while writing each target (attention_maps.py), as plain data: per text
    {"source": pieces, "target": pieces, "maps": {"<layer>": T×S mean over heads, "<layer>/head<h>": …}}, rows
    the target pieces (EOS included), columns the source pieces (EOS included); weights rounded to 4 places."""
    eos, records = tokenizer.id_to_piece([EOS]), []
    for src, tgt, maps in zip(sources, targets, attention_maps(model, sources, targets)):
        rows, cols = next(iter(maps.values())).shape  # what the model read: cut at its limits, EOS included
        records.append(
            {
                "source": tokenizer.id_to_piece(src[: cols - 1]) + eos,
                "target": tokenizer.id_to_piece(tgt[: rows - 1]) + eos,
                "maps": {name: w.double().round(decimals=4).tolist() for name, w in maps.items()},
            }
        )
    return records


def translate_lines(
    model, tokenizer, lines: list[str], options: DecodingOptions, first: int = 1, language: str | None = None
) -> list[str]:
    """translate_full's answers as lines: one output line per input line (`first` is the number of the first),
    blank stays blank, an n-best list joined by tabs.  `model` is a PyTorch model or a CT2Model (engine=ct2)."""
    texts = [line.strip() for line in lines]
    todo = [i for i, text in enumerate(texts) if text]
    names = [f"line {first + i}" for i in todo]
    done = translate_full(model, tokenizer, [texts[i] for i in todo], options, language, names) if todo else []
    out = [""] * len(texts)
    for i, result in zip(todo, done):
        out[i] = "\t".join(text.replace("\n", " ").replace("\r", " ") for text, _ in result.n_best)
    return out


def translate_safely(
    model, tokenizer, lines: list[str], options: DecodingOptions, first: int, language: str | None = None
) -> tuple[list[str], int]:
    """translate_lines, but a line that fails leaves its output line empty instead of losing the others:
    (output lines, how many failed)."""
    try:
        return translate_lines(model, tokenizer, lines, options, first, language), 0
    except (RuntimeError, ValueError, IndexError, MemoryError) as e:
        if len(lines) == 1:
            log.warning("line %d: not translated (%s: %s); its output line is empty", first, type(e).__name__, e)
            return [""], 1
    results = [translate_safely(model, tokenizer, [line], options, first + i, language) for i, line in enumerate(lines)]
    return [out for outs, _ in results for out in outs], sum(failed for _, failed in results)
