"""Hard attention for the RNN decoder: each target step reads one source position's encoder state, h_s.

The position is drawn from the distribution of a soft scorer's energies (additive, Bahdanau et al. 2015:
e_j = vᵀ tanh(W q + U h_j), the `energy` module), α = softmax(e) over the real source tokens:

    s ~ Categorical(α)   in training                  s = argmax_j α_j   in eval (deterministic decoding)
    c = h_s,             weights = onehot(s)          (B, S): so attention maps stay maps, one-hot

The choice of s is not differentiable; two ways to train the energies:

    HardAttention        `hard`: the score-function estimator (REINFORCE) of Xu et al. 2015 ("Show, Attend
                         and Tell", 4.1), unbiased, with a moving-average baseline and an entropy bonus
    GumbelHardAttention  `hard_gumbel`: straight-through Gumbel-softmax (Jang et al. 2017), biased, low variance

Both keep the scorers' interface (translate/models/attention.py): project_keys(memory), and
forward(query, keys, memory, mask, position) -> (context (B, M), weights (B, S)).
"""

import torch
from torch import nn


def masked_log_softmax(scores, allowed):
    """log α = log softmax(e) (B, S), fp32, −inf where not allowed."""
    return torch.log_softmax(scores.float().masked_fill(~allowed, float("-inf")), dim=-1)


def log_distribution(energy: nn.Module, query, keys, mask, position):
    """log α (B, S) from an energy module's scores, and the allowed positions (B, S) bool."""
    scores, allowed = energy.scores(query, keys, mask, position)
    return masked_log_softmax(scores, allowed), allowed


def entropy(log_alpha, allowed):
    """H[α] = −Σ_j α_j log α_j over the allowed positions (B,), from log α (B, S) (0·log 0 = 0 elsewhere)."""
    return -(log_alpha.exp() * log_alpha.masked_fill(~allowed, 0.0)).sum(-1)


def read(memory, position):
    """The encoder states h_s at one position per sentence: memory (B, S, M), position (B,) -> (B, M)."""
    return memory.gather(1, position.view(-1, 1, 1).expand(-1, 1, memory.shape[-1])).squeeze(1)


def one_hot(position, like):
    """onehot(s) (B, S) in `like`'s dtype."""
    return torch.zeros_like(like).scatter_(1, position.unsqueeze(1), 1.0)


class HardAttention(nn.Module):
    """Stochastic hard attention trained by REINFORCE (Xu et al. 2015, 4.1):

        ∂L/∂W ≈ Σ_n [∂log p(y|s_n,x)/∂W + λ_r (log p(y|s_n,x) − b) ∂log p(s_n|x)/∂W + λ_e ∂H[s_n]/∂W]

    The decoder sums, over the target steps of a sentence, log p(s_t|x) = log α_t[s_t] and H_t = −Σ_j α_tj log α_tj
    (`sample`); `surrogate` turns them into the term added to the summed training loss, whose gradient is the
    estimator's (minimising it follows the gradient above upward):

        − λ_r Σ_n stopgrad(log p(y_n|x_n,s_n) − T_n b) Σ_t log p(s_nt|x_n)  −  λ_e Σ_n Σ_t H_nt

    b is a per-target-token moving average of log p(y|x,s) (so a sentence of T_n tokens is compared with T_n b,
    not with the batch's mean sentence length): b ← decay·b + (1 − decay)·Σ_n log p(y_n) / Σ_n T_n, the first
    batch setting it.  It is a buffer, saved with the weights, so a resumed run continues exactly.
    """

    reinforce = True  # AttentionRNN calls `sample` in training and hands the loss its sums

    def __init__(self, energy: nn.Module, reinforce_weight: float = 1.0, entropy_weight: float = 0.01, decay=0.9):
        super().__init__()
        self.energy = energy  # the soft scorer whose energies e_j give α
        self.reinforce_weight, self.entropy_weight, self.decay = reinforce_weight, entropy_weight, decay
        self.register_buffer("baseline", torch.zeros(()))  # b, per target token
        self.register_buffer("baseline_updates", torch.zeros((), dtype=torch.long))

    def project_keys(self, memory):
        return self.energy.project_keys(memory)

    def sample(self, query, keys, memory, mask, position=None):
        """-> context h_s (B, M), weights onehot(s) (B, S), log p(s|x) (B,), H[α] (B,); s sampled in training,
        argmax in eval."""
        log_alpha, allowed = log_distribution(self.energy, query, keys, mask, position)
        if self.training:
            chosen = torch.multinomial(log_alpha.exp(), 1).squeeze(1)  # (B,)
        else:
            chosen = log_alpha.argmax(-1)
        log_prob = log_alpha.gather(1, chosen.unsqueeze(1)).squeeze(1)
        context = read(memory, chosen)
        return context, one_hot(chosen, memory[:, :, 0]), log_prob, entropy(log_alpha, allowed)

    def forward(self, query, keys, memory, mask, position=None):
        return self.sample(query, keys, memory, mask, position)[:2]

    def surrogate(self, log_likelihood, lengths, log_prob, entropy):
        """The REINFORCE and entropy terms to add to the summed loss, and one update of the baseline.

        log_likelihood (B,): log p(y|x,s) of each sentence (no gradient flows through it), lengths (B,) its
        target tokens, log_prob (B,) Σ_t log p(s_t|x), entropy (B,) Σ_t H_t -> a 0-dim tensor.
        """
        with torch.no_grad():
            reward, lengths = log_likelihood.detach().float(), lengths.to(torch.float32)
            per_token = reward.sum() / lengths.sum().clamp(min=1)
            first = self.baseline_updates == 0
            baseline = torch.where(first, per_token, self.baseline)  # the batch's own mean, on the first batch only
            advantage = reward - lengths * baseline
            self.baseline.copy_(torch.where(first, per_token, torch.lerp(per_token, self.baseline, self.decay)))
            self.baseline_updates += 1
        reinforce = (advantage * log_prob.float()).sum()
        return -(self.reinforce_weight * reinforce + self.entropy_weight * entropy.float().sum())


class GumbelHardAttention(nn.Module):
    """Straight-through Gumbel-softmax (Jang et al. 2017; Maddison et al. 2017) over the energies' α:

        g_j = −log(−log u_j),  u_j ~ U(0, 1)        y = softmax((log α + g) / τ)        s = argmax_j y_j
        forward:  c = h_s, weights onehot(s)         backward:  ∂c/∂y_j = h_j,  through the softmax y

    (s is a sample of Categorical(α)).  The gradient is biased (it is the soft relaxation's, at τ) but needs no
    reward, baseline or extra loss term; its variance is far lower than REINFORCE's (docs/attention_kinds.md).
    In eval: s = argmax_j α_j, no noise.
    """

    reinforce = False

    def __init__(self, energy: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.energy, self.temperature = energy, temperature

    def project_keys(self, memory):
        return self.energy.project_keys(memory)

    def forward(self, query, keys, memory, mask, position=None):
        log_alpha, _ = log_distribution(self.energy, query, keys, mask, position)
        if not self.training:
            chosen = log_alpha.argmax(-1)
            return read(memory, chosen), one_hot(chosen, memory[:, :, 0])
        gumbel = -torch.empty_like(log_alpha).exponential_().log()  # −log E, E ~ Exp(1): Gumbel(0, 1)
        soft = torch.softmax((log_alpha + gumbel) / self.temperature, dim=-1)  # 0 where not allowed
        chosen = soft.argmax(-1)
        through = (soft - soft.detach()).to(memory.dtype)  # 0 in value, the softmax's gradient in backward
        context = read(memory, chosen) + torch.bmm(through.unsqueeze(1), memory).squeeze(1)
        return context, one_hot(chosen, memory[:, :, 0]) + through
