"""EXO (pairwise): Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment", ICML 2024, eq. 16.

KL(p_θ ‖ p_ε) over {chosen, rejected} with p_θ = (σ(u), σ(−u)), u = h = β[(lw − rw) − (ll − rl)], and
the smoothed label p_ε = (1 − ε, ε): σ(u)(log σ(u) − log(1 − ε)) + σ(−u)(log σ(−u) − log ε), as TRL's
``exo_pair``. ε must be > 0 (the KL is undefined at 0); 1e-3 is the paper's value. A function of
the gap: takes a γ margin estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_in_range, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class EXOPairConfig(SequenceOptions):
    beta: float = 0.1
    label_smoothing: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_in_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        if self.label_smoothing == 0:
            raise ValueError("label_smoothing = 0 is invalid for exo_pair: expected a number in (0, 0.5)")


@register
class EXOPair(PreferenceMethod):
    name = "exo_pair"
    config_class = EXOPairConfig
    source = "Ji et al., ICML 2024 (TRL exo_pair)"
    summary = "σ(h)(log σ(h) - log(1-ε)) + σ(-h)(log σ(-h) - log ε)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        epsilon = self.config.label_smoothing
        log_chosen, log_rejected = F.logsigmoid(gap_minus_margin), F.logsigmoid(-gap_minus_margin)
        return torch.exp(log_chosen) * (log_chosen - math.log1p(-epsilon)) + torch.exp(log_rejected) * (
            log_rejected - math.log(epsilon)
        )
