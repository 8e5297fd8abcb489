"""AOT (unpaired): Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport", NeurIPS 2024.

Dominance of the chosen log-ratios' distribution over the rejected ones' (TRL's ``aot_unpaired``):
with u = sort_batch(lw − rw) − sort_batch(ll − rl), −(1 − ε) log σ(βu) − ε log σ(−βu). As for ``aot``,
entry k of ``loss`` belongs to the k-th smallest values, so no γ margin estimator and no WPO weights.
"""

from __future__ import annotations

import torch

from noisypref.methods.aot import AOT, AOTConfig, smoothed_sigmoid_loss
from noisypref.methods.base import register


@register
class AOTUnpaired(AOT):
    name = "aot_unpaired"
    config_class = AOTConfig
    source = "Melnyk et al., NeurIPS 2024 (TRL aot_unpaired)"
    summary = "-log σ(β(sort(lw - rw) - sort(ll - rl))), over the batch"

    def per_pair_loss(self, chosen_reward, rejected_reward, target_margin, logps):
        chosen_sorted = torch.sort(logps.policy_chosen - logps.reference_chosen).values
        rejected_sorted = torch.sort(logps.policy_rejected - logps.reference_rejected).values
        return smoothed_sigmoid_loss(
            self.config.beta * (chosen_sorted - rejected_sorted), self.config.label_smoothing
        )
