"""Markdown tables, written one way for every report and benchmark: markdown_table(["run", "BLEU"], [["rnn",
"21.40"]], align="lr") is the three lines `| run | BLEU |`, `|---|---:|` and `| rnn | 21.40 |`."""

from collections.abc import Iterable, Sequence

RULES = {"l": "---", "r": "---:", "c": ":---:"}  # a column's alignment -> its cell of the rule under the header


def markdown_row(cells: Iterable) -> str:
    """`| a | b |`; an empty cell is `| |`."""
    return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def markdown_table(header: Sequence, rows: Iterable[Sequence], align: str | Sequence[str] | None = None) -> str:
    """A markdown table, its lines joined by newlines (no newline at the end).  Cells are written with str(), so
    format numbers first.  `align` gives each column's alignment, `l` (the default), `r` or `c`: a string of one
    letter per column ("lrr") or a sequence of letters."""
    align = ["l"] * len(header) if align is None else list(align)
    if len(align) != len(header) or not set(align) <= set(RULES):
        raise ValueError(f"align {align!r}: one of {'/'.join(RULES)} for each of the {len(header)} columns")
    lines = [markdown_row(header), "|" + "|".join(RULES[a] for a in align) + "|"]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns: {row!r}")
        lines.append(markdown_row(row))
    return "\n".join(lines)
