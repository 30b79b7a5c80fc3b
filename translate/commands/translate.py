"""Translate text: `translate translate run=<run dir> [eval.beam_size=5] [attention=out.png] < in > out`.

Reads raw sentences from stdin, one per line, and writes detokenized translations to
stdout, one per line and in order — always: an empty line gives an empty line, bytes that
are not UTF-8 are replaced (U+FFFD), a line longer than the model can read is cut (a line over
MAX_LINE_BYTES is cut there as it is read, the rest of it never held), and a
line that fails to translate gives an empty line, each with a warning on stderr naming the
line (exit code 3 if any line failed).  From a terminal it works interactively: a prompt on
stderr, each translation as soon as its line is entered.  Decoding follows `eval.*`
(checkpoint, beam_size, length_penalty, n_best, …); with eval.n_best > 1 an output line
holds the n best translations separated by tabs.

A line of several sentences is split into sentences by the rules of the run's source language
(translate/decoding/sentences.py), each translated as a line would be, and their translations written on
its one output line, joined by a space; with eval.n_best > 1 the k-th translation of such a line joins the
k-th best of each sentence.  `eval.split_sentences=false` translates each line whole.

`attention=<file.png>` with a single input sentence also draws the model's attention,
source pieces × target pieces (rnn_attention: its attention; transformer: the last
layer's cross-attention averaged over heads).  That line is translated whole, never split: the figure is
of what the model read.

`engine=ct2 [quantization=…]` decodes with the run's CTranslate2 export instead of the PyTorch
model (`make export` writes it; translate/decoding/ct2_export.py, ct2.py), under the same `eval.*` rules.
"""

import logging
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.data.corpus import MAX_LINE_BYTES, read_bounded_line
from translate.decoding.ct2 import load_export
from translate.decoding.inference import load_run, translate_full, translate_safely
from translate.decoding.options import DecodingOptions
from translate.runtime.errors import EXIT_SOME_LINES_FAILED, ConfigError, one_line_errors
from translate.runtime.files import read_yaml

log = logging.getLogger("translate")
register_configs()

CHUNK = 1000  # lines decoded together when stdin is a file or a pipe
CHUNK_BYTES = 4 << 20  # … or fewer, once their text reaches this size
MAX_DRAWN = 64  # pieces per axis of an attention figure: 0.32 inch each at 120 dpi, 2600 pixels, ~250 MB to draw


def decode_line(raw: bytes, number: int) -> str:
    """A line of input as text; bytes that are not UTF-8 become U+FFFD, with a warning naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning(
            "line %d: invalid UTF-8 (byte %#04x at column %d) replaced by U+FFFD", number, raw[e.start], e.start + 1
        )
        return raw.decode("utf-8", errors="replace")


def input_lines(stream, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a binary stream, read `limit` bytes at most: a longer line is cut
    there (on a UTF-8 character boundary) and the rest of it read and dropped in bounded pieces, with a warning
    naming the line."""
    number = 0
    while True:
        raw, cut = read_bounded_line(stream, limit)
        if not raw and not cut:
            return
        number += 1
        if cut:
            log.warning(
                "line %d: longer than %d bytes; translating its first %d bytes (the rest is not read)",
                number,
                limit,
                len(raw),
            )
        yield number, decode_line(raw, number)


def chunks(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, lines): CHUNK lines at a time, fewer once they hold CHUNK_BYTES of text."""
    first, chunk, size = 0, [], 0
    for number, line in lines:
        first, size = first or number, size + len(line)
        chunk.append(line)
        if len(chunk) == CHUNK or size >= CHUNK_BYTES:
            yield first, chunk
            first, chunk, size = 0, [], 0
    if chunk:
        yield first, chunk


def translate_with_attention(model, tokenizer, lines: list[str], options: DecodingOptions, path: str) -> list[str]:
    """Translate the one non-empty line of `lines`, drawing its attention into `path`."""
    texts = [line.strip() for line in lines if line.strip()]
    if len(texts) != 1:
        raise ConfigError(f"attention={path} draws one sentence; the input has {len(texts)} non-empty lines")
    (result,) = translate_full(model, tokenizer, texts, replace(options, attention=True))
    from translate.evaluation.plots import attention_figure  # matplotlib only when a figure is asked for

    record = result.attention  # what the model read: the source cut at its limit, and EOS
    name = [name for name in record["maps"] if "/head" not in name][-1]  # the last layer's mean over heads, or α
    weights, src_pieces, tgt_pieces = np.array(record["maps"][name]), record["source"], record["target"]
    rows, cols = min(len(tgt_pieces), MAX_DRAWN), min(len(src_pieces), MAX_DRAWN)
    if (rows, cols) != (len(tgt_pieces), len(src_pieces)):
        log.warning(
            "attention=%s: %d target × %d source pieces; drawing the first %d × %d",
            path,
            len(tgt_pieces),
            len(src_pieces),
            rows,
            cols,
        )
    attention_figure(weights[:rows, :cols], src_pieces[:cols], tgt_pieces[:rows]).savefig(path, dpi=120)
    translation = "\t".join(text for text, _ in result.n_best)
    return [translation if line.strip() else "" for line in lines]


def export_source_language(run_dir: str) -> str | None:
    """engine=ct2 loads no checkpoint: the source language is the run's config.yaml's data.src_lang (read as
    data); None, with a warning, when the run directory has none to give (its lines are then translated whole)."""
    config = Path(run_dir) / "config.yaml"
    data = read_yaml(config).get("data") if config.is_file() else None
    language = data.get("src_lang") if isinstance(data, dict) else None
    if not isinstance(language, str) or not language:
        log.warning("%s: no data.src_lang to split lines into sentences by; each line is translated whole", config)
        return None
    return language


def run(cfg: DictConfig) -> int:
    """Translate stdin to stdout; returns how many lines failed."""
    ec, stdin, failed = cfg.eval, sys.stdin.buffer, 0
    options = DecodingOptions.of(ec)
    if cfg.engine == "ct2":
        if cfg.attention:
            raise ConfigError(f"attention={cfg.attention}: drawn from the PyTorch model; leave out engine=ct2")
        model = load_export(cfg.run, cfg.quantization, ec)
        tokenizer = model.tokenizer
        language = export_source_language(cfg.run) if ec.split_sentences else None
    else:
        model, tokenizer, run_cfg, _ = load_run(cfg.run, ec.checkpoint, ec.device)
        language = run_cfg.data.src_lang if ec.split_sentences else None
    if cfg.attention:
        if not model.has_attention:
            name = run_cfg.model.name
            raise ConfigError(
                f"attention={cfg.attention}: model {name} has no attention to draw; "
                "use an rnn_attention or transformer run"
            )
        lines, others, any_text = [], 0, False  # non-empty lines after the first are counted, not kept
        for _, line in input_lines(stdin):
            if line.strip() and any_text:
                others += 1
                continue
            any_text = any_text or bool(line.strip())
            lines.append(line)
        if others:
            raise ConfigError(
                f"attention={cfg.attention} draws one sentence; the input has {others + 1} non-empty lines"
            )
        for line in translate_with_attention(model, tokenizer, lines, options, cfg.attention):
            print(line)
        print(f"wrote {cfg.attention}", file=sys.stderr)
    elif sys.stdin.isatty():
        print("translating one sentence per line; Ctrl-D ends", file=sys.stderr)
        lines = input_lines(stdin)
        while print("> ", end="", file=sys.stderr, flush=True) or (item := next(lines, None)):
            number, line = item
            outputs, bad = translate_safely(model, tokenizer, [line], options, number, language)
            print(outputs[0], flush=True)
            failed += bad
    else:
        for first, lines in chunks(input_lines(stdin)):
            outputs, bad = translate_safely(model, tokenizer, lines, options, first, language)
            sys.stdout.writelines(out + "\n" for out in outputs)
            sys.stdout.flush()
            failed += bad
    return failed


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="translate")
@one_line_errors
def main(cfg: DictConfig) -> None:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    check_config(cfg)
    failed = run(cfg)
    if failed:
        print(f"error: {failed} line(s) not translated (their output lines are empty)", file=sys.stderr)
        sys.exit(EXIT_SOME_LINES_FAILED)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
