"""cDPO (conservative DPO, label smoothing): Mitchell, "A note on DPO with noisy preferences", 2023."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_in_range, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class CDPOConfig(SequenceOptions):
    beta: float = 0.1
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_in_range("label_smoothing", self.label_smoothing, 0.0, 0.5)


@register
class ConservativeDPO(PreferenceMethod):
    name = "cdpo"
    config_class = CDPOConfig
    source = "Mitchell 2023"
    summary = "-(1-ε) log σ(h) - ε log σ(-h)"
    flip_rate_hyperparameters = ("label_smoothing",)  # ε, the assumed flip rate

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        epsilon = self.config.label_smoothing
        return -(1 - epsilon) * F.logsigmoid(gap_minus_margin) - epsilon * F.logsigmoid(-gap_minus_margin)
