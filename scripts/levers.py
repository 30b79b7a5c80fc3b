"""Component timings behind docs/performance.md: each speed lever on, then off, in one process.

    python scripts/levers.py [--repeats 7] [--out docs/bench/levers]

Levers that are config switches (precision, threads, Adam kernel, torch.compile, length
bucketing) are measured on whole training steps by scripts/benchmark.py; the ones built
into the models are measured here on the reference sizes (batch of 4,096 padded tokens,
d_model / hidden 256-512, Multi30k sentence lengths), forward + backward, median ms:

- scaled_dot_product_attention versus the same attention written as matmul-softmax-matmul,
  without and with dropout on the attention weights;
- additive-attention keys projected once per sentence versus at every decoder step;
- the attention RNN's readout and output layer applied once over all target positions
  versus at every decoder step (teacher forcing);
- packed versus padded sequences in the bidirectional GRU encoder, on length-bucketed
  batches and on random batches;
- dropout masks from 16-bit draws (translate/models/dropout.py) versus PyTorch's bernoulli_
  masks, on the feed-forward activations of a batch (4,096 × 1,024), fp32 and bf16.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from translate.evaluation.tables import markdown_table
from translate.models.attention import AdditiveAttention, MultiHeadAttention, written_out_attention
from translate.models.dropout import dropout as dropout_16bit
from translate.runtime.allocator import preload_tcmalloc
from translate.runtime.host import describe_host, host_line

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def dropout_lever(repeats: int, dtype: torch.dtype) -> dict:
    """Dropout 0.1 on the reference Transformer's feed-forward activations of one batch, forward + backward."""
    x = torch.randn(4096, 1024, dtype=dtype, requires_grad=True)
    grad = torch.randn(4096, 1024, dtype=dtype)
    ours = lambda: dropout_16bit(x, 0.1).backward(grad)  # noqa: E731
    bernoulli = lambda: F.dropout(x, 0.1, training=True).backward(grad)  # noqa: E731
    return {"on_ms": median_ms(ours, repeats), "off_ms": median_ms(bernoulli, repeats)}


def sdpa_lever(repeats: int, precision: str, dropout: float) -> dict:
    """Encoder self-attention of the reference Transformer: 128 sentences × 32 tokens, d 256, 4 heads."""
    attn = MultiHeadAttention(256, 256, 256, 4, out_dim=256, dropout=dropout).train()
    x = torch.randn(128, 32, 256, requires_grad=True)
    mask = torch.ones(128, 1, 1, 32, dtype=torch.bool)
    mask[::3, ..., 26:] = False  # some padding
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731

    def run(attend):
        with autocast():
            q, (k, v) = attn.project_q(x), attn.project_kv(x)
            out = attn.out_proj(attend(q, k, v, mask, dropout_p=dropout).transpose(1, 2).reshape(128, 32, 256))
        out.float().sum().backward()

    fused = lambda: run(F.scaled_dot_product_attention)  # noqa: E731
    written_out = lambda: run(lambda *args, **kwargs: written_out_attention(*args, **kwargs)[0])  # noqa: E731
    return {"on_ms": median_ms(fused, repeats), "off_ms": median_ms(written_out, repeats)}


def keys_once_lever(repeats: int) -> dict:
    """Bahdanau attention over 30 decoder steps: 128 sentences × 30 source positions, memory 1024, attention 512."""
    attn = AdditiveAttention(512, 1024, 512)
    memory = torch.randn(128, 30, 1024, requires_grad=True)
    queries = torch.randn(30, 128, 512, requires_grad=True)
    mask = torch.ones(128, 30, dtype=torch.bool)

    def run(project_every_step: bool):
        keys, total = attn.project_keys(memory), 0.0
        for t in range(queries.shape[0]):
            step_keys = attn.project_keys(memory) if project_every_step else keys
            total = total + attn(queries[t], step_keys, memory, mask)[0].sum()
        total.backward()

    return {"on_ms": median_ms(lambda: run(False), repeats), "off_ms": median_ms(lambda: run(True), repeats)}


def batched_readout_lever(repeats: int) -> dict:
    """The reference attention RNN on 128 sentences × 30 source / 32 target tokens, vocabulary 8,000."""
    from translate.config.schema import ModelConfig
    from translate.models import build_model

    model = build_model(
        ModelConfig(name="rnn_attention", emb_dim=256, hidden_dim=512, attention_dim=512, dropout=0.2), 8000
    ).train()
    src, tgt = torch.randint(4, 8000, (128, 30)), torch.randint(4, 8000, (128, 32))
    mask = torch.ones_like(src, dtype=torch.bool)

    def per_step():
        state, logits = model.encode(src, mask), []
        for t in range(tgt.shape[1]):
            step_logits, state = model.decode_step(state, tgt[:, t])
            logits.append(step_logits)
        torch.stack(logits, dim=1).sum().backward()

    return {
        "on_ms": median_ms(lambda: model(src, mask, tgt).sum().backward(), repeats),
        "off_ms": median_ms(per_step, repeats),
    }


def packing_lever(repeats: int, lengths: list[int]) -> dict:
    """Bidirectional GRU 256 -> 2×512 over one 4,096-token batch of the given lengths, packed or padded."""
    rnn = nn.GRU(256, 512, batch_first=True, bidirectional=True)
    lengths_t = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), 256, requires_grad=True)

    def packed():
        out, _ = rnn(pack_padded_sequence(x, lengths_t, batch_first=True, enforce_sorted=False))
        pad_packed_sequence(out, batch_first=True)[0].sum().backward()

    def padded():  # faster only if padding is rare, and wrong: the backward direction starts on padding
        rnn(x)[0].sum().backward()

    padding = 1 - sum(lengths) / (len(lengths) * max(lengths))
    return {"on_ms": median_ms(packed, repeats), "off_ms": median_ms(padded, repeats), "padding": round(padding, 3)}


def batch_lengths(bucketed: bool, seed: int = 0) -> list[int]:
    """Source lengths of one batch of 4,096 padded tokens from a Multi30k-like length distribution (mean ≈ 15)."""
    g = torch.Generator().manual_seed(seed)
    pool = (torch.distributions.Gamma(6.0, 0.4).sample((2000,)) + 3).round().int().clamp(4, 60).tolist()
    pool = [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]
    if bucketed:
        pool = sorted(pool)[1000:]  # a bucket near the median
    batch = []
    for length in pool:
        if max(batch + [length]) * (len(batch) + 1) > 4096:
            break
        batch.append(length)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "levers")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {
        "scaled_dot_product_attention, no attention dropout (fp32)": sdpa_lever(args.repeats, "fp32", 0.0),
        "scaled_dot_product_attention, no attention dropout (bf16 autocast)": sdpa_lever(args.repeats, "bf16", 0.0),
        "scaled_dot_product_attention, attention dropout 0.1 (fp32)": sdpa_lever(args.repeats, "fp32", 0.1),
        "scaled_dot_product_attention, attention dropout 0.1 (bf16 autocast)": sdpa_lever(args.repeats, "bf16", 0.1),
        "additive keys projected once per sentence": keys_once_lever(args.repeats),
        "attention RNN readout batched over target positions": batched_readout_lever(args.repeats),
        "packed GRU encoder, length-bucketed batch": packing_lever(args.repeats, batch_lengths(bucketed=True)),
        "packed GRU encoder, random batch": packing_lever(args.repeats, batch_lengths(bucketed=False)),
        "dropout masks from 16-bit draws vs bernoulli_ (fp32)": dropout_lever(args.repeats, torch.float32),
        "dropout masks from 16-bit draws vs bernoulli_ (bf16)": dropout_lever(args.repeats, torch.bfloat16),
    }
    host = describe_host()
    table = [
        [name + (f" (padding {r['padding']:.0%})" if "padding" in r else ""), f"{r['on_ms']:.1f}", f"{r['off_ms']:.1f}"]
        + [f"{r['off_ms'] / r['on_ms']:.2f}×"]
        for name, r in rows.items()
    ]
    lines = [
        f"Host: {host_line(host)}. Forward + backward, median of {args.repeats}.",
        "",
        markdown_table(["lever", "on (ms)", "off (ms)", "speed-up"], table, align="lrrr"),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"host": host, "threads": host["threads"], "rows": rows}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    preload_tcmalloc()  # measured on the allocator the commands run on (TRANSLATE_MALLOC=system: glibc's)
    main()
