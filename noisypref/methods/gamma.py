"""γ-DPO and γ-SimPO: Sun et al., "Robust Preference Optimization via Dynamic Target Margins", Findings of ACL 2025.

Each is its base method with a ``MarginEstimator`` attached (DESIGN §3.1): the target margin of
pair i becomes γ_i, spread from a fixed budget γ0 over a candidate set of reward gaps.
γ-DPO: −log σ(h − (γ_i − γ0)); γ-SimPO: −log σ(β(lw/|yw| − ll/|yl|) − γ_i).

``gamma_dpo_published`` is γ-DPO with the published code's defaults (sunjie279/gammaPO,
``scripts/xpo_trainer.py``, loss type ``gm-dpo``): log-probs averaged over response tokens
(``length_normalize: true``, the code's ``average_log_prob=self.length_norm``) and the published
mirror-descent schedule (``solver: published_mirror_descent``). ``gamma_dpo`` keeps the paper's
equations: summed log-probs and the exact solver. γ-SimPO is length-normalised by definition.
The published code's known defects (DESIGN §3.1: queue seeded with random numbers, evaluation
batches queued, per-device queue) are not reproduced by either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from noisypref.checks import check_positive
from noisypref.methods.base import PairLogps, SequenceOptions, register
from noisypref.methods.dpo import DPO
from noisypref.methods.margins import MarginEstimator
from noisypref.methods.simpo import SimPO


@dataclass(frozen=True)
class MarginHyperparameters:
    """The γ-PO margin settings shared by every γ method (published values: τ 10, Q 2048, K 256)."""

    gamma0: float = 1.0
    tau: float = 10.0
    queue_size: int = 2048
    candidates: int = 256
    solver: str = "exact"
    iterations: int = 20

    def margin_estimator(self, seed: int) -> MarginEstimator:
        return MarginEstimator(
            gamma0=self.gamma0,
            tau=self.tau,
            queue_size=self.queue_size,
            candidates=self.candidates,
            solver=self.solver,
            iterations=self.iterations,
            seed=seed,
        )


@dataclass(frozen=True)
class GammaDPOConfig(MarginHyperparameters, SequenceOptions):
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        self.margin_estimator(seed=0)  # validates the margin settings


@dataclass(frozen=True)
class GammaSimPOConfig(MarginHyperparameters):
    beta: float = 2.0

    def __post_init__(self) -> None:
        check_positive("beta", self.beta)
        self.margin_estimator(seed=0)


@register
class GammaDPO(DPO):
    name = "gamma_dpo"
    config_class = GammaDPOConfig
    source = "Sun et al., Findings of ACL 2025"
    summary = "-log σ(h - (γ_i - γ0)), γ_i the dynamic target margin"
    base_method = "dpo"  # τ → ∞: every γ_i = γ0, DPO's loss

    def __init__(
        self, config: GammaDPOConfig, margin_estimator: MarginEstimator | None = None, seed: int = 0
    ) -> None:
        super().__init__(config, margin_estimator or config.margin_estimator(seed))


@dataclass(frozen=True)
class PublishedGammaDPOConfig(GammaDPOConfig):
    length_normalize: bool = field(default=True, kw_only=True)
    solver: str = "published_mirror_descent"


@register
class PublishedGammaDPO(GammaDPO):
    name = "gamma_dpo_published"
    config_class = PublishedGammaDPOConfig
    source = "Sun et al., Findings of ACL 2025; sunjie279/gammaPO scripts/xpo_trainer.py"
    summary = "gamma_dpo with the published defaults: length-averaged log-probs, published mirror descent"


@register
class GammaSimPO(SimPO):
    name = "gamma_simpo"
    config_class = GammaSimPOConfig
    source = "Sun et al., Findings of ACL 2025"
    summary = "-log σ(β(lw/|yw| - ll/|yl|) - γ_i), γ_i the dynamic target margin"
    base_method = "simpo"  # τ → ∞: every γ_i = γ0, SimPO's loss with margin γ = γ0
    base_hyperparameter_names = {"gamma0": "gamma"}

    def __init__(
        self, config: GammaSimPOConfig, margin_estimator: MarginEstimator | None = None, seed: int = 0
    ) -> None:
        super().__init__(config, margin_estimator or config.margin_estimator(seed))

    def constant_margin(self, logps: PairLogps) -> torch.Tensor:
        return torch.full_like(logps.policy_chosen, self.config.gamma0)
