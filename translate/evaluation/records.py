"""A run's JSON records read back as data: each value checked where it is read, the run refused in one line if not.

    scores = read_evaluation(run_dir / "eval" / "test.json")   # evaluation's record (evaluator.py writes it)
    summary = read_summary(run_dir / "train_summary.json")     # training's (training/run.py: run_summary)

A run directory may come from anyone, and what is read from it ends in reports, figures and the server's
answers: a `NaN` or `1e999` there makes a JSON answer impossible (a 500 for every request), 5,000 length
buckets make a 50 MB answer and a figure that takes minutes to draw.  So every number is finite (runtime/files.py
read_json), the scores are in their ranges, and lists are as long as this program writes them at most.
"""

from pathlib import Path

from translate.runtime.errors import UserError
from translate.runtime.files import read_json

MAX_RECORD_BYTES = 1 << 20  # an evaluation record is about 3 KB, a summary under 1 KB
MAX_BUCKETS = 100  # length buckets in one record (eval.length_buckets has 4 by default; the rules cap it here)
MAX_COUNT = 10**12  # steps, sentences, tokens, words: far past any run, far below what breaks arithmetic
PERCENT = ("bleu", "chrf", "chrf_pp", "best_valid_bleu")  # sacreBLEU's scores are in [0, 100] (-1: none yet)
NON_NEGATIVE = ("ter", "loss", "ppl", "train_minutes", "valid_minutes", "tokens_per_s", "epochs")
COUNTS = ("step", "steps", "sentences", "min_words", "max_words", "k_max", "per_k", "parameters")
COUNTS += ("target_tokens", "skipped_steps", "seed")
NAMES = ("model", "name", "src_lang", "tgt_lang", "precision", "device")  # short strings, shown in reports
MAX_NAME = 200
AGAIN = "a run's records are written by make train and make eval: write them again"


class BadRecord(UserError):
    """A record of a run with a value this program never writes; the message names the file and the key."""


def read_evaluation(path: str | Path, needs: tuple[str, ...] = ("bleu",)) -> dict:
    """eval/<name>.json of a run, checked (check_evaluation)."""
    return check_evaluation(read_record(path), path, needs)


def check_evaluation(record, path, needs: tuple[str, ...] = ("bleu",), prefix: str = "") -> dict:
    """An evaluation record, checked: the keys the caller `needs` present, bleu a number, scores in range, counts
    whole numbers, names short strings, buckets bounded."""
    if not isinstance(record, dict):
        raise BadRecord(f"{path}: {prefix or 'the record'} is a {type(record).__name__}, not a mapping; {AGAIN}")
    require(record, (*needs, "bleu"), path, prefix)
    if not is_number(record["bleu"]):
        raise BadRecord(f"{path}: {prefix}bleu is not a number; {AGAIN}")
    check_values(record, path, prefix)
    check_buckets(record.get("bleu_by_length", []), path, f"{prefix}bleu_by_length")
    if record.get("probe") is not None:
        check_evaluation(record["probe"], path, ("bleu", "bleu_by_length"), f"{prefix}probe.")
    return record


def read_summary(path: str | Path, needs: tuple[str, ...] = ()) -> dict:
    """train_summary.json of a run, checked: the keys the caller `needs` present, its values in range."""
    record = read_record(path)
    require(record, needs, path)
    check_values(record, path)
    return record


def require(record: dict, needs: tuple[str, ...], path, prefix: str = "") -> None:
    missing = [key for key in needs if key not in record]
    if missing:
        raise BadRecord(f"{path}: no {prefix}{missing[0]}; {AGAIN}")


def read_record(path: str | Path) -> dict:
    record = read_json(path, MAX_RECORD_BYTES)
    if not isinstance(record, dict):
        raise BadRecord(f"{path}: a JSON {type(record).__name__}, not a mapping; {AGAIN}")
    return record


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # read_json leaves no NaN or inf


def check_values(record: dict, path, prefix: str = "") -> None:
    """The scores and counts a record may hold, each where present: a number in its range, or null for a score."""
    for key, value in record.items():
        if key in PERCENT:
            ok = value is None or (is_number(value) and -1 <= value <= 100)
        elif key in NON_NEGATIVE:
            ok = value is None or (is_number(value) and 0 <= value < MAX_COUNT)
        elif key in COUNTS:
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT)
        elif key in NAMES:
            ok = isinstance(value, str) and len(value) <= MAX_NAME
        else:
            continue
        if not ok:
            raise BadRecord(f"{path}: {prefix}{key}={str(value)[:40]!r} is not a {key} this program writes; {AGAIN}")


def check_buckets(buckets, path, key: str) -> None:
    """A list of at most MAX_BUCKETS length buckets, each {min_words, max_words, sentences, bleu | null, …}."""
    if not isinstance(buckets, list) or len(buckets) > MAX_BUCKETS:
        what = f"{len(buckets):,} buckets (at most {MAX_BUCKETS})" if isinstance(buckets, list) else "not a list"
        raise BadRecord(f"{path}: {key} is {what}; {AGAIN}")
    for i, bucket in enumerate(buckets):
        whole = ("min_words", "max_words", "sentences")
        if not (isinstance(bucket, dict) and "bleu" in bucket and all(isinstance(bucket.get(k), int) for k in whole)):
            raise BadRecord(
                f"{path}: {key}[{i}] is not a length bucket (min_words, max_words, sentences, bleu); {AGAIN}"
            )
        check_values(bucket, path, f"{key}[{i}].")
