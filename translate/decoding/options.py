"""How to decode: one frozen value, built once from a config or an HTTP request and passed everywhere.

    options = DecodingOptions.of(cfg.eval)                          make eval, make translate, the server's defaults
    options = replace(defaults, beam_size=5, n_best=2)              a request's own (translate/serving/app.py)
    hyps = translate_ids(model, sources, BOS, EOS, options)         our search (search.py)
    hyps = CT2Model(...).translate_ids(sources, options)            CTranslate2's, under the same rules (ct2.py)

Its defaults are EvalConfig's (translate/config/schema.py), the one home of every default.
"""

from dataclasses import dataclass, fields

from translate.config.schema import EvalConfig


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = EvalConfig.beam_size  # 1 = greedy search
    n_best: int = EvalConfig.n_best  # translations per text (<= beam_size), best first
    length_penalty: float = EvalConfig.length_penalty  # GNMT alpha of beam search; 0 = raw log P
    max_len_ratio: float = EvalConfig.max_len_ratio  # an output's limit: ratio × source tokens + max_len_offset
    max_len_offset: int = EvalConfig.max_len_offset
    batch_tokens: int = EvalConfig.batch_tokens  # source tokens × beam_size per decoding batch
    split_sentences: bool = EvalConfig.split_sentences  # a text of several sentences decoded sentence by sentence
    attention: bool = False  # where the model looked, with each translation (each text then decoded whole)

    @classmethod
    def of(cls, config, **changes) -> "DecodingOptions":
        """The options an EvalConfig (or any object with these names) sets, with `changes` on top."""
        given = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return cls(**(given | changes))
