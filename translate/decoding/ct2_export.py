"""Serve a trained Transformer with CTranslate2: `translate export run=<run dir> [quantization=int8]`.

Export writes <run>/ct2/ (quantization=none) or <run>/ct2-<quantization>/, a directory CTranslate2 loads
as it is: model.bin and config.json (a `TransformerSpec` filled from our weights), shared_vocabulary.json
(our SentencePiece pieces in id order), a copy of the run's tokenizer.model and export.json (which
checkpoint, which step, which quantization).  It is built in a temporary directory beside the target
and renamed into place, so a reader sees the old export or the new one.  Then

    make translate RUN=<run dir> engine=ct2 [quantization=int8] < in > out

decodes with it (`CT2Model`), under the same rules as our own search (translate/decoding/search.py): source
cut at the model's position limit, output limit ratio × source tokens (EOS included) + offset, greedy
for beam_size 1, else beam search ranked by the GNMT length penalty.  Greedy output is our greedy
output, token for token, up to float rounding in near-ties (tests/test_export.py measures it).

How our Transformer (translate/models/transformer.py) maps onto CTranslate2's specification:

    embedding × √d_model + PE                 scale_embeddings, position_encodings.encodings = our `pe`
                                              buffer (interleaved sin/cos from position 0; CTranslate2's
                                              built-in table is concatenated and starts at 1, so ours is set)
    Residual(LayerNorm) around each sublayer  the sublayer spec's layer_norm, applied before (pre_norm) or
                                              after the residual sum, as ours; ε = 1e-5 as nn.LayerNorm
    self-attention q, k, v projections        linear[0], fused [W_q; W_k; W_v]; linear[1] = W_O
    cross-attention                           linear[0] = W_q, linear[1] = [W_k; W_v], linear[2] = W_O
    FeedForward Linear-ReLU-Linear            ffn.linear_0, Activation.RELU, ffn.linear_1
    final LayerNorm (pre-LN only)             encoder.layer_norm, decoder.layer_norm
    generator (no bias; tied to the embedding) decoder.projection
    source ids + EOS; decoder starts at BOS   config add_source_eos, decoder_start_token = piece of BOS

RNN models have no CTranslate2 specification and are refused.
"""

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from translate.data.tokenizer import BOS, EOS, UNK
from translate.decoding.inference import load_run
from translate.runtime.checkpoints import TrainState, find_checkpoint
from translate.runtime.errors import UserError
from translate.runtime.files import UMASK, fsync_directory, refuse_link

log = logging.getLogger(__name__)


METADATA = "export.json"


TOKENIZER = "tokenizer.model"


BUILDING = "-building-"  # .<name>-building-<pid>-<random>: an export being written (or killed while it was)


REPLACED = "-replaced-"  # .<name>-replaced-<pid>: the export it replaces, deleted right after the swap


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise UserError(
            "ctranslate2: not installed; make export and engine=ct2 need it: pip install -e '.[ct2]'"
        ) from None
    return ctranslate2


def export_dir(run_dir: str | Path, quantization: str = "none") -> Path:
    """Where the export of `run_dir` with `quantization` lives: <run>/ct2 or <run>/ct2-<quantization>."""
    return Path(run_dir) / ("ct2" if quantization == "none" else f"ct2-{quantization}")


def export_command(run_dir, quantization: str, checkpoint: str = "best") -> str:
    extra = "" if quantization == "none" else f" quantization={quantization}"
    extra += "" if checkpoint == "best" else f" checkpoint={checkpoint}"
    return f"make export RUN={run_dir}{extra}"


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


def _linear(spec, *layers: torch.nn.Linear) -> None:
    """Fill a LinearSpec with one nn.Linear, or with several stacked along the output dimension (fused)."""
    spec.weight = np.concatenate([_array(layer.weight) for layer in layers])
    if layers[0].bias is not None:
        spec.bias = np.concatenate([_array(layer.bias) for layer in layers])


def _layer_norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _feed_forward(spec, ff, residual) -> None:
    _layer_norm(spec.layer_norm, residual.norm)
    first, activation, _dropout, second = ff.net
    if not isinstance(activation, torch.nn.ReLU):
        raise UserError(f"feed-forward activation {type(activation).__name__}: the export knows ReLU only")
    _linear(spec.linear_0, first)
    _linear(spec.linear_1, second)


def _self_attention(spec, attention, residual) -> None:
    _layer_norm(spec.layer_norm, residual.norm)
    _linear(spec.linear[0], attention.q_proj, attention.k_proj, attention.v_proj)
    _linear(spec.linear[1], attention.out_proj)


def _cross_attention(spec, attention, residual) -> None:
    _layer_norm(spec.layer_norm, residual.norm)
    _linear(spec.linear[0], attention.q_proj)
    _linear(spec.linear[1], attention.k_proj, attention.v_proj)
    _linear(spec.linear[2], attention.out_proj)


def transformer_spec(model, pre_norm: bool, vocabulary: list[str]):
    """A filled `ctranslate2.specs.TransformerSpec` of our `Transformer` (translate/models/transformer.py)."""
    import_ctranslate2()
    from ctranslate2.specs import common_spec
    from ctranslate2.specs import transformer_spec as ts

    enc_layers, dec_layers = model.encoder_layers, model.decoder_layers
    spec = ts.TransformerSpec.from_config(
        (len(enc_layers), len(dec_layers)),
        enc_layers[0].self_attn.heads,
        pre_norm=pre_norm,
        activation=common_spec.Activation.RELU,
    )
    positions = _array(model.positions.pe)
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = _array(model.embedding.weight)
    decoder.embeddings.weight = _array(model.tgt_embedding.weight)
    encoder.scale_embeddings = decoder.scale_embeddings = True  # × √d_model
    encoder.position_encodings.encodings = decoder.position_encodings.encodings = positions
    if pre_norm:
        _layer_norm(encoder.layer_norm, model.encoder_norm)
        _layer_norm(decoder.layer_norm, model.decoder_norm)
    for layer_spec, layer in zip(encoder.layer, enc_layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.res1)
        _feed_forward(layer_spec.ffn, layer.ff, layer.res2)
    for layer_spec, layer in zip(decoder.layer, dec_layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.res1)
        _cross_attention(layer_spec.attention, layer.cross_attn, layer.res2)
        _feed_forward(layer_spec.ffn, layer.ff, layer.res3)
    _linear(decoder.projection, model.generator)

    config = spec.config
    config.layer_norm_epsilon = float(model.encoder_layers[0].res1.norm.eps)
    config.unk_token, config.bos_token, config.eos_token = (vocabulary[i] for i in (UNK, BOS, EOS))
    config.decoder_start_token = vocabulary[BOS]
    config.add_source_eos = True  # our encoder reads the source ids followed by EOS
    spec.register_source_vocabulary(vocabulary)
    spec.register_target_vocabulary(vocabulary)
    return spec


def _remove_abandoned_builds(run_dir: Path) -> None:
    """Delete what killed exports left: their temporary directories (named with their process id, now gone)."""
    for marker in (BUILDING, REPLACED):
        for path in run_dir.glob(f".*{marker}*"):
            try:
                os.kill(int(path.name.split(marker, 1)[1].split("-", 1)[0]), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except (ValueError, PermissionError):  # not ours, or another user's live process
                continue


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_directory(directory)


def _put_in_place(built: Path, target: Path) -> None:
    """Rename the finished directory `built` to `target`, replacing an older export of the same name."""
    if target.exists():
        old = target.with_name(f".{target.name}{REPLACED}{os.getpid()}")
        target.rename(old)
        built.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        built.rename(target)
    fsync_directory(target.parent)


@contextmanager
def export_building(run_dir: Path, target: Path):
    """A temporary directory in `run_dir` to write an export into: put in place as `target` (replacing an older
    one) when the block ends, removed if it fails; what killed exports left is removed first."""
    refuse_link(target, "directory")
    _remove_abandoned_builds(run_dir)
    built = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{target.name}{BUILDING}{os.getpid()}-"))
    try:
        os.chmod(built, 0o777 & ~UMASK)
        yield built
        for path in built.iterdir():  # as any file the project writes (some writers make theirs private)
            os.chmod(path, 0o666 & ~UMASK)
        _fsync_tree(built)
        _put_in_place(built, target)
    finally:
        shutil.rmtree(built, ignore_errors=True)


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def export_run(run_dir: str | Path, checkpoint: str = "best", quantization: str = "none") -> Path:
    """Write the CTranslate2 export of a Transformer run (module docstring); returns its directory."""
    ctranslate2 = import_ctranslate2()
    run_dir = Path(run_dir)
    source = find_checkpoint(run_dir, checkpoint)
    modified = source.stat().st_mtime_ns  # before reading: a checkpoint replaced meanwhile shows as changed later
    model, tokenizer, cfg, ckpt = load_run(run_dir, checkpoint, "cpu")
    name = cfg.model.name
    if name != "transformer":
        raise UserError(
            f"model {name} cannot be exported: CTranslate2 has no RNN specification; export a transformer run"
        )
    if (positions := cfg.model.positions) != "sinusoidal":
        raise UserError(f"model.positions={positions} cannot be exported: the export supports sinusoidal ones only")
    vocabulary = tokenizer.id_to_piece(list(range(len(tokenizer))))
    if len(vocabulary) != ckpt["vocab_size"]:
        raise UserError(
            f"{run_dir / TOKENIZER}: {len(vocabulary)} pieces but the model has {ckpt['vocab_size']} embeddings; "
            "the run directory needs the tokenizer its model was trained with"
        )
    spec = transformer_spec(model, bool(cfg.model.pre_norm), vocabulary)
    spec.validate()
    spec.optimize(quantization=None if quantization == "none" else quantization)

    target = export_dir(run_dir, quantization)
    with export_building(run_dir, target) as built:
        spec.save(str(built))
        shutil.copyfile(tokenizer.model_file, built / TOKENIZER)
        metadata = {
            "run": str(run_dir),
            "checkpoint": checkpoint,
            "checkpoint_file": source.name,
            "checkpoint_mtime_ns": modified,
            "step": TrainState.from_checkpoint(ckpt).step,
            "model": name,
            "quantization": quantization,
            "max_positions": model.max_positions,
            "ctranslate2": ctranslate2.__version__,
        }
        (built / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return target
