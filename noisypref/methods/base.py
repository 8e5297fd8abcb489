"""What every preference method shares: the per-pair inputs, the output, the registry.

A method turns per-pair sequence log-probs into a per-pair loss. Every method here is written as
``loss = pair_loss(reward_gap - target_margin)``; the target margin is a constant of the method
(zero for DPO, γ for SimPO, a length penalty for R-DPO) unless a ``MarginEstimator`` is attached,
in which case the γ-PO margin of Sun et al. (2025) replaces it pair by pair (DESIGN §3.1).

This package imports nothing from the rest of noisypref but the leaf modules (`noisypref.checks`, the
value checks; `noisypref.collectives`) and never sees text, files or models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from noisypref.checks import check_bool, check_choice, check_in_range, check_non_negative, check_positive  # noqa: F401 (plugins import them here)
from noisypref.checks import check_number as check_finite  # noqa: F401 (docs/api.md, "Moved")
from noisypref.methods.margins import MarginEstimator


@dataclass(frozen=True)
class PairLogps:
    """Per-pair sequence log-probs, each a 1-D tensor with one entry per pair.

    ``policy_*`` and ``reference_*`` are summed over response tokens; ``*_length`` is the number
    of response tokens. Reference log-probs are ``None`` for reference-free methods.

    Optional per-token summaries, ``None`` unless the engine fills them; a method option that
    needs one raises ``ValueError`` naming it (``require``):

    * ``*_shared`` (LD-DPO, ``ld_alpha``): the log-prob summed over the first
      ``min(|yw|, |yl|)`` response tokens of the pair only, for the policy and the reference.
    * ``chosen_weight_log`` / ``rejected_weight_log`` (WPO, ``use_weighting``): for the policy,
      ``(1/|y|) Σ_t [log π(y_t | x, y_<t) − log Σ_v π(v | x, y_<t)²]`` over the response tokens,
      detached; the WPO weight of a pair is ``exp(chosen_weight_log + rejected_weight_log)``.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    chosen_length: torch.Tensor
    rejected_length: torch.Tensor
    reference_chosen: torch.Tensor | None = None
    reference_rejected: torch.Tensor | None = None
    policy_chosen_shared: torch.Tensor | None = None
    policy_rejected_shared: torch.Tensor | None = None
    reference_chosen_shared: torch.Tensor | None = None
    reference_rejected_shared: torch.Tensor | None = None
    chosen_weight_log: torch.Tensor | None = None
    rejected_weight_log: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.policy_chosen.shape
        if len(shape) != 1:
            raise ValueError(
                f"PairLogps.policy_chosen must be 1-D (one value per pair); got shape {tuple(shape)}"
            )
        for field_ in dataclasses.fields(self)[1:]:
            name = field_.name
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"PairLogps.{name} has shape {tuple(value.shape)}; every field must have the shape "
                    f"of policy_chosen, {tuple(shape)}"
                )

    @property
    def has_reference(self) -> bool:
        return self.reference_chosen is not None and self.reference_rejected is not None

    def require(self, names: tuple[str, ...], option: str) -> None:
        """Raise ``ValueError`` naming the first of ``names`` that is missing, and the option needing it."""
        for name in names:
            if getattr(self, name) is None:
                raise ValueError(
                    f"{option} needs PairLogps.{name}, which is None; the engine must fill it "
                    f"(see the PairLogps docstring for what it holds)"
                )


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


# A hyperparameter added to an existing method after release: the run-id code leaves it out of a
# run's id while it equals its default, so existing studies keep their ids.
SINCE_0_2 = {"since": "0.2"}

SHARED_PREFIX_FIELDS = (
    "policy_chosen_shared",
    "policy_rejected_shared",
    "reference_chosen_shared",
    "reference_rejected_shared",
)
WEIGHT_FIELDS = ("chosen_weight_log", "rejected_weight_log")


@dataclass(frozen=True)
class SequenceOptions:
    """How sequence log-probs enter a reference-based method (TRL's option names).

    * ``length_normalize``: divide every log-prob (policy and reference) by its response length
      before the rewards are formed — TRL's ``ipo`` and ``sigmoid_norm``, and the published γ-DPO
      code's ``average_log_prob=self.length_norm``. Off = the papers' equations.
    * ``ld_alpha`` (LD-DPO, Liu et al. 2024, "Length Desensitization in DPO", eq. 6): each log-prob
      becomes ``shared + ld_alpha·(total − shared)``, ``shared`` the sum over the first
      ``min(|yw|, |yl|)`` response tokens; applied before ``length_normalize``, as in TRL.
    * ``use_weighting`` (WPO, Zhou et al. 2024, eq. 2): each pair's loss is multiplied by the
      detached weight ``exp(chosen_weight_log + rejected_weight_log)``.
    """

    length_normalize: bool = field(default=False, kw_only=True, metadata=SINCE_0_2)
    ld_alpha: float | None = field(default=None, kw_only=True, metadata=SINCE_0_2)
    use_weighting: bool = field(default=False, kw_only=True, metadata=SINCE_0_2)

    def __post_init__(self) -> None:
        check_bool("length_normalize", self.length_normalize)
        check_bool("use_weighting", self.use_weighting)
        if self.ld_alpha is not None:
            check_in_range("ld_alpha", self.ld_alpha, 0.0, 1.0, high_inclusive=True)


def sequence_logps(logps: PairLogps, options: SequenceOptions) -> PairLogps:
    """``logps`` with ``ld_alpha`` then ``length_normalize`` applied (see ``SequenceOptions``)."""
    if options.ld_alpha is not None:
        logps.require(SHARED_PREFIX_FIELDS, "ld_alpha")
        alpha = options.ld_alpha

        def desensitised(total: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
            return shared + alpha * (total - shared)

        logps = dataclasses.replace(
            logps,
            policy_chosen=desensitised(logps.policy_chosen, logps.policy_chosen_shared),
            policy_rejected=desensitised(logps.policy_rejected, logps.policy_rejected_shared),
            reference_chosen=desensitised(logps.reference_chosen, logps.reference_chosen_shared),
            reference_rejected=desensitised(logps.reference_rejected, logps.reference_rejected_shared),
        )
    if options.length_normalize:
        chosen_length = logps.chosen_length.clamp(min=1).to(logps.policy_chosen.dtype)
        rejected_length = logps.rejected_length.clamp(min=1).to(logps.policy_chosen.dtype)
        logps = dataclasses.replace(
            logps,
            policy_chosen=logps.policy_chosen / chosen_length,
            policy_rejected=logps.policy_rejected / rejected_length,
            reference_chosen=logps.reference_chosen / chosen_length,
            reference_rejected=logps.reference_rejected / rejected_length,
        )
    return logps


class PreferenceMethod:
    """A built method: hyperparameters, optional margin estimator, and any batch-level state.

    Subclasses set ``name``, ``config_class``, ``requires_reference`` and implement
    ``rewards`` and ``pair_loss``; they override ``constant_margin`` or ``reduce`` where the
    method needs it. Two declarations describe a method to the studies that compare it:
    ``base_method`` names the method this one is with a margin estimator attached (γ-DPO: DPO),
    ``base_hyperparameter_names`` maps its hyperparameters to the base's names where they differ
    (γ-SimPO's ``gamma0`` is SimPO's ``gamma``); ``flip_rate_hyperparameters`` names the
    hyperparameters that are an assumed flip rate ε (cDPO's ``label_smoothing``), which a study may
    set to the run's realised flip rate. A loss that is not a function of ``reward_gap − target_margin`` overrides
    ``per_pair_loss`` instead and sets ``accepts_margin = False`` (a margin estimator is refused).
    A config that inherits ``SequenceOptions`` gets its options applied before ``rewards``.
    Calling the object runs one batch.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    requires_reference: ClassVar[bool] = True
    accepts_margin: ClassVar[bool] = True
    source: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    base_method: ClassVar[str | None] = None
    base_hyperparameter_names: ClassVar[dict[str, str]] = {}
    flip_rate_hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, margin_estimator: MarginEstimator | None = None, seed: int = 0) -> None:
        if margin_estimator is not None and not self.accepts_margin:
            raise ValueError(
                f"method {self.name!r} is not a function of reward gap minus target margin; "
                "it takes no margin estimator"
            )
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

    def per_pair_loss(
        self,
        chosen_reward: torch.Tensor,
        rejected_reward: torch.Tensor,
        target_margin: torch.Tensor,
        logps: PairLogps,
    ) -> torch.Tensor:
        """Per-pair loss; by default ``pair_loss(reward_gap - target_margin)``."""
        return self.pair_loss(chosen_reward - rejected_reward - target_margin)

    def constant_margin(self, logps: PairLogps) -> torch.Tensor:
        """The method's own target margin per pair (zero unless the method says otherwise)."""
        return torch.zeros_like(logps.policy_chosen)

    def reduce(self, loss: torch.Tensor, output: MethodOutput) -> torch.Tensor:
        """The scalar objective of a batch."""
        return loss.mean()

    def optional_fields(self) -> frozenset[str]:
        """The optional ``PairLogps`` fields this method reads (the engine computes those, and only those)."""
        options = self.config if isinstance(self.config, SequenceOptions) else None
        fields: set[str] = set()
        if options is not None and options.ld_alpha is not None:
            fields.update(SHARED_PREFIX_FIELDS)
        if options is not None and options.use_weighting:
            fields.update(WEIGHT_FIELDS)
        return frozenset(fields)

    # --- the shared flow --------------------------------------------------------------------
    def __call__(self, logps: PairLogps) -> MethodOutput:
        if self.requires_reference and not logps.has_reference:
            raise ValueError(f"method {self.name!r} needs reference log-probs; PairLogps has none")
        options = self.config if isinstance(self.config, SequenceOptions) else None
        if options is not None:
            logps = sequence_logps(logps, options)
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
        loss = self.per_pair_loss(chosen_reward, rejected_reward, target_margin, logps)
        if options is not None and options.use_weighting:
            # WPO (Zhou et al. 2024, eq. 2): weight = π(yw|x)·π(yl|x), each a per-token geometric mean
            # aligned by the sum of squared token probabilities, detached.
            logps.require(WEIGHT_FIELDS, "use_weighting")
            weight = torch.exp(logps.chosen_weight_log + logps.rejected_weight_log).detach()
            loss = loss * weight
            diagnostics["wpo_weight"] = weight
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
