"""DiscoPOP (log-ratio modulated loss): Chris Lu et al., "Discovering Preference Optimization Algorithms
with and for Large Language Models", NeurIPS 2024, eq. 5.

With u = h = β[(lw − rw) − (ll − rl)] and the mixing weight m = σ(u/τ_d):
(1 − m)·(−log σ(u)) + m·exp(−u), as TRL's ``discopop``; τ_d = 0.05 is the paper's value. A
function of the gap: takes a γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class DiscoPOPConfig(SequenceOptions):
    beta: float = 0.1
    discopop_tau: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_positive("discopop_tau", self.discopop_tau)


@register
class DiscoPOP(PreferenceMethod):
    name = "discopop"
    config_class = DiscoPOPConfig
    source = "Lu et al., NeurIPS 2024 (TRL discopop)"
    summary = "(1 - σ(h/τ))·(-log σ(h)) + σ(h/τ)·exp(-h)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        scaled = gap_minus_margin / self.config.discopop_tau
        # 1 − σ(s) = σ(−s), and σ(s)·e^{−u} = exp(log σ(s) − u): equal to TRL's form, finite for every finite u.
        logistic = torch.sigmoid(-scaled) * -F.logsigmoid(gap_minus_margin)
        return logistic + torch.exp(F.logsigmoid(scaled) - gap_minus_margin)
