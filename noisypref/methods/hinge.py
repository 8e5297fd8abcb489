"""Hinge loss (SLiC): Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", 2023."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class HingeConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class Hinge(PreferenceMethod):
    name = "hinge"
    config_class = HingeConfig
    source = "Zhao et al. 2023"
    summary = "max(0, 1 - h)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return torch.relu(1 - gap_minus_margin)
