"""The inference API: load a trained run and translate texts with it.

    model, tokenizer, cfg, ckpt = load_run(run_dir, checkpoint="best", device="auto")
    translations = translate_texts(model, tokenizer, texts, ec)      # ec: an EvalConfig's decoding settings
    outputs, failed = translate_safely(model, tokenizer, lines, ec, first=1)   # one output per line, always
    hyps, src_pieces, tgt_pieces = attention_of(model, tokenizer, text, ec)  # one sentence, with its attention

`model` is our PyTorch model or a CTranslate2 export (`translate.decoding.ct2.CT2Model`); both decode
under the same rules: the source cut at the model's limit (with a warning naming it), greedy or beam
search with the GNMT length penalty, `n_best` translations per text.  Evaluation, `make translate`,
the export and the scripts all go through here.
"""

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from translate.config.schema import train_config
from translate.data.tokenizer import BOS, EOS, PAD, Tokenizer
from translate.decoding.search import Hypothesis, source_limit, translate_ids
from translate.models import build_model
from translate.runtime.checkpoints import CheckpointError, find_checkpoint, inference_weights, load_checkpoint
from translate.runtime.device import resolve_device

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto"):
    """(model in eval mode, tokenizer, run config, checkpoint dict) of a training run directory."""
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    cfg = train_config(ckpt["config"])
    if not (run_dir / "tokenizer.model").is_file():
        raise CheckpointError(
            f"{run_dir / 'tokenizer.model'}: missing; a run directory holds the tokenizer its model was trained "
            "with (copy it from the training run)"
        )
    tokenizer = Tokenizer(run_dir / "tokenizer.model")
    model = build_model(cfg.model, ckpt["vocab_size"], PAD)
    model.load_state_dict(inference_weights(ckpt))
    model.to(resolve_device(device)).eval()
    return model, tokenizer, cfg, ckpt


def decoding_options(ec) -> dict:
    """The keyword arguments of `translate_ids` an EvalConfig sets."""
    keys = ("batch_tokens", "max_len_ratio", "max_len_offset", "beam_size", "length_penalty", "n_best")
    return {key: getattr(ec, key) for key in keys}


def translate_texts(
    model, tokenizer: Tokenizer, texts: list[str], ec, progress: bool = True, names: list[str] | None = None
) -> list[str]:
    """Raw source sentences in, detokenized translations out (input order kept).

    `model`: ours (search.translate_ids) or a CT2Model (its own translate_ids).  With ec.n_best > 1 each
    sentence has n_best translations in a row, best first.  A sentence longer
    than the model can read is cut, with a warning naming it (`names[i]`, default `sentence <i + 1>`).
    """
    sources, limit = tokenizer.encode(texts), source_limit(model)
    for i, ids in enumerate(sources):
        if limit is not None and len(ids) > limit:
            name = names[i] if names else f"sentence {i + 1}"
            log.warning("%s: %d subword tokens; translating its first %d (the model's limit)", name, len(ids), limit)
    options = decoding_options(ec)
    if isinstance(model, torch.nn.Module):
        with tqdm(total=len(texts), desc="decoding", disable=not progress, dynamic_ncols=True) as bar:
            hyps = translate_ids(model, sources, BOS, EOS, progress=bar, **options)
    else:  # an engine with its own search over the same rules (CT2Model)
        hyps = model.translate_ids(sources, **options)
    return tokenizer.decode([h.tokens for h in hyps])


def translate_lines(model, tokenizer, lines: list[str], ec, first: int = 1) -> list[str]:
    """One output line per input line (`first` is the number of the first): blank stays blank, n-best lists
    are joined by tabs.  `model` is a PyTorch model or a CT2Model (engine=ct2)."""
    texts = [line.strip() for line in lines]
    todo = [i for i, text in enumerate(texts) if text]
    names = [f"line {first + i}" for i in todo]
    sources = [texts[i] for i in todo]
    translations = translate_texts(model, tokenizer, sources, ec, progress=False, names=names) if todo else []
    out, n = [""] * len(texts), ec.n_best
    for k, i in enumerate(todo):
        out[i] = "\t".join(t.replace("\n", " ").replace("\r", " ") for t in translations[k * n : (k + 1) * n])
    return out


def translate_safely(model, tokenizer, lines: list[str], ec, first: int) -> tuple[list[str], int]:
    """translate_lines, but a line that fails leaves its output line empty instead of losing the others:
    (output lines, how many failed)."""
    try:
        return translate_lines(model, tokenizer, lines, ec, first), 0
    except (RuntimeError, ValueError, IndexError, MemoryError) as e:
        if len(lines) == 1:
            log.warning("line %d: not translated (%s: %s); its output line is empty", first, type(e).__name__, e)
            return [""], 1
    results = [translate_safely(model, tokenizer, [line], ec, first + i) for i, line in enumerate(lines)]
    return [out for outs, _ in results for out in outs], sum(failed for _, failed in results)


def attention_of(model, tokenizer: Tokenizer, text: str, ec) -> tuple[list[Hypothesis], list[str], list[str]]:
    """One sentence's hypotheses (the best first, each with its attention (T, S)) and the source and target
    pieces of the best, EOS included, for drawing: rows are target pieces, columns source pieces."""
    hyps: list[Hypothesis] = translate_ids(
        model, tokenizer.encode([text]), BOS, EOS, need_attention=True, **decoding_options(ec)
    )
    best, eos = hyps[0], tokenizer.id_to_piece([EOS])
    src_pieces = tokenizer.pieces([text])[0] + eos
    tgt_pieces = (tokenizer.id_to_piece(best.tokens) + eos)[: len(best.attention)]  # no EOS row if cut at the limit
    return hyps, src_pieces, tgt_pieces
