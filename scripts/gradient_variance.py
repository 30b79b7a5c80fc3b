"""How noisy is each run's learning signal? The variance of its training gradient where its training stopped.

    python scripts/gradient_variance.py RUN [RUN ...] [--batches 8] [--draws 8] [--out docs/bench/x.json]

For each run: the last checkpoint's training weights (not the moving average), the loss the trainer minimises
(label-smoothed cross-entropy, plus the REINFORCE and entropy terms for model.attention=hard), per target token,
on `--batches` batches of `batch_tokens` target tokens drawn from the training split with one seed (the same
sentences for every run), each batch's gradient taken `--draws` times:

    sampling  (1/B) Σ_b (1/(R−1)) Σ_r ‖g_br − ḡ_b‖²   dropout off: the noise of the attention's own choices
                                                       (hard attentions only: a soft scorer's is 0 by construction)
    total     (1/(BR−1)) Σ_br ‖g_br − ḡ‖²              dropout on, as in training: batches + dropout + sampling

each as a ratio to ‖ḡ‖², the squared norm of the mean gradient (noise to signal; ḡ is the mean over all B·R
gradients of that mode), for all parameters and for the attention's own (the scorer's energies: under hard
attention the only parameters the REINFORCE term reaches). The moving-average baseline is put back after every
gradient, so every draw sees the checkpoint's. Beside them, how peaked the scorer's α is (`alignment_entropy`).
"""

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from translate.config.stored import evaluation_data  # noqa: E402
from translate.data.batching import collate  # noqa: E402
from translate.data.pipeline import load_split  # noqa: E402
from translate.decoding.inference import load_run  # noqa: E402
from translate.models.attention import Scorer  # noqa: E402
from translate.models.dropout import Dropout  # noqa: E402
from translate.models.hard_attention import GumbelHardAttention, HardAttention, entropy, masked_log_softmax  # noqa: E402
from translate.models.loss import sequence_loss  # noqa: E402

SAMPLED = ("hard", "hard_gumbel")  # attentions that draw a position in training


def sentence_batches(tokenizer, cfg, count: int, batch_tokens: int, seed: int = 1234):
    """`count` batches of random training pairs, each about `batch_tokens` target tokens."""
    pairs = load_split(evaluation_data(cfg.data, None), "train")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    batches, chosen, tokens = [], [], 0
    for i in order:
        chosen.append(i)
        tokens += len(pairs.tgt[i].split()) * 1.5 + 1  # about the subword tokens of a sentence, to size batches
        if tokens >= batch_tokens:
            src = tokenizer.encode([pairs.src[j] for j in chosen])
            tgt = tokenizer.encode([pairs.tgt[j] for j in chosen])
            batches.append(collate(src, tgt, chosen))
            chosen, tokens = [], 0
            if len(batches) == count:
                break
    return batches


def flat_gradient(model, batch, cfg) -> torch.Tensor:
    """The gradient of the training loss per target token, one fp32 vector; buffers put back afterwards."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.zero_grad(set_to_none=True)
    loss, _ = sequence_loss(model, batch, cfg.trainer.label_smoothing, 0, cfg.trainer.loss_chunk)
    (loss / batch.num_tgt_tokens).backward()
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in trained])


def attention_slice(model) -> torch.Tensor:
    """A boolean mask over the flat gradient (the same parameters, in the same order): True on the attention's."""
    parts = [torch.full((p.numel(),), "attention" in name) for name, p in model.named_parameters() if p.requires_grad]
    return torch.cat(parts)


def measure(model, batches, draws: int, cfg, dropout: bool) -> dict:
    """Noise-to-signal ratios of the per-token gradient over `batches` × `draws`, for all and attention weights."""
    model.train()
    if not dropout:
        for module in model.modules():
            if isinstance(module, (Dropout, torch.nn.RNNBase)):
                module.eval()
    mask = attention_slice(model)
    total = None
    within = {"all": 0.0, "attention": 0.0}
    sum_sq = {"all": 0.0, "attention": 0.0}
    for batch in batches:
        grads = torch.stack([flat_gradient(model, batch, cfg) for _ in range(draws)])  # (R, P)
        mean_b = grads.mean(0)
        for key, m in (("all", slice(None)), ("attention", mask)):
            within[key] += float(((grads[:, m] - mean_b[m]) ** 2).sum(1).sum()) / (draws - 1) / len(batches)
            sum_sq[key] += float((grads[:, m] ** 2).sum())
        total = grads.sum(0) if total is None else total + grads.sum(0)
    n = len(batches) * draws
    mean = total / n
    result = {}
    for key, m in (("all", slice(None)), ("attention", mask)):
        signal = float((mean[m] ** 2).sum())
        spread = (sum_sq[key] - n * signal) / (n - 1)  # Σ‖g − ḡ‖² = Σ‖g‖² − n‖ḡ‖²
        if not signal:  # no parameters of its own (the dot scorer): nothing to measure
            result[key] = None
            continue
        result[key] = {"mean_grad_sq": signal, "sampling": within[key] / signal, "total": spread / signal}
    return result


def alignment_entropy(model, batches) -> float | None:
    """How peaked the attention's α is where training stopped: the mean over target steps of H(α_t) / log n_t (n_t
    the positions α may take; 1 = uniform, 0 = one position), in eval mode, from the scorer's own energies (for
    hard attention, the distribution it draws from). None for a model without an RNN scorer's `scores`."""
    hard = [m.energy for m in model.modules() if isinstance(m, (HardAttention, GumbelHardAttention))]
    scorers = hard or [m for m in model.modules() if isinstance(m, Scorer)]
    if not scorers:
        return None
    energy, ratios = scorers[0], []
    scores_of = type(energy).scores.__get__(energy)  # the class's own method, under the recording one

    def recorded(query, keys, mask, position):
        scores, allowed = scores_of(query, keys, mask, position)
        n = allowed.sum(-1)
        ratios.append((entropy(masked_log_softmax(scores, allowed), allowed)[n > 1] / n[n > 1].float().log()).tolist())
        return scores, allowed

    energy.scores = recorded
    model.eval()
    with torch.no_grad():
        for batch in batches:
            model.features(batch.src, batch.src_mask, batch.tgt_in)
    del energy.scores
    flat = [r for step in ratios for r in step]
    return sum(flat) / len(flat)


def ratio(measured: dict | None, key: str) -> str:
    return "none (no parameters)" if measured is None else f"{measured[key]:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for run in args.runs:
        model, tokenizer, cfg, ckpt = load_run(run, "last", device="cpu")
        model.load_state_dict(ckpt["model"])  # the training weights, not the moving average load_run decodes with
        batches = sentence_batches(tokenizer, cfg, args.batches, args.batch_tokens)
        row = {"run": str(run), "attention": cfg.model.get("attention"), "step": ckpt["train_state"]["step"]}
        sampled = cfg.model.get("attention") in SAMPLED  # a soft scorer's sampling noise is 0: not measured
        row["sampling_only"] = measure(model, batches, args.draws, cfg, dropout=False) if sampled else None
        row["as_trained"] = measure(model, batches, args.draws, cfg, dropout=True)
        row["alignment_entropy"] = alignment_entropy(model, batches)
        rows.append(row)
        s, t = row["sampling_only"], row["as_trained"]
        sampling = "0 (soft)"
        if s is not None:
            sampling = f"all {s['all']['sampling']:.3g}, attention {ratio(s['attention'], 'sampling')}"
        print(
            f"{row['attention'] or run}: step {row['step']}; sampling noise/signal {sampling}; as trained "
            f"(batches, dropout, sampling) all {t['all']['total']:.3g}, attention {ratio(t['attention'], 'total')}; "
            f"entropy of α / uniform {row['alignment_entropy'] or float('nan'):.3f}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"batches": args.batches, "draws": args.draws, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
