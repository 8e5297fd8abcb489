"""SPPO (hard labels): Wu et al., "Self-Play Preference Optimization for Language Model Alignment", 2024, eq. 4.7.

With the win probability P set to 1 for the chosen and 0 for the rejected response (TRL's
``sppo_hard``; the paper estimates P with PairRM): (log π_w/π_ref,w − 1/(2β))² + (log π_l/π_ref,l + 1/(2β))².
Each response is regressed on its own target, not on the gap: no γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class SPPOHardConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class SPPOHard(PreferenceMethod):
    name = "sppo_hard"
    config_class = SPPOHardConfig
    accepts_margin = False
    source = "Wu et al. 2024 (TRL sppo_hard)"
    summary = "(log π_w/π_ref - 1/(2β))² + (log π_l/π_ref + 1/(2β))²"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        beta = self.config.beta
        return (chosen_reward / beta - 0.5 / beta) ** 2 + (rejected_reward / beta + 0.5 / beta) ** 2
