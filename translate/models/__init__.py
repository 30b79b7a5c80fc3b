"""Models: tensors in, tensors out. `build_model` is the one place a config becomes a model."""

from torch import nn

from translate.models.base import Seq2SeqModel
from translate.models.rnn import AttentionRNN, RNNEncoderDecoder
from translate.models.transformer import Transformer

MODELS = {"rnn": RNNEncoderDecoder, "rnn_attention": AttentionRNN, "transformer": Transformer}


def build_model(cfg, vocab_size: int, pad_id: int = 0) -> Seq2SeqModel:
    """The model named by `cfg.name` (a ModelConfig) for a joint vocabulary of `vocab_size`."""
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model.name={cfg.name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, vocab_size, pad_id)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
