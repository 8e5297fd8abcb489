"""AOT (paired): Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport", NeurIPS 2024.

Stochastic dominance of the policy's log-ratio gaps over the reference's, through the sorted batch
(TRL's ``aot``): with u = sort_batch(lw − ll) − sort_batch(rw − rl),
−(1 − ε) log σ(βu) − ε log σ(−βu). Entry k of ``loss`` belongs to the k-th smallest gaps, not to
pair k: the loss is a batch-level quantity, so it takes no γ margin estimator and no WPO weights
(TRL refuses ``use_weighting`` for it too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_in_range, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class AOTConfig(SequenceOptions):
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_in_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        if self.use_weighting:
            raise ValueError(
                "use_weighting = True is invalid for aot: its loss sorts the batch, so there are no per-pair weights"
            )


def smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@register
class AOT(PreferenceMethod):
    name = "aot"
    config_class = AOTConfig
    accepts_margin = False
    source = "Melnyk et al., NeurIPS 2024 (TRL aot)"
    summary = "-log σ(β(sort(lw - ll) - sort(rw - rl))), over the batch"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        policy_sorted = torch.sort(logps.policy_chosen - logps.policy_rejected).values
        reference_sorted = torch.sort(logps.reference_chosen - logps.reference_rejected).values
        return smoothed_sigmoid_loss(
            self.config.beta * (policy_sorted - reference_sorted), self.config.label_smoothing
        )
