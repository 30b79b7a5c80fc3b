"""Evaluate a trained run: `python -m translate.evaluate run=<run dir> [eval.src=… eval.ref=…]`.

Decodes the test split (or any pair of plain-text files), detokenizes, and
scores with sacreBLEU against the raw references: BLEU with its signature,
chrF, loss and perplexity, and BLEU per source-length bucket, on the set and on its
long-sentence probe.  Writes into <run>/eval/: <name>.json, the hypotheses <name>.hyp, the
probe <name>_probe.{src,ref,hyp}, the figure <name>_bleu_by_length.png; and into the run's
TensorBoard the scores, sample translations, attention images and the same figure.
"""

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from translate.checkpoint import CheckpointError, TrainState, find_checkpoint, inference_weights, load_checkpoint
from translate.config import register_configs, train_config
from translate.config_rules import check_config
from translate.data.corpus import CorpusError, Pairs, read_pair_files
from translate.data.prepare import load_split
from translate.data.probe import long_sentence_probe
from translate.data.tokenizer import BOS, EOS, PAD, Tokenizer
from translate.errors import one_line_errors
from translate.metrics import bleu_by_length, corpus_scores
from translate.models import build_model
from translate.plots import bleu_by_length_figure, plt
from translate.runtime import resolve_device
from translate.search import source_limit, translate_ids
from translate.validate import attention_images, validate, write_validation

log = logging.getLogger(__name__)
register_configs()


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

    With ec.n_best > 1 each sentence has n_best translations in a row, best first.  A sentence longer
    than the model can read is cut, with a warning naming it (`names[i]`, default `sentence <i + 1>`).
    """
    sources, limit = tokenizer.encode(texts), source_limit(model)
    for i, ids in enumerate(sources):
        if limit is not None and len(ids) > limit:
            name = names[i] if names else f"sentence {i + 1}"
            log.warning("%s: %d subword tokens; translating its first %d (the model's limit)", name, len(ids), limit)
    with tqdm(total=len(texts), desc="decoding", disable=not progress, dynamic_ncols=True) as bar:
        hyps = translate_ids(model, sources, BOS, EOS, progress=bar, **decoding_options(ec))
    return tokenizer.decode([h.tokens for h in hyps])


def evaluation_pairs(cfg, ec) -> tuple[str, Pairs]:
    """The pairs to score and their name: eval.src/eval.ref files, or a split of the run's corpus."""
    if ec.src or ec.ref:
        if not (ec.src and ec.ref):
            raise CorpusError("give both eval.src=<source file> and eval.ref=<reference file>")
        pairs = read_pair_files(ec.src, ec.ref)
        if not len(pairs):
            raise CorpusError(f"{ec.src}: no lines to score; give files with sentences")
        return ec.name or Path(ec.src).name.split(".")[0], pairs
    if ec.split not in ("train", "valid", "test"):
        raise CorpusError(f"unknown eval.split={ec.split!r}; choose test, valid or train")
    return ec.name or ec.split, load_split(cfg.data, ec.split)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def evaluate(run_dir: str | Path, ec) -> dict:
    run_dir = Path(run_dir)
    model, tokenizer, cfg, ckpt = load_run(run_dir, ec.checkpoint, ec.device)
    step = TrainState.from_checkpoint(ckpt).step
    name, pairs = evaluation_pairs(cfg, ec)
    with tqdm(total=len(pairs), desc="decoding", dynamic_ncols=True) as bar:
        scored = validate(model, tokenizer, pairs, cfg.trainer.loss_chunk, decoding=decoding_options(ec), progress=bar)
    hypotheses = scored.hypotheses
    probe = None
    if ec.probe_k > 1:
        probe_pairs, _ = long_sentence_probe(pairs, ec.probe_k, ec.probe_per_k)
        probe_hyps = translate_texts(model, tokenizer, probe_pairs.src, ec)[:: ec.n_best]
        probe = {
            "k_max": ec.probe_k,
            "per_k": ec.probe_per_k,
            "sentences": len(probe_pairs),
            **corpus_scores(probe_hyps, probe_pairs.tgt),
            "bleu_by_length": bleu_by_length(
                probe_pairs.src, probe_hyps, probe_pairs.tgt, list(ec.probe_length_buckets)
            ),
        }
    result = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "checkpoint": ec.checkpoint,
        "step": step,
        "name": name,
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "sentences": len(pairs),
        "decoding": {
            "search": "greedy" if ec.beam_size == 1 else f"beam{ec.beam_size}",
            "beam_size": ec.beam_size,
            "length_penalty": ec.length_penalty,
            "n_best": ec.n_best,
            "max_len_ratio": ec.max_len_ratio,
            "max_len_offset": ec.max_len_offset,
        },
        **scored.scores,
        "loss": round(scored.loss, 4),
        "ppl": round(scored.ppl, 2),
        "bleu_by_length": bleu_by_length(pairs.src, hypotheses, pairs.tgt, list(ec.length_buckets)),
        "probe": probe,
    }
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    write_lines(out / f"{name}.hyp", hypotheses)
    if probe:  # the probe itself, for reading and for the report's bootstrap intervals
        for suffix, lines in (("src", probe_pairs.src), ("ref", probe_pairs.tgt), ("hyp", probe_hyps)):
            write_lines(out / f"{name}_probe.{suffix}", lines)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    figure = length_figure(result)
    figure.savefig(out / f"{name}_bleu_by_length.png", dpi=110)
    images = attention_images(model, tokenizer, scored, cfg.trainer.attention_maps, None, f"{name}, step {step}")
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        write_validation(writer, f"eval/{name}", step, scored, pairs, cfg.trainer.num_samples, images)
        writer.add_figure(f"eval/{name}/bleu_by_length", figure, step)
    plt.close("all")
    return result


def length_figure(result: dict):
    """The run's BLEU by source length: the evaluated set and, if scored, its long-sentence probe."""
    label = f"{result['model']} step {result['step']}, {result['decoding']['search']}"
    panels = [(f"{result['name']} ({result['sentences']} sentences)", [(label, result["bleu_by_length"])])]
    if result["probe"]:
        panels.append(
            (f"long-sentence probe (k = 1..{result['probe']['k_max']})", [(label, result["probe"]["bleu_by_length"])])
        )
    return bleu_by_length_figure(panels)


def _bucket_lines(buckets: list[dict]) -> list[str]:
    bleu = lambda b: "   -" if b["bleu"] is None else f"{b['bleu']:6.2f}"  # noqa: E731
    return [f"  {b['min_words']:>3}-{b['max_words']:<4} {bleu(b)}  ({b['sentences']} sentences)" for b in buckets]


def format_result(result: dict) -> str:
    lines = [
        f"{result['name']}: {result['sentences']} sentences, {result['model']} step {result['step']}, "
        f"{result['decoding']['search']}",
        f"BLEU {result['bleu']:.2f}  ({result['bleu_signature']})",
        f"chrF {result['chrf']:.2f}  ({result['chrf_signature']})",
        f"loss {result['loss']:.3f}  perplexity {result['ppl']:.2f}  (teacher forced, per target token)",
        "BLEU by source length (words):",
        *_bucket_lines(result["bleu_by_length"]),
    ]
    if result.get("probe"):
        probe = result["probe"]
        lines.append(
            f"long-sentence probe (k = 1..{probe['k_max']} consecutive pairs joined): "
            f"BLEU {probe['bleu']:.2f}, by length:"
        )
        lines += _bucket_lines(probe["bleu_by_length"])
    return "\n".join(lines)


@hydra.main(version_base=None, config_path="../configs", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    result = evaluate(cfg.run, cfg.eval)
    print(format_result(result))
    print(f"wrote {Path(cfg.run) / 'eval' / (result['name'] + '.json')}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
