"""SymPO: Nishimori et al., "On Symmetric Losses for Robust Policy Optimization with Noisy Preferences", 2025.

A symmetric classification loss ℓ (ℓ(u) + ℓ(−u) constant) on the DPO reward gap u = h − margin is
robust to symmetric label noise. As in the published code (nissymori/SymPO,
``alignment/train/loss.py`` and ``SymPOTrainer`` in ``alignment/train/trainers.py``; defaults from
``alignment/config/loss/sympo.yaml``), ``loss_type`` chooses ℓ(u):

* ``sigmoid`` (default): σ(−u)            * ``ramp``: clamp(1 − u, 0, 1)
* ``symmetric_ramp``: clamp(½ − ½u, 0, 1) * ``unhinged``: 1 − u
* ``square``: (u − 1)²                    * ``hinge``: max(0, 1 − u)

(only the first four are symmetric; the published code offers all six). ``clip`` clamps each
implicit reward to [−clip_value, clip_value] before the gap is formed (off by default). A function
of the gap: takes a γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.checks import check_bool, check_choice, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards

SYMMETRIC_LOSSES = ("sigmoid", "ramp", "symmetric_ramp", "unhinged", "square", "hinge")


@dataclass(frozen=True)
class SymPOConfig(SequenceOptions):
    beta: float = 0.1
    loss_type: str = "sigmoid"
    clip: bool = False
    clip_value: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_choice("loss_type", self.loss_type, SYMMETRIC_LOSSES)
        check_bool("clip", self.clip)
        check_positive("clip_value", self.clip_value)


@register
class SymPO(PreferenceMethod):
    name = "sympo"
    config_class = SymPOConfig
    source = "Nishimori et al. 2025; nissymori/SymPO"
    summary = "symmetric loss ℓ(h), default ℓ(u) = σ(-u)"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = implicit_rewards(logps, self.config.beta)
        if self.config.clip:
            limit = self.config.clip_value
            chosen, rejected = chosen.clamp(-limit, limit), rejected.clamp(-limit, limit)
        return chosen, rejected

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        u = gap_minus_margin
        loss_type = self.config.loss_type
        if loss_type == "sigmoid":
            return torch.sigmoid(-u)
        if loss_type == "ramp":
            return (1 - u).clamp(0, 1)
        if loss_type == "symmetric_ramp":
            return (0.5 - 0.5 * u).clamp(0, 1)
        if loss_type == "unhinged":
            return 1 - u
        if loss_type == "square":
            return (u - 1) ** 2
        return torch.relu(1 - u)
