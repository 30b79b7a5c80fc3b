"""Translate text: `python -m translate.translate run=<run dir> [eval.beam_size=5] [attention=out.png] < in > out`.

Reads raw sentences from stdin, one per line, and writes detokenized translations to
stdout, one per line and in order — always: an empty line gives an empty line, bytes that
are not UTF-8 are replaced (U+FFFD), a line longer than the model can read is cut, and a
line that fails to translate gives an empty line, each with a warning on stderr naming the
line (exit code 3 if any line failed).  From a terminal it works interactively: a prompt on
stderr, each translation as soon as its line is entered.  Decoding follows `eval.*`
(checkpoint, beam_size, length_penalty, n_best, …); with eval.n_best > 1 an output line
holds the n best translations separated by tabs.

`attention=<file.png>` with a single input sentence also draws the model's attention,
source pieces × target pieces (rnn_attention: its attention; transformer: the last
layer's cross-attention averaged over heads).

`engine=ct2 [quantization=…]` decodes with the run's CTranslate2 export instead of the PyTorch
model (`make export` writes it; translate/decoding/ct2_export.py, ct2.py), under the same `eval.*` rules.
"""

import logging
import sys
from itertools import islice

import hydra
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import register_configs
from translate.decoding.ct2 import load_export
from translate.decoding.inference import attention_of, load_run, translate_safely
from translate.runtime.errors import EXIT_SOME_LINES_FAILED, ConfigError, one_line_errors

log = logging.getLogger("translate")
register_configs()

CHUNK = 1000  # lines decoded together when stdin is a file or a pipe


def decode_line(raw: bytes, number: int) -> str:
    """A line of input as text; bytes that are not UTF-8 become U+FFFD, with a warning naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning(
            "line %d: invalid UTF-8 (byte %#04x at column %d) replaced by U+FFFD", number, raw[e.start], e.start + 1
        )
        return raw.decode("utf-8", errors="replace")


def translate_with_attention(model, tokenizer, lines: list[str], ec, path: str) -> list[str]:
    """Translate the one non-empty line of `lines`, drawing its attention into `path`."""
    texts = [line.strip() for line in lines if line.strip()]
    if len(texts) != 1:
        raise ConfigError(f"attention={path} draws one sentence; the input has {len(texts)} non-empty lines")
    hyps, src_pieces, tgt_pieces = attention_of(model, tokenizer, texts[0], ec)
    from translate.evaluation.plots import attention_figure  # matplotlib only when a figure is asked for

    attention_figure(hyps[0].attention.numpy(), src_pieces, tgt_pieces).savefig(path, dpi=120)
    translation = "\t".join(tokenizer.decode([h.tokens for h in hyps]))
    return [translation if line.strip() else "" for line in lines]


def run(cfg: DictConfig) -> int:
    """Translate stdin to stdout; returns how many lines failed."""
    ec, stdin, failed = cfg.eval, sys.stdin.buffer, 0
    if cfg.engine == "ct2":
        if cfg.attention:
            raise ConfigError(f"attention={cfg.attention}: drawn from the PyTorch model; leave out engine=ct2")
        model = load_export(cfg.run, cfg.quantization, ec)
        tokenizer = model.tokenizer
    else:
        model, tokenizer, run_cfg, _ = load_run(cfg.run, ec.checkpoint, ec.device)
    if cfg.attention:
        if not model.has_attention:
            name = run_cfg.model.name
            raise ConfigError(
                f"attention={cfg.attention}: model {name} has no attention to draw; "
                "use an rnn_attention or transformer run"
            )
        lines = [decode_line(raw, i) for i, raw in enumerate(stdin.read().splitlines(), start=1)]
        for line in translate_with_attention(model, tokenizer, lines, ec, cfg.attention):
            print(line)
        print(f"wrote {cfg.attention}", file=sys.stderr)
    elif sys.stdin.isatty():
        print("translating one sentence per line; Ctrl-D ends", file=sys.stderr)
        number = 0
        while print("> ", end="", file=sys.stderr, flush=True) or (raw := stdin.readline()):
            number += 1
            outputs, bad = translate_safely(model, tokenizer, [decode_line(raw, number)], ec, number)
            print(outputs[0], flush=True)
            failed += bad
    else:
        number = 1
        while raws := list(islice(stdin, CHUNK)):
            lines = [decode_line(raw, number + i) for i, raw in enumerate(raws)]
            outputs, bad = translate_safely(model, tokenizer, lines, ec, number)
            sys.stdout.writelines(out + "\n" for out in outputs)
            sys.stdout.flush()
            number, failed = number + len(raws), failed + bad
    return failed


@hydra.main(version_base=None, config_path="../configs", config_name="translate")
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
