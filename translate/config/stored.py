"""Settings and weights from someone else's file, read as data: a checkpoint's config never runs anything.

    cfg = stored_config(ckpt["config"], path)                 the run's TrainConfig, checked, nothing resolved
    model = model_for_weights(cfg.model, vocab, weights, path)  built only once the weights' shapes match it
    data = evaluation_data(cfg.data, command_data)            where a run's test split is read: never the file's say

A checkpoint or a run's config.yaml may come from anyone (a model zoo, a colleague's runs/ folder), so:
a `${…}` in a stored value is refused, not resolved (an interpolation could read any environment variable
and send it wherever a URL says); the values go through the same rules as a command's config; the model is
built on the meta device and compared with the tensors before any memory is taken (a 1 KB file cannot ask
for a 100 GB model); and the data a run names by location (data.dir, data.url, data.hub) is not followed:
evaluation takes locations from the command and the project's own configs/data/<name>.yaml.
"""

import logging
import math
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from translate.config.rules import SAFE_NAME, broken_relations, broken_rules
from translate.config.schema import CONFIG_DIR, DataConfig, saved_train_config
from translate.data.tokenizer import PAD
from translate.models import build_model
from translate.runtime.checkpoints import CheckpointError
from translate.runtime.files import read_yaml

log = logging.getLogger(__name__)

MAX_DEPTH = 6  # TrainConfig nests three deep; deeper is not a config of this project
MAX_VALUES = 5_000  # values in a stored config, counted as met (a TrainConfig has about 150)
KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")  # a setting's name, or a file's in data.sha256
MAX_TEXT = 1 << 16  # characters of its keys and strings together, each occurrence counted
SCALARS = (str, int, float, bool, type(None))
# where a corpus is: taken from the command and the project, never from a stored config
LOCATION_KEYS = ("dir", "url", "download_dir", "hub", "hub_config", "hub_revision", "sha256")
LOCATION_KEYS += ("max_download_mb", "download_minutes", "store_dir")
PROJECT_DATA = CONFIG_DIR / "data"
REFUSED = "refused: a checkpoint's settings are data, checked before use (docs/security.md)"


def unsafe_values(saved) -> list[str]:
    """Dotted keys of `saved` (a stored config) that are not plain data: interpolations, `???`, other types,
    numbers that are not finite, keys that are not plain names, nesting past MAX_DEPTH; or one entry saying it
    holds more than MAX_VALUES values or MAX_TEXT characters.

    The walk counts every value it meets, a list or mapping by its length before its items are looked at, so
    structure shared many times over (a pickle's memo, YAML aliases: a few hundred bytes that expand to
    millions of values) is refused after at most MAX_VALUES steps, never expanded."""
    found, values, text = [], 0, 0
    stack = [("", saved, 0)]
    while stack:
        key, value, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            values += len(value)
            if values > MAX_VALUES:
                return [f"{key or '(top)'} (more than {MAX_VALUES:,} values in all: a config of this project has "
                        "a few hundred; shared or repeated structure is not expanded)"]  # fmt: skip
            if depth >= MAX_DEPTH:
                found.append(f"{key} (nested deeper than {MAX_DEPTH})")
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            children = []
            for k, v in items:
                if not isinstance(value, dict):
                    children.append((f"{key}[{k}]", v))
                elif isinstance(k, str) and KEY.fullmatch(k):
                    text += len(k)
                    children.append((f"{key}.{k}" if key else k, v))
                else:
                    found.append(f"{key}.{str(k)[:40]!r} (a key that is not a plain name)")
            stack.extend((child, v, depth + 1) for child, v in reversed(children))
        elif not isinstance(value, SCALARS):
            found.append(f"{key} (a {type(value).__name__})")
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(f"{key}={value} (not a finite number)")
        elif isinstance(value, str):
            text += len(value)
            if "${" in value or value == "???":
                found.append(f"{key}={value[:60]!r} (an interpolation or a missing value, which is never resolved)")
        if text > MAX_TEXT:
            return [f"{key} (more than {MAX_TEXT:,} characters of text in all; a config of this project has a few "
                    "thousand)"]  # fmt: skip
    return found


def printable(text: str, limit: int = 300) -> str:
    """`text` on one line, each character that is not printable escaped, cut at `limit` characters."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])


def stored_config(saved, origin: str | Path) -> DictConfig:
    """A stored training config (a checkpoint's `config` dict) on today's schema, checked by the command rules.

    Refused with a CheckpointError naming the file and the first bad key: interpolations, keys the schema does
    not know, wrong types, values outside their rules, names that are not plain file names."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{origin}: its stored config is a {type(saved).__name__}, not a mapping; {REFUSED}")
    bad = unsafe_values(saved)
    if bad:
        raise CheckpointError(f"{origin}: stored config key {printable(bad[0])}; {REFUSED}")
    try:
        cfg = saved_train_config(OmegaConf.create(saved))
        broken = broken_rules(cfg) or broken_relations(cfg)
    except Exception as e:  # omegaconf's ValidationError, ConfigKeyError, … for a key or type the schema refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{origin}: stored config does not fit the schema ({printable(first)}); {REFUSED}"
        ) from None
    if broken:
        raise CheckpointError(f"{origin}: stored config has {printable(broken[0])}; {REFUSED}")
    return cfg


def run_config(run_dir: Path) -> DictConfig:
    """The training config in a run's config.yaml, read and checked as stored_config does."""
    path = Path(run_dir) / "config.yaml"
    return stored_config(read_yaml(path), path)


def model_for_weights(model_cfg, vocab_size, weights: dict, origin: str | Path) -> torch.nn.Module:
    """The model `model_cfg` describes, with `weights` loaded, built only after its parameter names and shapes
    were checked against `weights` on the meta device (no memory), so a config that claims more than its
    tensors hold is refused before anything is allocated."""
    check_weights(model_cfg, vocab_size, weights, origin)
    model = build_model(model_cfg, vocab_size, PAD)
    model.load_state_dict(weights)
    return model


def check_weights(model_cfg, vocab_size, weights: dict, origin: str | Path) -> None:
    """Refuse `weights` unless they are exactly the tensors of the model `model_cfg` describes, names and shapes,
    compared with that model built on the meta device (no memory taken)."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 4:
        raise CheckpointError(f"{origin}: vocab_size={vocab_size!r} is not a vocabulary size; {REFUSED}")
    layers = sum(int(getattr(model_cfg, k)) for k in ("enc_layers", "dec_layers"))
    if layers > len(weights):  # each layer has tensors of its own: building more is work for nothing
        raise CheckpointError(
            f"{origin}: its config asks for {layers} layers but it holds {len(weights)} tensors; {REFUSED}"
        )
    try:
        with torch.device("meta"):
            expected = {name: t.shape for name, t in build_model(model_cfg, vocab_size, PAD).state_dict().items()}
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{origin}: its model settings do not build ({e}); {REFUSED}") from None
    found = {name: t.shape for name, t in weights.items() if isinstance(t, torch.Tensor)}
    missing, extra = expected.keys() - found.keys(), found.keys() - expected.keys()
    wrong = [name for name in expected.keys() & found.keys() if expected[name] != found[name]]
    if missing or extra or wrong:
        name = sorted(wrong or missing or extra)[0]
        what = (
            f"{name} has shape {tuple(found[name])}, its config says {tuple(expected[name])}"
            if wrong
            else f"{name} is {'missing' if missing else 'not part of the model its config describes'}"
        )
        raise CheckpointError(f"{origin}: weights and config disagree ({what}); {REFUSED}")


def project_data_config(name: str) -> DictConfig:
    """The project's own configs/data/<name>.yaml on the schema (its URL, checksums and hub revision), or a
    config with no location at all for a name the project does not ship."""
    base = OmegaConf.structured(DataConfig)
    path = PROJECT_DATA / f"{name}.yaml"
    if SAFE_NAME.fullmatch(name) and path.is_file():
        return OmegaConf.merge(base, OmegaConf.load(path))
    return OmegaConf.merge(base, {"name": name, "url": None, "sha256": {}})


def evaluation_data(stored: DictConfig, command) -> DictConfig:
    """The data config evaluation reads a run's split with: what the corpus is (languages, split names, format,
    limits) from the run, where it is from the project's configs/data/<name>.yaml and the command's `data.*`."""
    cfg = project_data_config(stored.name)
    what = {k: v for k, v in OmegaConf.to_container(stored).items() if k not in LOCATION_KEYS}
    cfg = OmegaConf.merge(cfg, what)
    given = {k: v for k, v in OmegaConf.to_container(command).items() if v is not None} if command else {}
    cfg = OmegaConf.merge(cfg, given)
    ignored = [f"data.{k}={stored[k]!r}" for k in ("dir", "url", "hub") if stored[k] and stored[k] != cfg[k]]
    if ignored and not given:
        log.warning(
            "the run names %s: locations in a run's files are not followed; evaluating from %s "
            "(give data.dir=… or eval.src=… eval.ref=… to choose)",
            ", ".join(ignored),
            cfg.dir or cfg.hub or cfg.url or f"the project's data={cfg.name}",
        )
    return cfg
