"""A trained Transformer as a Hugging Face `transformers` model: stock classes, no code of ours to load it.

    model = hf_model(our_model, cfg.model)   # PegasusForConditionalGeneration (pre-norm) or MarianMTModel (post-norm)

Which architecture: ours with post-LN layers is a MarianMTModel (post-LN, no final layer norm); with pre-LN layers
(the default) a PegasusForConditionalGeneration (pre-LN layers and a layer norm closing each stack).  Both add
sinusoidal positions with the frequencies of Vaswani et al. 3.5 and scale embeddings by √d_model, as ours do, but
lay a position vector out as [sin of every frequency | cos of every frequency] where ours interleaves sin and cos.
So every weight is written with the residual stream's dimensions permuted (`RESIDUAL`): a matrix reading the stream
has its columns permuted, one writing it its rows, a layer norm or embedding its entries; attention heads, the
feed-forward layer's inside and the output vocabulary are untouched.  The function is the same: teacher-forced
logits agree to float rounding (tests/test_hf_export.py).  Only sinusoidal positions map (transformers has none of
our relative schemes); a pre-norm model with separate source and target embeddings has no stock class either.
"""

from pathlib import Path

import torch

from translate.data.tokenizer import BOS, EOS, PAD, UNK
from translate.runtime.errors import UserError


def residual_order(d_model: int) -> torch.Tensor:
    """Our dimension for each of theirs: the sin dimensions (ours 0, 2, 4, …) first, then the cos ones (1, 3, …)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def check_exportable(model_cfg) -> None:
    if model_cfg.name != "transformer":
        raise UserError(
            f"model {model_cfg.name}: format=hf exports Transformers; an RNN run has no transformers class "
            "(its checkpoint stays this project's)"
        )
    if model_cfg.positions != "sinusoidal":
        raise UserError(
            f"model.positions={model_cfg.positions}: format=hf needs sinusoidal positions (transformers' Marian and "
            "Pegasus have no relative scheme); export a run trained with model.positions=sinusoidal"
        )
    if model_cfg.pre_norm and not model_cfg.tie_embeddings:
        raise UserError(
            "model.pre_norm=true with model.tie_embeddings=false: transformers' pre-norm class (Pegasus) shares one "
            "embedding between encoder and decoder; export a run with tied embeddings, or a post-norm one"
        )


def hf_config(model_cfg, vocab_size: int):
    """The transformers config of the architecture `model_cfg` maps onto (module docstring)."""
    from transformers import MarianConfig, PegasusConfig

    m, tied = model_cfg, bool(model_cfg.tie_embeddings)
    common = dict(
        vocab_size=vocab_size,
        d_model=m.d_model,
        encoder_layers=m.enc_layers,
        decoder_layers=m.dec_layers,
        encoder_attention_heads=m.heads,
        decoder_attention_heads=m.heads,
        encoder_ffn_dim=m.ff_dim,
        decoder_ffn_dim=m.ff_dim,
        activation_function="relu",
        dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        activation_dropout=0.0,
        max_position_embeddings=1024,
        scale_embedding=True,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        decoder_start_token_id=BOS,
        forced_eos_token_id=None,  # at its length limit our search stops where it is; no </s> forced there
        tie_word_embeddings=tied,
    )
    if m.pre_norm:
        return PegasusConfig(**common)
    return MarianConfig(**common, share_encoder_decoder_embeddings=tied, decoder_vocab_size=vocab_size)


def hf_weights(ours: dict[str, torch.Tensor], model_cfg) -> dict[str, torch.Tensor]:
    """Our state dict in the names and layout of the transformers model (module docstring)."""
    order, out = residual_order(model_cfg.d_model), {}

    def reads(w):  # a matrix whose input is the residual stream, or an embedding (its rows are tokens)
        return w[:, order].contiguous()

    def writes(w):  # a matrix or bias whose output is the residual stream, or a layer norm
        return w[order].contiguous()

    def attention(theirs: str, mine: str) -> None:
        for name in ("q_proj", "k_proj", "v_proj"):
            out[f"{theirs}.{name}.weight"] = reads(ours[f"{mine}.{name}.weight"])
            out[f"{theirs}.{name}.bias"] = ours[f"{mine}.{name}.bias"]
        out[f"{theirs}.out_proj.weight"] = writes(ours[f"{mine}.out_proj.weight"])
        out[f"{theirs}.out_proj.bias"] = writes(ours[f"{mine}.out_proj.bias"])

    def norm(theirs: str, mine: str) -> None:
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = writes(ours[f"{mine}.weight"]), writes(ours[f"{mine}.bias"])

    def feed_forward(theirs: str, mine: str) -> None:
        out[f"{theirs}.fc1.weight"] = reads(ours[f"{mine}.net.0.weight"])
        out[f"{theirs}.fc1.bias"] = ours[f"{mine}.net.0.bias"]
        out[f"{theirs}.fc2.weight"] = writes(ours[f"{mine}.net.3.weight"])
        out[f"{theirs}.fc2.bias"] = writes(ours[f"{mine}.net.3.bias"])

    for i in range(model_cfg.enc_layers):
        theirs, mine = f"model.encoder.layers.{i}", f"encoder_layers.{i}"
        attention(f"{theirs}.self_attn", f"{mine}.self_attn")
        norm(f"{theirs}.self_attn_layer_norm", f"{mine}.res1.norm")
        feed_forward(theirs, f"{mine}.ff")
        norm(f"{theirs}.final_layer_norm", f"{mine}.res2.norm")
    for i in range(model_cfg.dec_layers):
        theirs, mine = f"model.decoder.layers.{i}", f"decoder_layers.{i}"
        attention(f"{theirs}.self_attn", f"{mine}.self_attn")
        norm(f"{theirs}.self_attn_layer_norm", f"{mine}.res1.norm")
        attention(f"{theirs}.encoder_attn", f"{mine}.cross_attn")
        norm(f"{theirs}.encoder_attn_layer_norm", f"{mine}.res2.norm")
        feed_forward(theirs, f"{mine}.ff")
        norm(f"{theirs}.final_layer_norm", f"{mine}.res3.norm")
    if model_cfg.pre_norm:
        norm("model.encoder.layer_norm", "encoder_norm")
        norm("model.decoder.layer_norm", "decoder_norm")
    if model_cfg.tie_embeddings:
        out["model.shared.weight"] = reads(ours["embedding.weight"])
    else:  # Marian with separate embeddings and output layer
        out["model.encoder.embed_tokens.weight"] = reads(ours["embedding.weight"])
        out["model.decoder.embed_tokens.weight"] = reads(ours["tgt_embedding.weight"])
        out["lm_head.weight"] = reads(ours["generator.weight"])
    return out


def hf_model(model: torch.nn.Module, model_cfg):
    """The transformers model computing what `model` (ours, in eval mode) computes, in float32."""
    from transformers import AutoModelForSeq2SeqLM

    check_exportable(model_cfg)
    weights = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    vocab_size = weights["generator.weight"].shape[0]
    theirs = AutoModelForSeq2SeqLM.from_config(hf_config(model_cfg, vocab_size)).eval()
    missing, unexpected = theirs.load_state_dict(hf_weights(weights, model_cfg), strict=False)
    computed = {"final_logits_bias"}  # zeros: our output layer has no bias
    left = [n for n in missing if n not in computed and "embed_positions" not in n and not tied_name(n, model_cfg)]
    if left or unexpected:
        raise RuntimeError(f"transformers' names changed: missing {left[:3]}, unexpected {unexpected[:3]}")
    return theirs


def tied_name(name: str, model_cfg) -> bool:
    """The weights transformers ties to model.shared (not saved of their own) when ours are tied."""
    tied = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
    return bool(model_cfg.tie_embeddings) and name in tied


HF_DIR = "hf"  # <run>/hf: the export, ready for `huggingface-cli upload`


def hf_tokenizer(model_file: str | Path):
    """The run's SentencePiece model as a transformers fast tokenizer giving the same ids (its pieces and scores
    in a `tokenizers` Unigram model, SentencePiece's own normalisation rules, ▁ for spaces) that, as our source
    batches do, ends each text with </s>.  Unigram models only, the project's default."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
        raise UserError(f"{model_file}: a SentencePiece {kind} model; format=hf converts unigram ones (the default)")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    fast = Tokenizer(models.Unigram(pieces, unk_id=UNK, byte_fallback=False))
    rules = [normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)]
    if proto.normalizer_spec.remove_extra_whitespaces:
        rules += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    fast.normalizer = normalizers.Sequence(rules)
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    fast.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    eos = pieces[EOS][0]
    fast.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, EOS)])
    names = {"pad_token": PAD, "unk_token": UNK, "bos_token": BOS, "eos_token": EOS}
    return PreTrainedTokenizerFast(tokenizer_object=fast, **{k: pieces[i][0] for k, i in names.items()})


def export_hf(run_dir: str | Path, checkpoint: str = "best", readme=None) -> Path:
    """Write <run>/hf: the model (safetensors), its config and generation config, the tokenizer, loadable by
    AutoModelForSeq2SeqLM and AutoTokenizer, and `readme(run_dir, cfg, step, architecture)` as README.md (the model
    card, translate/evaluation/model_card.py); returns the directory."""
    from translate.decoding.ct2_export import export_building
    from translate.decoding.inference import load_run
    from translate.runtime.checkpoints import TrainState

    import_transformers()
    run_dir = Path(run_dir)
    model, tokenizer, cfg, ckpt = load_run(run_dir, checkpoint, "cpu")
    theirs, fast = hf_model(model, cfg.model), hf_tokenizer(tokenizer.model_file)
    theirs.generation_config.update(num_beams=1, do_sample=False, max_length=model.max_positions)
    step = TrainState.from_checkpoint(ckpt).step
    card = readme(run_dir, cfg, step, type(theirs).__name__) if readme else None
    with export_building(run_dir, run_dir / HF_DIR) as built:
        theirs.save_pretrained(built, safe_serialization=True)
        fast.save_pretrained(built)
        if card is not None:
            (built / "README.md").write_text(card, encoding="utf-8")
    return run_dir / HF_DIR


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("format=hf needs transformers: pip install -e '.[hf]'") from None
    return transformers
