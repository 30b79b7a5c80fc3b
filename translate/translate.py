"""Translate text: `python -m translate.translate run=<run dir> [eval.beam_size=5] [attention=out.png] < in > out`.

Reads raw sentences from stdin, one per line, and writes detokenized translations to
stdout, one per line and in order; an empty line gives an empty line.  From a terminal
it works interactively: a prompt on stderr, each translation as soon as its line is
entered.  Decoding follows `eval.*` (checkpoint, beam_size, length_penalty, n_best, …);
with eval.n_best > 1 an output line holds the n best translations separated by tabs.

`attention=<file.png>` with a single input sentence also draws the model's attention,
source pieces × target pieces (rnn_attention: its attention; transformer: the last
layer's cross-attention averaged over heads).
"""

import sys
from itertools import islice

import hydra
import torch
from omegaconf import DictConfig

from translate.config import register_configs
from translate.data.corpus import CorpusError
from translate.data.tokenizer import BOS, EOS
from translate.evaluate import decoding_options, load_run, translate_texts
from translate.plots import attention_figure
from translate.search import Hypothesis, translate_ids

register_configs()

CHUNK = 1000  # lines decoded together when stdin is a file or a pipe


def translate_lines(model, tokenizer, lines: list[str], ec) -> list[str]:
    """One output line per input line: blank stays blank, n-best lists are joined by tabs."""
    texts = [line.strip() for line in lines]
    todo = [i for i, text in enumerate(texts) if text]
    translations = translate_texts(model, tokenizer, [texts[i] for i in todo], ec, progress=False) if todo else []
    out, n = [""] * len(texts), ec.n_best
    for k, i in enumerate(todo):
        out[i] = "\t".join(translations[k * n : (k + 1) * n])
    return out


def translate_with_attention(model, tokenizer, lines: list[str], ec, path: str) -> list[str]:
    """Translate the one non-empty line of `lines`, drawing its attention into `path`."""
    texts = [line.strip() for line in lines if line.strip()]
    if len(texts) != 1:
        raise ValueError(f"attention={path} draws one sentence; the input has {len(texts)} non-empty lines")
    hyps: list[Hypothesis] = translate_ids(
        model, tokenizer.encode(texts), BOS, EOS, need_attention=True, **decoding_options(ec)
    )
    best, eos = hyps[0], tokenizer.id_to_piece([EOS])
    src_pieces = tokenizer.pieces(texts)[0] + eos
    tgt_pieces = (tokenizer.id_to_piece(best.tokens) + eos)[
        : len(best.attention)
    ]  # no EOS row if cut at the length limit
    attention_figure(best.attention.numpy(), src_pieces, tgt_pieces).savefig(path, dpi=120)
    translation = "\t".join(tokenizer.decode([h.tokens for h in hyps]))
    return [translation if line.strip() else "" for line in lines]


def run(cfg: DictConfig) -> None:
    ec = cfg.eval
    model, tokenizer, run_cfg, _ = load_run(cfg.run, ec.checkpoint, ec.device)
    if cfg.attention:
        if not model.has_attention:
            name = run_cfg.model.name
            raise ValueError(
                f"attention={cfg.attention}: model {name} has no attention to draw; "
                "use an rnn_attention or transformer run"
            )
        for line in translate_with_attention(model, tokenizer, sys.stdin.read().splitlines(), ec, cfg.attention):
            print(line)
        print(f"wrote {cfg.attention}", file=sys.stderr)
    elif sys.stdin.isatty():
        print("translating one sentence per line; Ctrl-D ends", file=sys.stderr)
        while True:
            print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            print(translate_lines(model, tokenizer, [line], ec)[0], flush=True)
    else:
        while lines := list(islice(sys.stdin, CHUNK)):
            sys.stdout.writelines(out + "\n" for out in translate_lines(model, tokenizer, lines, ec))
            sys.stdout.flush()


@hydra.main(version_base=None, config_path="../configs", config_name="translate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (CorpusError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
