"""DPO: Rafailov et al., "Direct Preference Optimization", NeurIPS 2023, eq. 7."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register


@dataclass(frozen=True)
class DPOConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


def implicit_rewards(logps: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """β·log π/π_ref of chosen and rejected (DPO eq. 5); their difference is h."""
    chosen = beta * (logps.policy_chosen - logps.reference_chosen)
    rejected = beta * (logps.policy_rejected - logps.reference_rejected)
    return chosen, rejected


@register
class DPO(PreferenceMethod):
    name = "dpo"
    config_class = DPOConfig
    source = "Rafailov et al. 2023"
    summary = "-log σ(h), h = β[(lw - rw) - (ll - rl)]"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(gap_minus_margin)
