"""APO-down: D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions", 2024, eq. 8.

For chosen outputs worse than the model's own: σ(r_w) + 1 − σ(r_w − r_l), r = β·log π/π_ref
(TRL's ``apo_down``). The first term anchors r_w alone: no γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class APODownConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class APODown(PreferenceMethod):
    name = "apo_down"
    config_class = APODownConfig
    accepts_margin = False
    source = "D'Oosterlinck et al. 2024 (TRL apo_down)"
    summary = "σ(r_w) + 1 - σ(r_w - r_l)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        return torch.sigmoid(chosen_reward) + 1 - torch.sigmoid(chosen_reward - rejected_reward)
