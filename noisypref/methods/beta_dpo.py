"""β-DPO: Wu et al., "β-DPO: Direct Preference Optimization with Dynamic β", NeurIPS 2024, eqs. 7–9.

Per training batch, with discrepancies M_i (see ``discrepancy``):
  1. running mean M0 and spread σ of M are updated with momentum (eq. 9), the current batch
     included;
  2. β-guided filtering keeps ``keep_fraction`` of the batch, drawn without replacement with
     probability ∝ exp(−(M_i − M0)²/(2σ²)) (eq. 8) — the published code computes this mask but
     never applies it; here it is applied;
  3. β_b = β0·(1 + α·(mean of kept M_i − M0)) (eq. 7), floored at ``min_beta_ratio``·β0;
  4. the objective is the DPO loss with β_b, averaged over the kept pairs.
In evaluation mode nothing is updated or filtered and β0 is used.

Names against the published code (junkangwu/beta-DPO, ``trainers.py`` ``preference_loss`` and
``update_and_sync_tensor_mean``; ``config/loss/dpo.yaml``): ``alpha`` = ``a``, ``keep_fraction`` =
1 − ``mode_weight``, ``momentum`` = 1 − 0.1 (``gamma=0.9``), ``min_beta_ratio``·β0 = the clamp 1e-3
(equal at β0 = 0.1). The defaults of the three options below match the published code; the other
values give noisypref's behaviour before 0.2:

* ``discrepancy``: ``"log_ratio"`` — M_i = (lw − rw) − (ll − rl), the raw log-ratio gap, so ``alpha``
  is the published ``a``; ``"reward"`` — M_i = β0·[(lw − rw) − (ll − rl)] (then α = a/β0).
* ``kept_count``: ``"floor"`` keeps ⌊ρ·B⌋ pairs (``int(...)`` in the code; at least one);
  ``"ceil"`` keeps ⌈ρ·B⌉.
* ``statistics_start``: ``"zero"`` — M0 and σ start at 0 and the first batch moves them by
  1 − momentum; ``"first_batch"`` — they start at the first batch's mean and spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from noisypref.checks import check_choice, check_in_range, check_non_negative, check_positive
from noisypref.methods.base import (
    MethodOutput,
    PairLogps,
    PreferenceMethod,
    SequenceOptions,
    register,
    sequence_logps,
)
from noisypref.methods.margins import MarginEstimator


@dataclass(frozen=True)
class BetaDPOConfig(SequenceOptions):
    beta: float = 0.1
    alpha: float = 0.5
    keep_fraction: float = 0.8
    momentum: float = 0.9
    min_beta_ratio: float = 0.01
    # Not marked since-0.2: their defaults (the published code's) change what a beta_dpo run computes,
    # so its run id must change too, or a finished run of 0.1 would be taken for a run of today.
    discrepancy: str = "log_ratio"
    kept_count: str = "floor"
    statistics_start: str = "zero"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_non_negative("alpha", self.alpha)
        check_in_range("keep_fraction", self.keep_fraction, 0.0, 1.0, high_inclusive=True)
        if self.keep_fraction == 0:
            raise ValueError("keep_fraction = 0 is invalid: expected a number in (0, 1]")
        check_in_range("momentum", self.momentum, 0.0, 1.0)
        check_in_range("min_beta_ratio", self.min_beta_ratio, 0.0, 1.0, high_inclusive=True)
        check_choice("discrepancy", self.discrepancy, ("log_ratio", "reward"))
        check_choice("kept_count", self.kept_count, ("floor", "ceil"))
        check_choice("statistics_start", self.statistics_start, ("zero", "first_batch"))


@register
class BetaDPO(PreferenceMethod):
    name = "beta_dpo"
    config_class = BetaDPOConfig
    source = "Wu et al., NeurIPS 2024"
    summary = "batch-adaptive β_b = β0(1 + α(M̄_b - M0)) with Gaussian-weighted filtering of the batch"

    def __init__(
        self, config: BetaDPOConfig, margin_estimator: MarginEstimator | None = None, seed: int = 0
    ) -> None:
        super().__init__(config, margin_estimator, seed)
        self.running_mean = 0.0
        self.running_std = 0.0
        self.initialised = config.statistics_start == "zero"
        self.generator = torch.Generator().manual_seed(seed)
        self._batch_beta = config.beta
        self._kept: torch.Tensor | None = None

    def __call__(self, logps: PairLogps) -> MethodOutput:
        beta0 = self.config.beta
        prepared = sequence_logps(logps, self.config)  # the flow of super().__call__ prepares them again
        log_ratio_gap = (prepared.policy_chosen - prepared.reference_chosen) - (
            prepared.policy_rejected - prepared.reference_rejected
        )
        scale = beta0 if self.config.discrepancy == "reward" else 1.0
        discrepancy = scale * log_ratio_gap.detach().double().cpu()
        if not self.training or not torch.isfinite(discrepancy).all():
            # Evaluation, or a non-finite batch (which the engine drops or fails): no statistics update.
            self._batch_beta, self._kept = beta0, None
            return super().__call__(logps)
        batch_std = discrepancy.std().item() if discrepancy.numel() > 1 else 0.0
        if self.initialised:
            momentum = self.config.momentum
            self.running_mean = momentum * self.running_mean + (1 - momentum) * discrepancy.mean().item()
            self.running_std = momentum * self.running_std + (1 - momentum) * batch_std
        else:
            self.running_mean, self.running_std, self.initialised = discrepancy.mean().item(), batch_std, True
        spread = max(self.running_std, 1e-8)
        weights = torch.exp(-((discrepancy - self.running_mean) ** 2) / (2 * spread**2)).clamp(min=1e-300)
        rounding = math.floor if self.config.kept_count == "floor" else math.ceil
        kept_count = max(1, rounding(self.config.keep_fraction * discrepancy.numel()))
        kept_index = torch.multinomial(weights, kept_count, replacement=False, generator=self.generator)
        kept = torch.zeros(discrepancy.numel(), dtype=torch.bool)
        kept[kept_index] = True
        adapted = beta0 * (1 + self.config.alpha * (discrepancy[kept].mean().item() - self.running_mean))
        self._batch_beta = max(adapted, self.config.min_beta_ratio * beta0)
        self._kept = kept.to(logps.policy_chosen.device)
        output = super().__call__(logps)
        output.diagnostics["beta"] = torch.full_like(output.reward_gap, self._batch_beta)
        output.diagnostics["kept"] = self._kept.to(output.reward_gap.dtype)
        return output

    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self._batch_beta * (logps.policy_chosen - logps.reference_chosen)
        rejected = self._batch_beta * (logps.policy_rejected - logps.reference_rejected)
        return chosen, rejected

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(gap_minus_margin)

    def reduce(self, loss: torch.Tensor, output: MethodOutput) -> torch.Tensor:
        if self._kept is None:
            return loss.mean()
        return loss[self._kept].mean()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            running_mean=self.running_mean,
            running_std=self.running_std,
            initialised=self.initialised,
            generator=self.generator.get_state(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.running_mean = state["running_mean"]
        self.running_std = state["running_std"]
        self.initialised = state["initialised"]
        self.generator.set_state(state["generator"])
