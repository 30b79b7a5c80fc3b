"""Average checkpoints: `translate average run=<run dir> [last=5] [out=averaged]`.

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

from translate.config.stored import check_weights, stored_config
from translate.runtime.checkpoints import (
    CheckpointError,
    inference_weights,
    load_checkpoint,
    numbered_checkpoints,
    save_checkpoint,
)
from translate.runtime.errors import ConfigError
from translate.runtime.files import refuse_link

log = logging.getLogger(__name__)


def average_checkpoints(paths: list[Path]) -> dict:
    """The last checkpoint of `paths` with its model weights replaced by their mean over all of `paths`.

    Floating-point tensors are summed in float64 and cast back; other tensors come from the last.  Each file is
    read only if it is a plain file (a link planted among a run's checkpoints is refused), and its weights only
    once every tensor has the name and shape the first checkpoint's config describes (checked on the meta
    device) and the first checkpoint's dtype: nothing is added that could broadcast or mix in another model.
    """
    total: dict[str, torch.Tensor] = {}
    first: dict[str, torch.dtype] = {}
    for path in paths:
        refuse_link(path, "checkpoint")
        ckpt = load_checkpoint(path)
        weights = inference_weights(ckpt)
        if not first:
            cfg = stored_config(ckpt.get("config"), path)
            vocab_size, first = ckpt.get("vocab_size"), {name: t.dtype for name, t in weights.items()}
        check_weights(cfg.model, vocab_size, weights, path)
        other = next((name for name, t in weights.items() if t.dtype != first[name]), None)
        if other is not None:
            raise CheckpointError(
                f"{path}: {other} is {weights[other].dtype}, in {paths[0]} {first[other]}; average one run's"
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
