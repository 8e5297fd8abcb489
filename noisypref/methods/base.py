"""What every preference method shares: the per-pair inputs, the output, the registry.

A method turns per-pair sequence log-probs into a per-pair loss. Every method here is written as
``loss = pair_loss(reward_gap - target_margin)``; the target margin is a constant of the method
(zero for DPO, γ for SimPO, a length penalty for R-DPO) unless a ``MarginEstimator`` is attached,
in which case the γ-PO margin of Sun et al. (2025) replaces it pair by pair (DESIGN §3.1).

This package imports nothing from the rest of noisypref and never sees text, files or models.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from noisypref.methods.margins import MarginEstimator


@dataclass(frozen=True)
class PairLogps:
    """Per-pair sequence log-probs, each a 1-D tensor with one entry per pair.

    ``policy_*`` and ``reference_*`` are summed over response tokens; ``*_length`` is the number
    of response tokens. Reference log-probs are ``None`` for reference-free methods.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    chosen_length: torch.Tensor
    rejected_length: torch.Tensor
    reference_chosen: torch.Tensor | None = None
    reference_rejected: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.policy_chosen.shape
        if len(shape) != 1:
            raise ValueError(f"PairLogps.policy_chosen must be 1-D (one value per pair); got shape {tuple(shape)}")
        for name in ("policy_rejected", "chosen_length", "rejected_length", "reference_chosen", "reference_rejected"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"PairLogps.{name} has shape {tuple(value.shape)}; every field must have the shape "
                    f"of policy_chosen, {tuple(shape)}"
                )

    @property
    def has_reference(self) -> bool:
        return self.reference_chosen is not None and self.reference_rejected is not None


@dataclass
class MethodOutput:
    """What a method returns for one batch.

    ``loss`` is per pair and carries the graph; ``objective`` is the scalar the optimiser minimises
    (the mean of ``loss`` for most methods, a batch-level reduction for β-DPO and Dr.DPO). Every
    other tensor is detached: ``reward_gap`` is the gap the loss compares with ``target_margin``,
    ``chosen_reward``/``rejected_reward`` the implicit rewards.
    """

    loss: torch.Tensor
    objective: torch.Tensor
    reward_gap: torch.Tensor
    target_margin: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} = {value!r} is invalid: expected a finite number > 0")


def check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} = {value!r} is invalid: expected a finite number >= 0")


def check_in_range(name: str, value: float, low: float, high: float, *, high_inclusive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value
    ok = ok and (value <= high if high_inclusive else value < high)
    if not ok:
        closing = "]" if high_inclusive else ")"
        raise ValueError(f"{name} = {value!r} is invalid: expected a number in [{low}, {high}{closing}")


def check_finite(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{name} = {value!r} is invalid: expected a finite number")


class PreferenceMethod:
    """A built method: hyperparameters, optional margin estimator, and any batch-level state.

    Subclasses set ``name``, ``config_class``, ``requires_reference`` and implement
    ``rewards`` and ``pair_loss``; they override ``constant_margin`` or ``reduce`` where the
    method needs it. Calling the object runs one batch.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    requires_reference: ClassVar[bool] = True
    source: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, config: Any, margin_estimator: MarginEstimator | None = None, seed: int = 0) -> None:
        self.config = config
        self.margin_estimator = margin_estimator
        self.training = True

    # --- the pieces a method defines -------------------------------------------------------
    def rewards(self, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit rewards of chosen and rejected; their difference is the reward gap."""
        raise NotImplementedError

    def pair_loss(self, gap_minus_margin: torch.Tensor) -> torch.Tensor:
        """Per-pair loss as a function of ``reward_gap - target_margin``."""
        raise NotImplementedError

    def constant_margin(self, logps: PairLogps) -> torch.Tensor:
        """The method's own target margin per pair (zero unless the method says otherwise)."""
        return torch.zeros_like(logps.policy_chosen)

    def reduce(self, loss: torch.Tensor, output: MethodOutput) -> torch.Tensor:
        """The scalar objective of a batch."""
        return loss.mean()

    # --- the shared flow --------------------------------------------------------------------
    def __call__(self, logps: PairLogps) -> MethodOutput:
        if self.requires_reference and not logps.has_reference:
            raise ValueError(f"method {self.name!r} needs reference log-probs; PairLogps has none")
        chosen_reward, rejected_reward = self.rewards(logps)
        reward_gap = chosen_reward - rejected_reward
        target_margin = self.constant_margin(logps).detach()
        diagnostics: dict[str, torch.Tensor] = {}
        if self.margin_estimator is not None:
            # γ-PO (Sun et al. 2025, DESIGN §3.1): the dynamic margin replaces the constant
            # budget γ0 pair by pair, so the mean target margin is unchanged.
            gamma = self.margin_estimator(reward_gap.detach())
            target_margin = target_margin + (gamma - self.margin_estimator.gamma0)
            diagnostics["gamma"] = gamma
        loss = self.pair_loss(reward_gap - target_margin)
        output = MethodOutput(
            loss=loss,
            objective=loss.mean(),
            reward_gap=reward_gap.detach(),
            target_margin=target_margin,
            chosen_reward=chosen_reward.detach(),
            rejected_reward=rejected_reward.detach(),
            diagnostics=diagnostics,
        )
        output.objective = self.reduce(loss, output)
        return output

    # --- mode and state ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> PreferenceMethod:
        """Training mode: batch-level state updates and gaps enter the margin queue."""
        self.training = mode
        if self.margin_estimator is not None:
            self.margin_estimator.train(mode)
        return self

    def eval(self) -> PreferenceMethod:
        return self.train(False)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, "config": dataclasses.asdict(self.config)}
        if self.margin_estimator is not None:
            state["margin_estimator"] = self.margin_estimator.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of method {state.get('name')!r} cannot load into method {self.name!r}")
        if self.margin_estimator is not None and "margin_estimator" in state:
            self.margin_estimator.load_state_dict(state["margin_estimator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


METHODS: dict[str, type[PreferenceMethod]] = {}


def register(cls: type[PreferenceMethod]) -> type[PreferenceMethod]:
    """Class decorator: make a method available to ``build`` under ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(METHODS)


def hyperparameter_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters of a registered method and their defaults."""
    cls = method_class(name)
    return {f.name: f.default for f in dataclasses.fields(cls.config_class)}


def method_class(name: str) -> type[PreferenceMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(available_methods())}")
    return METHODS[name]


def build(
    name: str, margin_estimator: MarginEstimator | None = None, seed: int = 0, **hyperparameters: Any
) -> PreferenceMethod:
    """Build the method registered as ``name`` with the given hyperparameters.

    ``margin_estimator`` attaches γ-PO dynamic margins to any method (its mean margin replaces
    the method's constant margin). ``seed`` seeds the samplers of stateful methods (β-DPO's
    filter, the γ margin queue). Unknown hyperparameters raise ``ValueError`` naming them.
    """
    cls = method_class(name)
    allowed = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(hyperparameters) - allowed)
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    config = cls.config_class(**hyperparameters)
    return cls(config, margin_estimator=margin_estimator, seed=seed)

