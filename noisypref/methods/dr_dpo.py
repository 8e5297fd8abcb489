"""Dr.DPO: Wu et al., "Towards Robust Alignment of Language Models: Distributionally Robustifying DPO", 2024, eq. 10.

The batch objective is −β′·log mean_i exp(−ℓ_i/β′) with ℓ_i the per-pair DPO loss: pairs with a large
loss (likely flipped) are down-weighted; β′ → ∞ recovers DPO's mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_positive
from noisypref.methods.base import MethodOutput, PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class DrDPOConfig(SequenceOptions):
    beta: float = 0.1
    beta_prime: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_positive("beta_prime", self.beta_prime)


@register
class DrDPO(PreferenceMethod):
    name = "dr_dpo"
    config_class = DrDPOConfig
    source = "Wu et al. 2024"
    summary = "-β' log mean_batch exp(-ℓ_i/β'), ℓ_i the DPO loss"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(gap_minus_margin)

    def reduce(self, loss: torch.Tensor, output: MethodOutput) -> torch.Tensor:
        beta_prime = self.config.beta_prime
        return -beta_prime * (torch.logsumexp(-loss / beta_prime, dim=0) - math.log(loss.numel()))
