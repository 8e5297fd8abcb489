"""APO-zero: D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions", 2024, eq. 7.

For chosen outputs better than the model's own: 1 − σ(r_w) + σ(r_l), r = β·log π/π_ref (TRL's
``apo_zero``). Each reward is anchored separately: no γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class APOZeroConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class APOZero(PreferenceMethod):
    name = "apo_zero"
    config_class = APOZeroConfig
    accepts_margin = False
    source = "D'Oosterlinck et al. 2024 (TRL apo_zero)"
    summary = "1 - σ(r_w) + σ(r_l)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        return 1 - torch.sigmoid(chosen_reward) + torch.sigmoid(rejected_reward)
