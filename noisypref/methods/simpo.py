"""SimPO: Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward", NeurIPS 2024, eq. 6."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_non_negative, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, register


@dataclass(frozen=True)
class SimPOConfig:
    beta: float = 2.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        check_positive("beta", self.beta)
        check_non_negative("gamma", self.gamma)


def length_normalised_rewards(logps: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """β·log π(y|x)/|y| of chosen and rejected (SimPO eq. 4)."""
    chosen = beta * logps.policy_chosen / logps.chosen_length.clamp(min=1)
    rejected = beta * logps.policy_rejected / logps.rejected_length.clamp(min=1)
    return chosen, rejected


@register
class SimPO(PreferenceMethod):
    name = "simpo"
    config_class = SimPOConfig
    requires_reference = False
    source = "Meng et al., NeurIPS 2024"
    summary = "-log σ(β(lw/|yw| - ll/|yl|) - γ), no reference model"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return length_normalised_rewards(logps, self.config.beta)

    def constant_margin(self, logps: PairLogps) -> torch.Tensor:
        return torch.full_like(logps.policy_chosen, self.config.gamma)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(gap_minus_margin)
