"""Average checkpoints: `python -m translate.average run=<run dir> [last=5] [out=averaged]`.

The model weights of the newest `last` numbered checkpoints (step_<N>.pt, kept by training
when trainer.keep_last > 0) are averaged, often worth a little BLEU over any single one
(Vaswani et al. 2017 average the last 5 or 20).  Writes <run>/<out>.pt with the layout of
last.pt and best.pt (everything but the weights comes from the newest), atomically, so
`make eval RUN=… eval.checkpoint=averaged` and `make translate RUN=… eval.checkpoint=averaged`
use it.
"""

import logging
from pathlib import Path

import torch

from translate.runtime.checkpoints import (
    CheckpointError,
    inference_weights,
    load_checkpoint,
    numbered_checkpoints,
    save_checkpoint,
)
from translate.runtime.errors import ConfigError

log = logging.getLogger(__name__)


def average_checkpoints(paths: list[Path]) -> dict:
    """The last checkpoint of `paths` with its model weights replaced by their mean over all of `paths`.

    Floating-point tensors are summed in float64 and cast back; other tensors come from the last.
    """
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        ckpt = load_checkpoint(path)
        weights = inference_weights(ckpt)
        if total and weights.keys() != total.keys():
            raise CheckpointError(
                f"{path}: its parameters differ from those of {paths[0]}; average checkpoints of one run"
            )
        for name, tensor in weights.items():
            if tensor.is_floating_point():
                total[name] = total[name] + tensor.double() if name in total else tensor.double()
    ckpt["model"] = {
        name: (total[name] / len(paths)).to(t.dtype) if name in total else t for name, t in weights.items()
    }
    ckpt.pop("ema", None)  # the mean (of the moving averages, where the run kept them) is the weights now
    ckpt["averaged_steps"] = [int(p.stem[len("step_") :]) for p in paths]
    return ckpt


def average_run(run_dir: str | Path, last: int, out: str = "averaged") -> tuple[Path, list[int]]:
    """Average the newest `last` numbered checkpoints of a run into <run>/<out>.pt: (its path, the steps averaged)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found; pass RUN=<a directory written by make train>")
    if last < 1:
        raise ConfigError(f"last={last}: average at least one checkpoint")
    if out in ("last", "best") or out.startswith("step_"):
        raise ConfigError(
            f"out={out}: that name belongs to training's own checkpoints; choose another, e.g. out=averaged"
        )
    paths = numbered_checkpoints(run_dir)[-last:]
    if not paths:
        raise CheckpointError(
            f"{run_dir}: no step_<N>.pt checkpoints; train with trainer.keep_last={last} to keep them"
        )
    if len(paths) < last:
        log.warning(
            "only %d numbered checkpoints in %s, averaging those (train with trainer.keep_last=%d)",
            len(paths),
            run_dir,
            last,
        )
    path, averaged = run_dir / f"{out}.pt", average_checkpoints(paths)
    save_checkpoint(averaged, path)
    return path, averaged["averaged_steps"]
