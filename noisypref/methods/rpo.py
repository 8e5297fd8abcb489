"""RPO: Pang et al., "Iterative Reasoning Preference Optimization", NeurIPS 2024, eq. 1.

DPO plus α times the per-token negative log-likelihood of the chosen response:
−log σ(h − margin) − α·lw/|yw| (with ``length_normalize`` the log-probs are already per token).
The same objective as ``combined`` with the terms dpo and sft (weight α) up to the reduction: here
every pair's NLL counts equally, TRL's ``sft`` term takes the token mean over the batch. The DPO
term is a function of the gap: takes a γ margin estimator (the NLL term is unaffected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from noisypref.checks import check_non_negative
from noisypref.methods.base import register
from noisypref.methods.dpo import DPO, DPOConfig


@dataclass(frozen=True)
class RPOConfig(DPOConfig):
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("alpha", self.alpha)


@register
class RPO(DPO):
    name = "rpo"
    config_class = RPOConfig
    source = "Pang et al., NeurIPS 2024"
    summary = "-log σ(h) - α·lw/|yw|"

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        per_token = logps.policy_chosen
        if not self.config.length_normalize:
            per_token = per_token / logps.chosen_length.clamp(min=1).to(per_token.dtype)
        return -F.logsigmoid(chosen_reward - rejected_reward - target_margin) - self.config.alpha * per_token
