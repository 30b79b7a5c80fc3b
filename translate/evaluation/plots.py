"""Figures shared by training, evaluation, the report and the translate command (matplotlib, no display needed)."""

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


def bucket_label(bucket: dict) -> str:
    return f"{bucket['min_words']}+" if bucket["max_words"] >= 999 else f"{bucket['min_words']}-{bucket['max_words']}"


def bleu_by_length_figure(panels: list[tuple[str, list[tuple[str, list[dict]]]]], band: tuple[str, str] | None = None):
    """BLEU against source length: one panel per (title, [(curve name, buckets of metrics.bleu_by_length), …]),
    one curve per name; all curves of a panel share its buckets.  `band` = (low key, high key) of the buckets
    shades the range between them around each curve (evaluation.spread: min and max over seeds)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for name, buckets in curves:
            kept = [(i, b) for i, b in enumerate(buckets) if b["bleu"] is not None]
            (line,) = ax.plot([i for i, _ in kept], [b["bleu"] for _, b in kept], marker="o", label=name)
            if band:
                low, high = ([b[key] for _, b in kept] for key in band)
                ax.fill_between([i for i, _ in kept], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        first = curves[0][1]
        ax.set_xticks(range(len(first)), [f"{bucket_label(b)}\n(n={b['sentences']})" for b in first], fontsize=8)
        ax.set(title=title, xlabel="source sentence length (words)", ylabel="BLEU")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig
