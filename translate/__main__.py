"""The project's commands: `translate <command> [settings]`, or `python -m translate <command> [settings]`.

`pip install -e .` (make install) puts `translate` on the PATH; each command is a module of translate/commands/
(`python -m translate.commands.<command>` runs it too).  Settings are Hydra overrides, or the command's own
options for report, seeds and significance; `translate <command> --help` lists them.
"""

import importlib
import sys

from translate.runtime.allocator import TCMALLOC_COMMANDS, preload_tcmalloc

COMMANDS = {
    "prepare": "tokenizer and token store of a corpus, ahead of training",
    "train": "train a model (make compare: `train +experiment=bottleneck`, a multirun)",
    "eval": "BLEU, chrF, chrF++, TER and BLEU by length of a trained run",
    "translate": "translate stdin to stdout with a trained run",
    "export": "a Transformer run as a CTranslate2 model",
    "average": "mean weights of a run's newest numbered checkpoints",
    "report": "compare finished runs: tables and the BLEU-by-length figure",
    "seeds": "the spread of comparisons over seeds",
    "significance": "paired tests of evaluated runs against the first",
    "serve": "HTTP API and a page comparing translations and attention",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "usage: translate <command> [settings]\n\ncommands:\n" + "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if len(sys.argv) > 1 else sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"error: no command {command!r}; one of {', '.join(COMMANDS)} (translate --help)", file=sys.stderr)
        sys.exit(2)
    if command in TCMALLOC_COMMANDS:
        preload_tcmalloc()  # before torch loads; returns at once where it is loaded already
    from translate.config.schema import CONFIG_DIR

    if not CONFIG_DIR.is_dir():
        print(f"error: no {CONFIG_DIR}: the commands run from a checkout; pip install -e <checkout>", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"translate {command}", *sys.argv[2:]]
    importlib.import_module(f"translate.commands.{command}").main()


if __name__ == "__main__":
    main()
