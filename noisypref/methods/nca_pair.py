"""NCA (pairwise): Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards", NeurIPS 2024.

Per pair, with implicit rewards r_w = β(lw − rw), r_l = β(ll − rl) (TRL's ``nca_pair``):
−log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l). The loss is not a function of r_w − r_l, so it takes
no γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class NCAPairConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class NCAPair(PreferenceMethod):
    name = "nca_pair"
    config_class = NCAPairConfig
    accepts_margin = False
    source = "Chen et al., NeurIPS 2024 (TRL nca_pair)"
    summary = "-log σ(r_w) - ½ log σ(-r_w) - ½ log σ(-r_l)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        return (
            -F.logsigmoid(chosen_reward)
            - 0.5 * F.logsigmoid(-chosen_reward)
            - 0.5 * F.logsigmoid(-rejected_reward)
        )
