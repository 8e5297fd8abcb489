"""Length-normalised DPO (TRL's ``sigmoid_norm``): DPO, Rafailov et al. 2023, on log-probs averaged over
response tokens: −log σ(β[(lw − rw)/|yw| − (ll − rl)/|yl|]).

It is ``dpo`` with ``length_normalize: true`` (its default here), registered under TRL's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from noisypref.methods.base import register
from noisypref.methods.dpo import DPO, DPOConfig


@dataclass(frozen=True)
class SigmoidNormConfig(DPOConfig):
    length_normalize: bool = field(default=True, kw_only=True)


@register
class SigmoidNorm(DPO):
    name = "sigmoid_norm"
    config_class = SigmoidNormConfig
    source = "Rafailov et al. 2023, length-normalised (TRL sigmoid_norm)"
    summary = "-log σ(β[(lw - rw)/|yw| - (ll - rl)/|yl|])"
