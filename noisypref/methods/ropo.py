"""ROPO: Liang et al., "Robust Preference Optimization through Iterative Alignment...", ICML 2025.

Only the loss part: (4α/(1+α)²)·[−log σ(h) + α·σ(−h)]; the paper's sample filtering is not included.
The loss and α = 14 are those of the public code that ships ROPO as a baseline (nissymori/SymPO,
``alignment/train/trainers.py`` ``ROPOTrainer`` and ``alignment/config/loss/ropo.yaml``); ROPO's own
code is not public.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class ROPOConfig(SequenceOptions):
    beta: float = 0.1
    alpha: float = 14.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_positive("alpha", self.alpha)


@register
class ROPO(PreferenceMethod):
    name = "ropo"
    config_class = ROPOConfig
    source = "Liang et al., ICML 2025"
    summary = "(4α/(1+α)²)·[-log σ(h) + α σ(-h)] (loss part only)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        alpha = self.config.alpha
        scale = 4 * alpha / (1 + alpha) ** 2
        return scale * (-F.logsigmoid(gap_minus_margin) + alpha * torch.sigmoid(-gap_minus_margin))
