"""A run's model card: the README.md of its `transformers` export, in the Hub's format (a YAML header with
`model-index`, then prose), from the run's own records (eval/test.json, train_summary.json, config.yaml)."""

from pathlib import Path

import yaml

from translate.evaluation.records import read_evaluation, read_summary


def model_card(run_dir: Path, cfg, step: int, architecture: str) -> str:
    """The export's README.md in the Hub's format: a YAML header (languages, datasets, metrics, `model-index` with
    BLEU, chrF++ and TER and their sacreBLEU signatures, from the run's eval/test.json where it was evaluated),
    then how to load it, its scores by source length, its training and its limits."""
    data, tested = cfg.data, run_dir / "eval" / "test.json"
    scores = read_evaluation(tested, ("bleu", "chrf_pp", "ter")) if tested.is_file() else None
    summary = read_summary(run_dir / "train_summary.json") if (run_dir / "train_summary.json").is_file() else {}
    header = {
        "language": [data.src_lang, data.tgt_lang],
        "license": "other",  # the data's and the user's to choose: set it before uploading
        "library_name": "transformers",
        "pipeline_tag": "translation",
        "tags": ["translation", architecture],
        "datasets": [data.name],
        "metrics": ["bleu", "chrf", "ter"],
    }
    if scores is not None:
        metrics = [
            {"type": kind, "name": name, "value": scores[key], "args": scores.get(f"{key}_signature", "")}
            for kind, name, key in (("bleu", "BLEU", "bleu"), ("chrf", "chrF++", "chrf_pp"), ("ter", "TER", "ter"))
        ]
        task = {"type": "translation", "name": f"Translation {data.src_lang}-{data.tgt_lang}"}
        dataset = {"type": data.name, "name": f"{data.name} {data.test_split}", "split": data.test_split}
        results = [{"task": task, "dataset": dataset, "metrics": metrics}]
        header["model-index"] = [{"name": run_dir.name, "results": results}]
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(), "---", ""]
    lines += [
        f"# {data.src_lang}→{data.tgt_lang} Transformer ({architecture}), step {step}",
        "",
        f"Trained by the translate toolkit on `{data.name}` ({data.src_lang}→{data.tgt_lang}), exported by",
        "`make export format=hf`. Load it with transformers alone:",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        'tokenizer = AutoTokenizer.from_pretrained("<this directory>")',
        'model = AutoModelForSeq2SeqLM.from_pretrained("<this directory>")',
        'ids = model.generate(**tokenizer(["…"], return_tensors="pt"))',
        "print(tokenizer.batch_decode(ids, skip_special_tokens=True))",
        "```",
        "",
        "## Evaluation",
        "",
    ]
    if scores is None:
        lines += [f"Not evaluated: `make eval RUN={run_dir}`, then export again.", ""]
    else:
        lines += [
            f"`{data.test_split}`, {scores.get('sentences', '?')} sentences, decoded by the project "
            f"({scores.get('decoding', {}).get('search', 'greedy')}): BLEU {scores['bleu']:.2f}, chrF++ "
            f"{scores['chrf_pp']:.2f}, TER {scores['ter']:.2f}; BLEU `{scores.get('bleu_signature', '')}`.",
            "",
            "| source words | sentences | BLEU |",
            "|---|---:|---:|",
            *(
                f"| {b['min_words']}–{b['max_words']} | {b['sentences']} | {b['bleu']:.2f} |"
                for b in scores["bleu_by_length"]
            ),
            "",
        ]
    lines += ["## Training", ""]
    if summary:
        lines += [
            f"{summary.get('steps', '?')} updates, {summary.get('train_minutes', '?')} minutes on "
            f"{summary.get('device', '?')} ({summary.get('threads', '?')} threads, {summary.get('ranks', 1)} rank(s)), "
            f"{summary.get('parameters', 0):,} parameters, precision {summary.get('precision', '?')}.",
            "",
        ]
    lines += ["The training config:", "", "```yaml", (run_dir / "config.yaml").read_text(encoding="utf-8").strip()]
    lines += ["```", "", "## Limits", ""]
    lines += [
        "Sources longer than 1,023 subword tokens are cut there, as the project's own decoding does (the sinusoidal "
        "table holds 1,024 positions); its long-input behaviour is measured by `make eval`'s long-sentence probe.",
        "",
    ]
    return "\n".join(lines)
