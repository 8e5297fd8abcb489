"""IPO: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences", 2023, eq. 17.

``beta`` plays IPO's τ: the loss is (h/β − 1/(2β))² with h = β·[(lw − rw) − (ll − rl)], i.e.
(Δ − 1/(2τ))² on the summed log-ratio gap Δ, as the paper's eq. 17 is written. TRL's ``ipo`` differs:
it divides each log-ratio by its completion length first (TRL's comment says the IPO authors
confirmed that their reported results used this form); ``length_normalize: true`` gives TRL's form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.dpo import implicit_rewards


@dataclass(frozen=True)
class IPOConfig(SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)


@register
class IPO(PreferenceMethod):
    name = "ipo"
    config_class = IPOConfig
    source = "Azar et al. 2023"
    summary = "(h/β - 1/(2β))², β playing IPO's τ"

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_rewards(logps, self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        beta = self.config.beta
        return (gap_minus_margin / beta - 1 / (2 * beta)) ** 2
