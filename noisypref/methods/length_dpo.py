"""R-DPO: Park et al., "Disentangling Length from Quality in Direct Preference Optimization", 2024, eq. 9.

The length penalty α(|yw| − |yl|) is a per-pair target margin: −log σ(h − α(|yw| − |yl|)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_non_negative, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class LengthDPOConfig(SequenceOptions):
    beta: float = 0.1
    alpha: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_non_negative("alpha", self.alpha)


@register
class LengthDPO(PreferenceMethod):
    name = "length_dpo"
    config_class = LengthDPOConfig
    source = "Park et al. 2024"
    summary = "-log σ(h - α(|yw| - |yl|)), lengths in tokens"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def constant_margin(self, logps: PairLogps) -> torch.Tensor:
        length_difference = (logps.chosen_length - logps.rejected_length).to(logps.policy_chosen.dtype)
        return self.config.alpha * length_difference

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(gap_minus_margin)
