"""Score a trained run on a set: the evaluation behind `make eval`.

Decodes the test split (or any pair of plain-text files), detokenizes, and scores with sacreBLEU
against the raw references: BLEU, chrF, chrF++ and TER, each with its signature, loss and perplexity, and BLEU per
source-length bucket, on the set and on its long-sentence probe.  Writes into <run>/eval/:
<name>.json (with the references' SHA-256, so that runs can be checked to be scored on the same set), the
hypotheses <name>.hyp and the references <name>.ref (line i scores line i: `make significance` needs nothing
else), the probe <name>_probe.{src,ref,hyp}, the figure <name>_bleu_by_length.png; and into the run's
TensorBoard the scores, sample translations, attention images and the same figure.
"""

import hashlib
import json
import re
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from translate.config.stored import evaluation_data
from translate.data.corpus import CorpusError, Pairs, read_pair_files
from translate.data.pipeline import load_split
from translate.data.probe import long_sentence_probe
from translate.decoding.inference import load_run, translate_texts
from translate.decoding.options import DecodingOptions
from translate.evaluation.metrics import bleu_by_length, corpus_scores
from translate.evaluation.plots import bleu_by_length_figure, plt
from translate.evaluation.validation import attention_images, validate, write_validation
from translate.runtime.checkpoints import TrainState
from translate.runtime.files import atomic_write, subdirectory, write_lines, write_text


def evaluation_pairs(data, ec) -> tuple[str, Pairs]:
    """The pairs to score and their name: eval.src/eval.ref files, or a split of `data` (a DataConfig)."""
    if ec.src or ec.ref:
        if not (ec.src and ec.ref):
            raise CorpusError("give both eval.src=<source file> and eval.ref=<reference file>")
        pairs = read_pair_files(ec.src, ec.ref)
        if not len(pairs):
            raise CorpusError(f"{ec.src}: no lines to score; give files with sentences")
        return ec.name or file_stem(ec.src), pairs
    if ec.split not in ("train", "valid", "test"):
        raise CorpusError(f"unknown eval.split={ec.split!r}; choose test, valid or train")
    return ec.name or ec.split, load_split(data, ec.split)


def file_stem(path: str) -> str:
    """A name for outputs from a file's name (`newstest2014.de` -> newstest2014), as a plain file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name.split(".")[0]).lstrip(".") or "eval"


def evaluate(run_dir: str | Path, ec, data_location=None, data=None) -> dict:
    """Score a run (module docstring).  Its split is read from `data` (a DataConfig: the training command's own),
    else from the project's config for the run's corpus with `data_location` (the command's `data.*`): never
    from locations stored in the run's files (translate/config/stored.py)."""
    run_dir = Path(run_dir)
    model, tokenizer, cfg, ckpt = load_run(run_dir, ec.checkpoint, ec.device)
    step = TrainState.from_checkpoint(ckpt).step
    data = data if data is not None else (None if ec.src or ec.ref else evaluation_data(cfg.data, data_location))
    name, pairs = evaluation_pairs(data, ec)
    options = DecodingOptions.of(ec)
    with tqdm(total=len(pairs), desc="decoding", dynamic_ncols=True) as bar:
        scored = validate(model, tokenizer, pairs, cfg.trainer.loss_chunk, options=options, progress=bar)
    hypotheses = scored.hypotheses
    probe = None
    if ec.probe_k > 1:
        probe_pairs, _ = long_sentence_probe(pairs, ec.probe_k, ec.probe_per_k)
        probe_hyps = translate_texts(model, tokenizer, probe_pairs.src, options)[:: options.n_best]
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
        "references": reference_record(
            pairs.tgt, f"{name}.ref", str(Path(ec.ref).resolve()) if ec.ref else None, None if ec.ref else ec.split
        ),
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
    out = subdirectory(run_dir, "eval")
    write_lines(out / f"{name}.hyp", hypotheses)
    write_lines(out / f"{name}.ref", pairs.tgt)  # the references as scored, beside the hypotheses
    if probe:  # the probe itself, for reading and for the report's bootstrap intervals
        for suffix, lines in (("src", probe_pairs.src), ("ref", probe_pairs.tgt), ("hyp", probe_hyps)):
            write_lines(out / f"{name}_probe.{suffix}", lines)
    write_text(out / f"{name}.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    figure = length_figure(result)
    with atomic_write(out / f"{name}_bleu_by_length.png") as f:
        figure.savefig(f, format="png", dpi=110)
    images = attention_images(model, tokenizer, scored, cfg.trainer.attention_maps, None, f"{name}, step {step}")
    with SummaryWriter(str(subdirectory(run_dir, "tensorboard"))) as writer:
        write_validation(writer, f"eval/{name}", step, scored, pairs, cfg.trainer.num_samples, images)
        writer.add_figure(f"eval/{name}/bleu_by_length", figure, step)
    plt.close("all")
    return result


def reference_record(references: list[str], saved: str, path: str | None, split: str | None) -> dict:
    """What the references were: the SHA-256 of their text as saved in eval/`saved` (UTF-8, each line ended by
    a newline), their line count, and where they came from: the file given (eval.ref) or the corpus split."""
    digest = hashlib.sha256("".join(line + "\n" for line in references).encode("utf-8")).hexdigest()
    return {"file": saved, "lines": len(references), "sha256": digest, "path": path, "split": split}


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
        f"chrF++ {result['chrf_pp']:.2f}  ({result['chrf_pp_signature']})",
        f"TER {result['ter']:.2f}  ({result['ter_signature']}; an edit rate: lower is better)",
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
