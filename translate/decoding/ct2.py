"""Decoding with a CTranslate2 export (translate/decoding/ct2_export.py writes it): `make translate RUN=… engine=ct2`.

`CT2Model` wraps a `ctranslate2.Translator` with the run's tokenizer and decodes under the same rules as our own
search (translate/decoding/search.py): the source cut at the model's position limit, the output limit ratio × source
tokens (EOS included) + offset, greedy for beam_size 1, else beam search ranked by the GNMT length penalty.
"""

import logging
from collections import defaultdict
from pathlib import Path

import torch

from translate.data.tokenizer import EOS, Tokenizer
from translate.decoding.ct2_export import (
    METADATA,
    TOKENIZER,
    export_command,
    export_dir,
    import_ctranslate2,
)
from translate.decoding.options import DecodingOptions
from translate.decoding.search import Hypothesis, check_n_best, gnmt_length_penalty, max_output_lengths, source_limit
from translate.runtime.checkpoints import find_checkpoint
from translate.runtime.errors import ConfigError, UserError
from translate.runtime.files import read_json, refuse_link

log = logging.getLogger(__name__)


def ct2_device(device: str) -> tuple[str, int]:
    """eval.device as CTranslate2's (device, index): auto takes a GPU when CTranslate2 sees one."""
    ctranslate2 = import_ctranslate2()
    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device == "cpu":
        return "cpu", 0
    if device.startswith("cuda"):
        return "cuda", int(device.partition(":")[2] or 0)
    raise ConfigError(f"eval.device={device}: engine=ct2 runs on cpu or cuda; pass eval.device=cpu")


class CT2Model:
    """An export loaded into a `ctranslate2.Translator`, with the tokenizer and metadata beside it."""

    def __init__(self, directory: str | Path, device: str = "cpu", threads: int = 0):
        ctranslate2 = import_ctranslate2()
        self.directory = Path(directory)
        self.metadata = export_metadata(self.directory)
        self.tokenizer = Tokenizer(self.directory / TOKENIZER)
        self.max_positions: int = self.metadata["max_positions"]
        self.pieces = self.tokenizer.id_to_piece(list(range(len(self.tokenizer))))
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}
        device, index = ct2_device(device)
        self.translator = ctranslate2.Translator(
            str(self.directory), device=device, device_index=index, intra_threads=threads or torch.get_num_threads()
        )

    def _hypotheses(self, result, beam_size: int, length_penalty: float, n_best: int) -> list[Hypothesis]:
        found = []
        for pieces, score in zip(result.hypotheses, result.scores):
            ids = [self.ids[p] for p in pieces]
            ended = bool(ids) and ids[-1] == EOS
            steps = len(ids)  # decoded steps, EOS included (return_end_token)
            if beam_size == 1:
                found.append(Hypothesis(ids[:-1] if ended else ids, score))
            else:  # CTranslate2 ranked by score / steps (length_penalty=1); rank by the GNMT penalty instead
                raw = score * steps
                found.append(
                    Hypothesis(ids[:-1] if ended else ids, raw, raw / gnmt_length_penalty(steps, length_penalty))
                )
        if beam_size > 1:
            found.sort(key=lambda h: h.normalized, reverse=True)
        return found[:n_best]

    def translate_ids(
        self,
        sources: list[list[int]],
        options: DecodingOptions = DecodingOptions(),
    ) -> list[Hypothesis]:
        """`translate.decoding.search.translate_ids` through CTranslate2: `n_best` hypotheses per source, flat, in input
        order.  Sentences are decoded in groups that share an output limit (CTranslate2 takes one per call)."""
        beam_size, n_best = options.beam_size, options.n_best
        check_n_best(beam_size, n_best)
        if not sources:
            return []
        sources = [s[: source_limit(self)] for s in sources]
        lengths = torch.tensor([len(s) + 1 for s in sources])  # + EOS, as the source mask counts
        mask = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)
        limits = (
            max_output_lengths(mask, options.max_len_ratio, options.max_len_offset)
            .clamp(max=self.max_positions)
            .tolist()
        )
        groups: dict[int, list[int]] = defaultdict(list)
        for i, limit in enumerate(limits):
            groups[limit].append(i)
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for limit, indices in groups.items():
            outputs = self.translator.translate_batch(
                [[self.pieces[t] for t in sources[i]] for i in indices],
                max_batch_size=max(1, options.batch_tokens // beam_size),
                batch_type="tokens",
                beam_size=beam_size,
                num_hypotheses=beam_size,
                length_penalty=0.0 if beam_size == 1 else 1.0,  # nonzero: collect beam_size finished, no early exit
                max_decoding_length=limit,
                max_input_length=0,  # already cut to the model's limit
                min_decoding_length=0,  # EOS may come first, as in our search
                return_scores=True,
                return_end_token=True,
            )
            for i, result in zip(indices, outputs):
                results[i] = self._hypotheses(result, beam_size, options.length_penalty, n_best)
        return [h for nbest in results for h in nbest]


METADATA_FIELDS = {"checkpoint": str, "checkpoint_mtime_ns": int, "step": int, "max_positions": int}
MAX_POSITIONS = 1 << 16  # the source limit an export may state (ours: 1,023)


def export_metadata(directory: Path) -> dict:
    """An export's metadata, checked: a run directory's files are data (docs/security.md)."""
    metadata = read_json(directory / METADATA)
    fields_ok = isinstance(metadata, dict) and all(isinstance(metadata.get(k), t) for k, t in METADATA_FIELDS.items())
    if not fields_ok or not 0 < metadata["max_positions"] <= MAX_POSITIONS:
        raise UserError(
            f"{directory / METADATA}: not the metadata make export writes; export again (make export) or remove it"
        )
    return metadata


def load_export(run_dir: str | Path, quantization: str, ec) -> CT2Model:
    """The export of `run_dir` for engine=ct2, or a one-line error saying how to make it."""
    import_ctranslate2()
    run_dir, directory = Path(run_dir), export_dir(run_dir, quantization)
    if not (directory / METADATA).is_file():
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run directory not found; pass RUN=<a directory written by make train>")
        raise UserError(
            f"{directory}: no CTranslate2 export here; make one first: {export_command(run_dir, quantization)}"
        )
    refuse_link(directory, "directory")
    metadata = export_metadata(directory)
    if metadata["checkpoint"] != ec.checkpoint:
        raise ConfigError(
            f"{directory}: exported from checkpoint {metadata['checkpoint']}, not eval.checkpoint={ec.checkpoint}; "
            f"pass eval.checkpoint={metadata['checkpoint']} or {export_command(run_dir, quantization, ec.checkpoint)}"
        )
    try:
        source = find_checkpoint(run_dir, ec.checkpoint)
        if source.stat().st_mtime_ns != metadata["checkpoint_mtime_ns"]:
            log.warning(
                "%s: %s changed since it was exported (step %d); re-export: %s",
                directory,
                source.name,
                metadata["step"],
                export_command(run_dir, quantization, ec.checkpoint),
            )
    except UserError:  # the export serves without the checkpoint
        pass
    return CT2Model(directory, ec.device)
