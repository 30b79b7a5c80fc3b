"""Figures shared by training, evaluation and the translate command (matplotlib, no display needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def attention_figure(weights, src_tokens: list[str], tgt_tokens: list[str], title: str = ""):
    """Heatmap of an alignment: weights (T, S) as rows = target tokens, columns = source tokens."""
    weights = weights[: len(tgt_tokens), : len(src_tokens)]
    fig, ax = plt.subplots(figsize=(max(3.0, 0.32 * len(src_tokens) + 1.5), max(2.5, 0.32 * len(tgt_tokens) + 1.2)))
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=8)
    ax.set(xlabel="source", ylabel="target", title=title)
    fig.tight_layout()
    return fig
