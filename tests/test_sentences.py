"""Paragraphs translated sentence by sentence (translate/decoding/sentences.py, the inference API, the server), and
`make eval` left sentence-level, on a tiny untrained Transformer built by hand (no training, seconds)."""

import json
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import translate.decoding.inference as inference
from translate.config.schema import EvalConfig, ModelConfig, TokenizerConfig, TrainConfig
from translate.data.tokenizer import train_or_load
from translate.decoding.inference import sentences_of, translate_full, translate_lines, translate_texts
from translate.decoding.options import DecodingOptions
from translate.decoding.sentences import split_into_sentences
from translate.models import build_model
from translate.runtime.checkpoints import save_checkpoint

WORDS = "ein eine der die das mann frau hund kind spielt läuft sitzt auf dem im park wasser roten blauen ball".split()
TINY = ModelConfig(name="transformer", d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1)
TWO = "Ein Mann spielt im Park. Der Hund läuft im Wasser."
ONE = "Eine Frau sitzt auf dem roten Ball."
SHORT = {"max_len_ratio": 0.5, "max_len_offset": 3}  # an untrained model writes to the limit: keep it near


@pytest.fixture(autouse=True)
def one_thread():
    """A model this small gains nothing from threads, and waits on them when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "language, text, expected",
    [
        ("de", "Ein Hund läuft. Zwei Männer, z.B. Hr. Müller, stehen am 3. Mai vor dem Haus! Was tun sie?", 3),
        ("en", "A dog runs. Mr. Smith stands in the U.S. Army. Why?", 3),
        ("fr", "Un chien court. Pourquoi ? Deux femmes marchent.", 3),
        ("cs", "Pes běží. Pan Novák, tj. náš soused, stojí před domem. Proč?", 3),
        ("de", "Ein Mann mit einem roten Hut fährt über eine Brücke.", 1),
        ("xx", "A language without rules of its own. Its general rules split it.", 2),
    ],
)
def test_the_splitter_knows_the_project_languages_and_their_abbreviations(language, text, expected):
    sentences = split_into_sentences(text, language)
    assert len(sentences) == expected and " ".join(sentences) == " ".join(text.split())
    assert all(s == s.strip() and s for s in sentences)


def test_blank_gives_no_sentence_and_a_text_of_one_stays_as_it_is():
    assert split_into_sentences("", "de") == [] and split_into_sentences(" \n ", "de") == []
    assert sentences_of([TWO, ONE + "  ", ""], "de") == [split_into_sentences(TWO, "de"), [ONE + "  "], [""]]
    assert sentences_of([TWO, ONE], None) == [[TWO], [ONE]]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory as training leaves it (tokenizer, config.yaml, best.pt) of a tiny untrained Transformer."""
    run = tmp_path_factory.mktemp("sentences") / "run"
    run.mkdir()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "." for _ in range(300)]
    tokenizer = train_or_load(texts, TokenizerConfig(vocab_size=40, cache_dir="tok"), run.parent)
    tokenizer.save(run / "tokenizer.model")
    config = OmegaConf.to_container(OmegaConf.structured(TrainConfig(model=TINY)), resolve=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    torch.manual_seed(0)
    weights = build_model(OmegaConf.structured(TINY), len(tokenizer)).state_dict()
    save_checkpoint({"format": 2, "model": weights, "config": config, "vocab_size": len(tokenizer)}, run / "best.pt")
    (run / "para.de").write_text(f"{TWO}\n{ONE}\n{ONE} {TWO}\n")
    (run / "para.en").write_text(
        "A man plays in the park. The dog runs in the water.\nA woman.\nA woman. A man. A dog.\n"
    )
    return run


@pytest.fixture(scope="module")
def loaded(run):
    model, tokenizer, cfg, _ = inference.load_run(run, device="cpu")
    return model, tokenizer, cfg


def test_a_line_of_sentences_is_their_translations_joined_and_decoded_in_one_call(loaded, monkeypatch):
    model, tokenizer, cfg = loaded
    assert cfg.data.src_lang == "de"
    ec = DecodingOptions(beam_size=3, n_best=2, **SHORT)
    lines = [TWO, "", ONE]
    first, second = split_into_sentences(TWO, "de")
    each = translate_texts(model, tokenizer, [first, second, ONE], ec, progress=False)  # two per sentence
    calls = []
    real = inference.encode_sources
    monkeypatch.setattr(inference, "encode_sources", lambda *a: calls.append(a[3]) or real(*a))
    out = translate_lines(model, tokenizer, lines, ec, first=7, language="de")
    assert calls == [["line 7, sentence 1", "line 7, sentence 2", "line 9"]]  # all sentences of all lines at once
    # n-best: the k-th translation of the line joins the k-th best of each of its sentences
    assert out == [f"{each[0]} {each[2]}\t{each[1]} {each[3]}", "", f"{each[4]}\t{each[5]}"]
    whole = translate_texts(model, tokenizer, [TWO, ONE], ec, progress=False)
    assert translate_lines(model, tokenizer, lines, ec, first=7) == [f"{whole[0]}\t{whole[1]}", "", out[2]]


def test_translate_full_joins_texts_scores_and_n_best_and_keeps_a_text_whole_for_attention(loaded):
    model, tokenizer, _ = loaded
    ec = DecodingOptions(beam_size=2, n_best=2, **SHORT)
    first, second = split_into_sentences(TWO, "de")
    parts = translate_full(model, tokenizer, [first, second, ONE], ec)
    got = translate_full(model, tokenizer, [TWO, ONE], ec, language="de")
    assert got[0].text == f"{parts[0].text} {parts[1].text}"
    assert got[0].score == pytest.approx(parts[0].score + parts[1].score)
    assert [t for t, _ in got[0].n_best] == [f"{a} {b}" for (a, _), (b, _) in zip(parts[0].n_best, parts[1].n_best)]
    assert got[1] == parts[2]
    whole = translate_full(model, tokenizer, [TWO], ec)[0]
    with_maps = translate_full(model, tokenizer, [TWO], replace(ec, attention=True), language="de")[0]
    assert with_maps.text == whole.text and with_maps.attention["source"][-1] == "</s>"


def test_the_server_splits_by_its_setting_or_the_request_and_never_with_attention(loaded):
    from fastapi.testclient import TestClient

    from translate.serving.app import create_app
    from translate.serving.batcher import Batcher

    model, tokenizer, cfg = loaded
    served = {"tiny": SimpleNamespace(model=model, tokenizer=tokenizer, cfg=cfg)}
    ec = DecodingOptions(**SHORT)
    split = [t.text for t in translate_full(model, tokenizer, [TWO], ec, language="de")]
    whole = [t.text for t in translate_full(model, tokenizer, [TWO], ec)]
    for default in (True, False):
        batcher = Batcher(served, max_queue=8, batch_tokens=4000, max_wait=0)
        app = create_app(served, batcher, replace(ec, split_sentences=default))
        with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the server answers

            def texts(**body):
                response = client.post("/v1/translate", json={"texts": [TWO], **body})
                assert response.status_code == 200, response.text
                return [t["text"] for t in response.json()["translations"]]

            assert texts() == (split if default else whole)
            assert texts(split_sentences=True) == split and texts(split_sentences=False) == whole
            assert texts(attention=True) == whole
            response = client.post("/v1/translate", json={"texts": [TWO], "attention": True, "split_sentences": True})
            assert response.status_code == 422 and response.json()["error"].startswith("split_sentences: true with")


def test_evaluation_scores_lines_whole_whatever_split_sentences_says(run, loaded):
    from translate.evaluation.evaluator import evaluate

    model, tokenizer, _ = loaded
    results = {}
    for split in (True, False):
        name = f"para_{split}"
        ec = OmegaConf.structured(
            EvalConfig(
                src=str(run / "para.de"), ref=str(run / "para.en"), name=name, probe_k=2, split_sentences=split, **SHORT
            )
        )
        result = evaluate(run, ec)
        result.pop("name"), result.get("references", {}).pop("file", None)  # named after eval.name
        probe = (run / "eval" / f"{name}_probe.hyp").read_text()
        results[split] = result, (run / "eval" / f"{name}.hyp").read_text(), probe
        assert json.loads((run / "eval" / f"{name}.json").read_text())["sentences"] == 3
    assert results[True] == results[False]
    lines = (run / "para.de").read_text().splitlines()
    assert results[True][1].splitlines() == translate_texts(
        model, tokenizer, lines, DecodingOptions(**SHORT), progress=False
    )
