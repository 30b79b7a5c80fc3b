"""translate/decoding/hf_export.py: our Transformers as stock `transformers` models (Pegasus for pre-norm, Marian
for post-norm), computing what ours compute."""

import pytest
import torch
from conftest import BOS, EOS, copy_model, copy_sentences, optional_package

from translate.config.schema import ModelConfig
from translate.data.batching import collate
from translate.decoding.options import DecodingOptions
from translate.decoding.search import translate_ids
from translate.models import build_model
from translate.runtime.errors import UserError


@pytest.fixture(scope="module")
def transformers():
    return optional_package("transformers")


def tiny(pre_norm: bool, tied: bool):
    torch.manual_seed(0)
    sizes = dict(d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2, dropout=0.1)
    config = ModelConfig(name="transformer", pre_norm=pre_norm, tie_embeddings=tied, **sizes)
    model = build_model(config, 40).eval()
    with torch.no_grad():  # layer norms away from 1 and 0, so that a wrongly ordered one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_()
    return model, config


@pytest.mark.parametrize(("pre_norm", "tied"), [(True, True), (False, True), (False, False)])
def test_teacher_forced_logits_are_ours(transformers, pre_norm, tied):
    from translate.decoding.hf_export import hf_model

    model, config = tiny(pre_norm, tied)
    theirs = hf_model(model, config)
    assert type(theirs).__name__ == ("PegasusForConditionalGeneration" if pre_norm else "MarianMTModel")
    sources, targets = copy_sentences(6, seed=1), copy_sentences(6, seed=2)
    batch = collate(sources, targets, list(range(6)))
    with torch.no_grad():
        ours = model(batch.src, batch.src_mask, batch.tgt_in)
        logits = theirs(
            input_ids=batch.src, attention_mask=batch.src_mask.long(), decoder_input_ids=batch.tgt_in
        ).logits
    real = batch.tgt_in != 0
    torch.testing.assert_close(logits[real], ours[real], atol=1e-4, rtol=1e-4)


def test_greedy_generation_is_our_greedy_search(transformers):
    from translate.decoding.hf_export import hf_model

    model = copy_model("transformer")  # trained to copy: outputs end with EOS
    config = ModelConfig(name="transformer", d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2)
    theirs = hf_model(model, config)
    sources = copy_sentences(12, seed=7)
    ours = translate_ids(model, sources, BOS, EOS, DecodingOptions(max_len_ratio=1.0, max_len_offset=3))
    ended = 0
    for source, hyp in zip(sources, ours):
        limit = len(source) + 1 + 3  # max_len_ratio 1 × (source + EOS) + 3
        out = theirs.generate(torch.tensor([source + [EOS]]), num_beams=1, do_sample=False, max_new_tokens=limit)
        out = out[0].tolist()
        assert out[0] == BOS  # the decoder starts where ours does
        if len(hyp.tokens) < limit:  # ours ended with EOS: theirs too, at the same place
            assert out[1:] == hyp.tokens + [EOS]
            ended += 1
        else:
            assert out[1:] == hyp.tokens
    assert ended >= 6


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"name": "rnn_attention"}, "model rnn_attention: format=hf exports Transformers"),
        ({"positions": "rotary"}, "model.positions=rotary: format=hf needs sinusoidal positions"),
        ({"pre_norm": True, "tie_embeddings": False}, "model.pre_norm=true with model.tie_embeddings=false"),
    ],
)
def test_what_has_no_stock_class_is_refused_in_one_line(changes, named):
    from translate.decoding.hf_export import check_exportable

    with pytest.raises(UserError, match="^" + named.replace("(", r"\(")) as refused:
        check_exportable(ModelConfig(**{"name": "transformer", **changes}))
    assert "\n" not in str(refused.value)


LOAD = """
import json, sys, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
directory, lines = sys.argv[1], [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8")]
tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
ids = [tokenizer(line).input_ids for line in lines]
greedy = []
for line_ids in ids[:200]:
    out = model.generate(torch.tensor([line_ids]), num_beams=1, do_sample=False, max_new_tokens=2 * len(line_ids) + 10)
    greedy.append(tokenizer.decode(out[0], skip_special_tokens=True))
print(json.dumps({"class": type(model).__name__, "ids": ids, "greedy": greedy}))
"""


@pytest.mark.slow
def test_make_export_format_hf_loads_in_stock_transformers_and_translates_as_ours(transformers, multi30k_dir, tmp_path):
    """`translate export format=hf` of a trained run, loaded by a fresh interpreter through AutoTokenizer and
    AutoModelForSeq2SeqLM alone: the same ids for every test source line, and greedy output equal to `translate
    translate` on 200 of them."""
    import gzip
    import json
    import subprocess
    import sys

    import yaml
    from conftest import SMALL_DATA, SMALL_MODELS, compose_train
    from omegaconf import OmegaConf

    from translate.config.schema import EvalConfig
    from translate.data.tokenizer import Tokenizer
    from translate.evaluation.evaluator import evaluate
    from translate.training.run import train

    run, cache = tmp_path / "run", f"data.tokenizer.cache_dir={tmp_path / 'tokenizers'}"
    steps = ["trainer.max_steps=60", "trainer.valid_every=60", "trainer.batch_tokens=1500", "trainer.lr=5e-3"]
    train(compose_train([*SMALL_DATA, *SMALL_MODELS["transformer"], *steps, "trainer.warmup_steps=20", cache]), run)
    scores = evaluate(run, OmegaConf.structured(EvalConfig(probe_k=0)))  # what the model card reports
    command = [sys.executable, "-m", "translate", "export", f"run={run}", "format=hf"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"wrote {run / 'hf'}: a transformers model and tokenizer")
    assert {p.name for p in (run / "hf").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    card = (run / "hf" / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---\n")[1])  # the Hub's YAML header
    (result,) = header["model-index"][0]["results"]
    bleu = next(m for m in result["metrics"] if m["type"] == "bleu")
    assert header["language"] == ["de", "en"] and bleu["value"] == scores["bleu"]
    assert bleu["args"] == scores["bleu_signature"] and "| 0–9 |" in card and "step 60" in card
    with gzip.open(multi30k_dir / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    (tmp_path / "test.de").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD, str(run / "hf"), str(tmp_path / "test.de")], capture_output=True, text=True,
        timeout=600, cwd=tmp_path,  # not the project: nothing of ours on the path but the installed package
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    theirs = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert theirs["class"] == "PegasusForConditionalGeneration"  # the default Transformer is pre-norm
    ours = Tokenizer(run / "tokenizer.model").encode(lines)
    assert theirs["ids"] == [ids + [3] for ids in ours]  # every line: our pieces, then </s>
    translated = subprocess.run(
        [sys.executable, "-m", "translate", "translate", f"run={run}", "eval.split_sentences=false"],
        input="".join(line + "\n" for line in lines[:200]), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert translated.returncode == 0, translated.stderr[-2000:]
    same = sum(a == b for a, b in zip(translated.stdout.splitlines(), theirs["greedy"]))
    assert same >= 198, f"{same} of 200 greedy translations identical"
