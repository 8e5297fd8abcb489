"""α-DPO: Wu et al., "α-DPO: Adaptive Reward Margin is What Direct Preference Optimization Needs", 2024.

As in the published code (junkangwu/alpha-DPO, ``scripts/dpo_trainer.py``, loss type ``alpha-dpo``;
defaults from ``training_configs/llama-3-8b-instruct-alpha-dpo.yaml``: β 2.5, γ/β 0.6, α 0.2,
``ln: true``): with Δ_i = (lw − ll) − (rw − rl) and running mean M and spread S of Δ (momentum 0.9,
both starting at 0, updated with the current batch before use),

    loss_i = −log σ(β(lw − ll) − [β·α·(Δ_i − M)/S + γ])

— a SimPO-like gap with a detached, per-pair adaptive margin. ``gamma`` is the absolute margin
(β × the code's ``gamma_beta_ratio``, 2.5 × 0.6 = 1.5), as in ``simpo``; ``length_normalize`` (the
code's ``ln``) is on by default. The published code also updates M and S on evaluation batches and
on every rank separately after a gather; here only training batches update them. S is floored at
1e-8 (the code divides by it unguarded). A function of gap − margin: takes a γ margin estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from noisypref.checks import check_in_range, check_non_negative, check_positive
from noisypref.methods.base import PairLogps, PreferenceMethod, SequenceOptions, register
from noisypref.methods.margins import MarginEstimator


@dataclass(frozen=True)
class AlphaDPOConfig(SequenceOptions):
    beta: float = 2.5
    gamma: float = 1.5
    alpha: float = 0.2
    momentum: float = 0.9
    length_normalize: bool = field(default=True, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_non_negative("gamma", self.gamma)
        check_non_negative("alpha", self.alpha)
        check_in_range("momentum", self.momentum, 0.0, 1.0)


@register
class AlphaDPO(PreferenceMethod):
    name = "alpha_dpo"
    config_class = AlphaDPOConfig
    source = "Wu et al. 2024; junkangwu/alpha-DPO"
    summary = "-log σ(β(lw - ll) - β·α·(Δ - M)/S - γ), Δ the log-ratio gap, M, S running statistics"

    def __init__(
        self, config: AlphaDPOConfig, margin_estimator: MarginEstimator | None = None, seed: int = 0
    ) -> None:
        super().__init__(config, margin_estimator, seed)
        self.running_mean = 0.0
        self.running_std = 0.0

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        return self.config.beta * logps.policy_chosen, self.config.beta * logps.policy_rejected

    def constant_margin(self, logps: PairLogps) -> torch.Tensor:
        log_ratio_gap = (
            (logps.policy_chosen - logps.policy_rejected)
            - (logps.reference_chosen - logps.reference_rejected)
        ).detach()
        values = log_ratio_gap.double()
        if self.training and bool(torch.isfinite(values).all()):
            momentum = self.config.momentum
            batch_std = values.std().item() if values.numel() > 1 else 0.0
            self.running_mean = momentum * self.running_mean + (1 - momentum) * values.mean().item()
            self.running_std = momentum * self.running_std + (1 - momentum) * batch_std
        normalised = (log_ratio_gap - self.running_mean) / max(self.running_std, 1e-8)
        return self.config.beta * (self.config.alpha * normalised + self.config.gamma / self.config.beta)

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(gap_minus_margin)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(running_mean=self.running_mean, running_std=self.running_std)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.running_mean = state["running_mean"]
        self.running_std = state["running_std"]
