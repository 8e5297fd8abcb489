"""BCO (pairwise): Jung et al., "Binary Classifier Optimization for Large Language Model Alignment", 2024.

TRL's ``bco_pair``: −log σ(r_w) − log σ(−r_l) with r = β·log π/π_ref, i.e. the paper's binary
classifier loss without its running reward shift δ (the paper's eq. 8 subtracts δ from both
rewards; TRL and this module do not). Not a function of r_w − r_l: no γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class BCOPairConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class BCOPair(PreferenceMethod):
    name = "bco_pair"
    config_class = BCOPairConfig
    accepts_margin = False
    source = "Jung et al. 2024 (TRL bco_pair)"
    summary = "-log σ(r_w) - log σ(-r_l)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        return -F.logsigmoid(chosen_reward) - F.logsigmoid(-rejected_reward)
