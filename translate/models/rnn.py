"""RNN encoder-decoders: without attention (Cho et al. 2014) and with it (Bahdanau et al. 2015).

Both keep the decoding contract of translate/models/base.py; their decoding state holds the
decoder's hidden state (B, H) or (B, L, H) and what the decoder reads of the source: one vector
(`rnn`), or the encoder outputs and their projected keys (`rnn_attention`).
"""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from translate.models.attention import build_attention
from translate.models.base import EncoderDecoder
from translate.models.dropout import Dropout

CELLS = {"gru": (nn.GRU, nn.GRUCell), "lstm": (nn.LSTM, nn.LSTMCell)}


def cell_classes(name: str):
    if name not in CELLS:
        raise ValueError(f"unknown model.cell={name!r}; choose gru or lstm")
    return CELLS[name]


class RNNEncoder(nn.Module):
    """(Bi)directional GRU/LSTM over embedded source tokens.

    forward(src (B, S), src_mask (B, S)) -> outputs (B, S, D·H), final (B, D·H)
    where D = 2 if bidirectional; `final` is the top layer's last state per
    direction (the backward direction's last state is the one at position 0).
    """

    def __init__(
        self, embedding: nn.Embedding, cell: str, hidden_dim: int, layers: int, bidirectional: bool, dropout: float
    ):
        super().__init__()
        self.embedding, self.dropout = embedding, Dropout(dropout)
        self.rnn = cell_classes(cell)[0](
            embedding.embedding_dim,
            hidden_dim,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.output_dim = hidden_dim * self.directions

    def forward(self, src, src_mask):
        lengths = src_mask.sum(1).cpu()
        packed = pack_padded_sequence(
            self.dropout(self.embedding(src)), lengths, batch_first=True, enforce_sorted=False
        )
        outputs, final = self.rnn(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        h_n = final[0] if isinstance(final, tuple) else final  # (layers·D, B, H)
        top = h_n.view(-1, self.directions, *h_n.shape[1:])[-1]  # (D, B, H)
        return outputs, top.transpose(0, 1).reshape(src.shape[0], -1)


class Maxout(nn.Module):
    """Readout t = max-pool₂(W [s; E y; c]) of Goodfellow et al. 2013, as in Cho 2014 and Bahdanau 2015."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, x):
        return self.linear(x).unflatten(-1, (-1, 2)).amax(-1)


class RNNSeq2Seq(EncoderDecoder):
    """Shared parts: a joint embedding, the encoder, the maxout readout and the output layer."""

    # A recurrence places any length, but search cuts every source and output at a model's limit so that one
    # input cannot make a batch of megabytes: the Transformer's default (PositionalEncoding max_len=1024).
    max_positions = 1024

    def __init__(self, cfg, vocab_size: int, pad_id: int):
        super().__init__()
        self.cell = cfg.cell
        self.embedding = nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=pad_id)
        self.tgt_embedding = (
            self.embedding if cfg.tie_embeddings else nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=pad_id)
        )
        self.encoder = RNNEncoder(
            self.embedding, cfg.cell, cfg.hidden_dim, cfg.enc_layers, cfg.bidirectional, cfg.dropout
        )
        self.dropout = Dropout(cfg.dropout)
        self.generator = nn.Linear(cfg.emb_dim, vocab_size, bias=False)
        for emb in {self.embedding, self.tgt_embedding}:  # unit-scale logits at start, tied or not
            nn.init.normal_(emb.weight, std=cfg.emb_dim**-0.5)
            nn.init.zeros_(emb.weight[pad_id])
        if cfg.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def readout(self, state, embedded, context):
        """maxout([s; E y; c]):  (…, H), (…, E), (…, C) -> (…, E), the features W_o turns into logits."""
        return self.dropout(self.readout_layer(torch.cat([state, embedded, context], dim=-1)))

    def _hidden_in(self, state):  # batch-first state dict -> what nn.GRU/nn.LSTM take
        h = state["hidden"].transpose(0, 1).contiguous()
        return (h, state["cell"].transpose(0, 1).contiguous()) if self.cell == "lstm" else h

    def _hidden_out(self, hidden) -> dict:
        if self.cell == "lstm":
            return {"hidden": hidden[0].transpose(0, 1), "cell": hidden[1].transpose(0, 1)}
        return {"hidden": hidden.transpose(0, 1)}


class RNNEncoderDecoder(RNNSeq2Seq):
    """No attention (Cho et al. 2014): the source reaches the decoder only as one vector.

    c = tanh(V h_N)                   the fixed-size summary of the whole source
    s_0 = tanh(V' c),  s_t = RNN([E y_{t-1}; c], s_{t-1})
    p(y_t | …) = softmax(W_o maxout([s_t; E y_{t-1}; c]))
    """

    def __init__(self, cfg, vocab_size: int, pad_id: int):
        super().__init__(cfg, vocab_size, pad_id)
        self.layers, self.hidden_dim = cfg.dec_layers, cfg.hidden_dim
        self.summary = nn.Linear(self.encoder.output_dim, cfg.hidden_dim)  # V
        self.init_state = nn.Linear(cfg.hidden_dim, cfg.dec_layers * cfg.hidden_dim)  # V'
        self.decoder = cell_classes(cfg.cell)[0](
            cfg.emb_dim + cfg.hidden_dim,
            cfg.hidden_dim,
            cfg.dec_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.dec_layers > 1 else 0.0,
        )
        self.readout_layer = Maxout(cfg.hidden_dim + cfg.emb_dim + cfg.hidden_dim, cfg.emb_dim)

    def encode(self, src, src_mask) -> dict:
        _, final = self.encoder(src, src_mask)
        context = torch.tanh(self.summary(final))  # (B, H)
        s0 = torch.tanh(self.init_state(context)).view(-1, self.layers, self.hidden_dim)  # (B, L, H)
        state = {"context": context, "hidden": s0}
        if self.cell == "lstm":
            state["cell"] = torch.zeros_like(s0)
        return state

    def _decode(self, state, tgt):  # tgt (B, T) -> features (B, T, E), new state
        embedded = self.dropout(self.tgt_embedding(tgt))
        context = state["context"].unsqueeze(1).expand(-1, tgt.shape[1], -1)
        outputs, hidden = self.decoder(torch.cat([embedded, context], dim=-1), self._hidden_in(state))
        return self.readout(outputs, embedded, context), {**state, **self._hidden_out(hidden)}

    def decode_step(self, state, prev):
        features, state = self._decode(state, prev.unsqueeze(1))
        return self.generator(features.squeeze(1)), state

    def features(self, src, src_mask, tgt_in, return_attention: bool = False):  # -> (B, T, E)
        if return_attention:
            raise self.no_attention()
        return self._decode(self.encode(src, src_mask), tgt_in)[0]

    def attention_maps(self, src, src_mask, tgt_in, head: int | None = None):
        raise self.no_attention()


class AttentionRNN(RNNSeq2Seq):
    """RNNsearch (Bahdanau et al. 2015, appendix A): a new context vector for every target word.

    s_0 = tanh(W_s h⃖_1)
    c_i, α_i = attention(s_{i-1}, h_1..h_S)
    p(y_i | …) = softmax(W_o maxout([s_{i-1}; E y_{i-1}; c_i]))
    s_i = RNN([E y_{i-1}; c_i], s_{i-1})
    """

    has_attention = True

    def __init__(self, cfg, vocab_size: int, pad_id: int):
        super().__init__(cfg, vocab_size, pad_id)
        if cfg.dec_layers != 1:
            raise ValueError(
                f"model.dec_layers={cfg.dec_layers}: rnn_attention has a single-layer decoder; set model.dec_layers=1"
            )
        memory_dim = self.encoder.output_dim
        self.init_state = nn.Linear(cfg.hidden_dim if cfg.bidirectional else memory_dim, cfg.hidden_dim)  # W_s
        self.attention = build_attention(
            cfg.attention,
            cfg.hidden_dim,
            memory_dim,
            cfg.attention_dim,
            heads=cfg.heads,
            window=cfg.window,
            reinforce_weight=cfg.hard_reinforce_weight,
            entropy_weight=cfg.hard_entropy_weight,
            baseline_decay=cfg.hard_baseline_decay,
            temperature=cfg.gumbel_temperature,
        )
        self.decoder = cell_classes(cfg.cell)[1](cfg.emb_dim + memory_dim, cfg.hidden_dim)
        self.readout_layer = Maxout(cfg.hidden_dim + cfg.emb_dim + memory_dim, cfg.emb_dim)
        self.hidden_dim, self.bidirectional = cfg.hidden_dim, cfg.bidirectional

    def encode(self, src, src_mask) -> dict:
        memory, final = self.encoder(src, src_mask)  # (B, S, M), (B, M)
        first_backward = final[:, self.hidden_dim :] if self.bidirectional else final
        s0 = torch.tanh(self.init_state(first_backward))  # (B, H)
        position = torch.zeros(src.shape[0], dtype=torch.long, device=src.device)  # target index, for local_m
        state = {
            "memory": memory,
            "keys": self.attention.project_keys(memory),
            "src_mask": src_mask,
            "hidden": s0,
            "position": position,
        }
        if self.cell == "lstm":
            state["cell"] = torch.zeros_like(s0)
        return state

    @property
    def sampled_attention(self):
        """The scorer whose choices the training loss rewards (model.attention=hard), or None."""
        return self.attention if getattr(self.attention, "reinforce", False) else None

    def _step(self, state, embedded, policy: list | None = None):
        """Attention and the recurrence for one target position, without the readout: context c_i, α_i, new state.
        With `policy` (a list), the hard scorer's (log p(s_i|x), H_i), each (B,), of this step are appended to it."""
        query = (state["hidden"], state["keys"], state["memory"], state["src_mask"], state["position"])
        if policy is None:
            context, weights = self.attention(*query)
        else:
            context, weights, *step_policy = self.attention.sample(*query)
            policy.append(step_policy)
        rnn_in = torch.cat([embedded, context], dim=-1)
        if self.cell == "lstm":
            h, c = self.decoder(rnn_in, (state["hidden"], state["cell"]))
            new = {"hidden": h, "cell": c}
        else:
            new = {"hidden": self.decoder(rnn_in, state["hidden"])}
        return context, weights, {**state, **new, "position": state["position"] + 1}

    def decode_step(self, state, prev):
        embedded = self.dropout(self.tgt_embedding(prev))  # (B, E)
        context, _, new_state = self._step(state, embedded)
        return self.generator(self.readout(state["hidden"], embedded, context)), new_state

    def features(self, src, src_mask, tgt_in, return_attention: bool = False):
        """Teacher forcing: the recurrence runs step by step, the readout once over all steps
        -> (B, T, E) [, α (B, T, S)]."""
        features, weights, _ = self._teacher_forced(src, src_mask, tgt_in)
        return (features, torch.stack(weights, dim=1)) if return_attention else features

    def features_and_policy(self, src, src_mask, tgt_in):
        """`features`, and the `sampled_attention` scorer's log p(s_t|x) and H_t of each step, for the training loss
        -> (B, T, E), {"log_prob": (B, T), "entropy": (B, T)}."""
        features, _, policy = self._teacher_forced(src, src_mask, tgt_in, policy=[])
        return features, {name: torch.stack(steps, dim=1) for name, steps in zip(("log_prob", "entropy"), zip(*policy))}

    def _teacher_forced(self, src, src_mask, tgt_in, policy: list | None = None):
        """-> features (B, T, E), the steps' α [(B, S)] and `policy` with the steps' (log p(s_t|x), H_t) appended."""
        state = self.encode(src, src_mask)
        embedded = self.dropout(self.tgt_embedding(tgt_in))  # (B, T, E)
        hidden, contexts, weights = [], [], []
        for t in range(tgt_in.shape[1]):
            hidden.append(state["hidden"])  # s_{t-1}
            context, step_weights, state = self._step(state, embedded[:, t], policy)
            contexts.append(context)
            weights.append(step_weights)
        features = self.readout(torch.stack(hidden, dim=1), embedded, torch.stack(contexts, dim=1))  # (B, T, E)
        return features, weights, policy

    def attention_maps(self, src, src_mask, tgt_in, head: int | None = None) -> dict[str, torch.Tensor]:
        """The alignment α for a teacher-forced target: {"alignment": (B, T, S)}."""
        return {"alignment": self.features(src, src_mask, tgt_in, return_attention=True)[1]}
