"""The runs a server holds: each loaded once through the inference API, named, described for /v1/models.

models = load_models(["runs/compare/…/rnn_seed1234", …], checkpoint="best", device="auto")
models["rnn_seed1234"].model, .tokenizer, .describe()
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from translate.decoding.inference import load_run
from translate.evaluation.records import read_evaluation
from translate.models import count_parameters
from translate.runtime.checkpoints import TrainState
from translate.runtime.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    run_dir: Path
    model: object
    tokenizer: object
    cfg: object
    step: int
    bleu: float | None  # the run's evaluated test BLEU (eval/test.json), if any

    @property
    def family(self) -> str:
        return self.cfg.model.name

    def describe(self) -> dict:
        data, model = self.cfg.data, self.cfg.model
        return {
            "name": self.name,
            "family": self.family,
            "attention": model.attention if self.family == "rnn_attention" else None,
            "has_attention": bool(self.model.has_attention),
            "source_language": data.src_lang,
            "target_language": data.tgt_lang,
            "parameters": count_parameters(self.model),
            "step": self.step,
            "bleu": self.bleu,
            "max_source_tokens": self.model.max_positions - 1 if self.model.max_positions else None,
            "attention_heads": self.model.attention_heads,
        }


def evaluated_bleu(run_dir: Path) -> float | None:
    """Test BLEU from the run's eval/test.json if it was evaluated, else None; a record this program would not
    write (evaluation/records.py) refuses the run, in one line, before anything is served."""
    path = run_dir / "eval" / "test.json"
    return float(read_evaluation(path)["bleu"]) if path.exists() or path.is_symlink() else None


def unique_names(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, with its parent's where two would share one."""
    names = [d.name for d in run_dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]


def load_models(run_dirs: list[str | Path], checkpoint: str = "best", device: str = "auto") -> dict[str, ServedModel]:
    """Every run loaded through the inference API (its files checked as data: translate/config/stored.py)."""
    if not run_dirs:
        raise UserError('no run to serve; give RUN=<run dir> or RUNS="<run dir> …"')
    paths = [Path(d) for d in run_dirs]
    served = {}
    for name, path in zip(unique_names(paths), paths):
        model, tokenizer, cfg, ckpt = load_run(path, checkpoint, device)
        step = TrainState.from_checkpoint(ckpt).step
        served[name] = ServedModel(name, path, model, tokenizer, cfg, step, evaluated_bleu(path))
        log.info("loaded %s: %s, step %d, from %s", name, cfg.model.name, step, path)
    if len(served) != len(paths):
        raise UserError(f"two runs share a name among {', '.join(map(str, paths))}; serve distinct runs")
    return served


def comparison_report(models: dict[str, ServedModel]) -> dict | None:
    """BLEU by length of the served runs when they are one evaluated comparison (`make compare`: one sweep
    directory, each run trained and evaluated), else None."""
    from translate.evaluation.comparison import load_run_results  # TensorBoard and matplotlib: only here

    runs = list(models.values())
    if len(runs) < 2 or len({served.run_dir.resolve().parent for served in runs}) != 1:
        return None
    rows = [load_run_results(served.run_dir) for served in runs]  # a bad record refuses the run (records.py)
    if any(row is None for row in rows):
        return None
    report = []
    for served, row in zip(runs, rows):
        scores, probe = row["eval"], row["eval"].get("probe") or {}
        report.append(
            {
                "name": served.name,
                "model": served.family,
                "bleu": scores.get("bleu"),
                "bleu_by_length": scores.get("bleu_by_length", []),
                "probe_bleu": probe.get("bleu"),
                "probe_bleu_by_length": probe.get("bleu_by_length", []),
                "train_minutes": row.get("train_minutes"),
                "steps": row.get("steps"),
            }
        )
    return {"sweep": str(runs[0].run_dir.parent), "runs": report}
