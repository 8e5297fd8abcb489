"""SFT term: the negative log-likelihood of the chosen response per token (TRL's ``sft`` loss type).

Per pair −lw/|yw|; the batch objective is TRL's token mean −Σ lw / Σ |yw| (the per-pair mean
weights every pair equally instead). Meant as a term of ``combined`` (DPO + λ·SFT); on its own it is
supervised fine-tuning on the chosen responses. No reference model, no γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.methods.base import MethodOutput, PairLogps, PreferenceMethod, register


@dataclass(frozen=True)
class SFTConfig:
    pass


@register
class SFT(PreferenceMethod):
    name = "sft"
    config_class = SFTConfig
    requires_reference = False
    accepts_margin = False
    source = "TRL sft loss type"
    summary = "-lw/|yw| (batch: -Σ lw / Σ |yw|)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-likelihoods of chosen and rejected."""
        self._chosen_length = logps.chosen_length.clamp(min=1).to(logps.policy_chosen.dtype)
        rejected_length = logps.rejected_length.clamp(min=1).to(logps.policy_chosen.dtype)
        return logps.policy_chosen / self._chosen_length, logps.policy_rejected / rejected_length

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        return -chosen_reward

    def reduce(self, loss: torch.Tensor, output: MethodOutput) -> torch.Tensor:
        # The token mean over the batch: each pair's per-token NLL weighted by its length.
        return (loss * self._chosen_length).sum() / self._chosen_length.sum()
