"""Combined objectives: a weighted sum of registered methods, as TRL combines ``loss_type`` lists with
``loss_weights`` (e.g. DPO + λ·NLL on the chosen response: ``[sigmoid, sft]`` with ``[1, λ]``).

``terms`` is a list of mappings, each ``{method: NAME, weight: W, ...NAME's hyperparameters}``; the
objective is Σ W·objective_NAME and the per-pair loss Σ W·loss_NAME. The reported rewards, reward
gap and margin are those of the first term; each term's diagnostics appear as ``term{k}/{key}``.
A combined method takes no margin estimator of its own: put a γ method (``gamma_dpo``, …) among
its terms instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from noisypref.methods.base import METHODS, MethodOutput, PairLogps, PreferenceMethod, build, register
from noisypref.methods.margins import MarginEstimator

DEFAULT_TERMS = ({"method": "dpo", "weight": 1.0}, {"method": "sft", "weight": 1.0})


@dataclass(frozen=True)
class CombinedConfig:
    terms: tuple[dict[str, Any], ...] = DEFAULT_TERMS

    def __post_init__(self) -> None:
        if not isinstance(self.terms, (list, tuple)) or not self.terms:
            raise ValueError(f"terms = {self.terms!r} is invalid: expected a non-empty list of terms")
        terms = []
        for index, term in enumerate(self.terms):
            if not isinstance(term, dict) or "method" not in term:
                raise ValueError(
                    f"terms[{index}] = {term!r} is invalid: expected a mapping with 'method' and 'weight'"
                )
            name, weight = term["method"], term.get("weight", 1.0)
            if name == "combined" or name not in METHODS:
                allowed = ", ".join(sorted(set(METHODS) - {"combined"}))
                raise ValueError(f"terms[{index}].method = {name!r} is invalid: expected one of {allowed}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"terms[{index}].weight = {weight!r} is invalid: expected a finite number")
            terms.append({**term, "weight": float(weight)})
        object.__setattr__(self, "terms", tuple(terms))
        for term in self.terms:
            build_term(term, seed=0)  # validates each term's hyperparameters


def build_term(term: dict[str, Any], seed: int) -> PreferenceMethod:
    hyperparameters = {key: value for key, value in term.items() if key not in ("method", "weight")}
    return build(term["method"], seed=seed, **hyperparameters)


@register
class Combined(PreferenceMethod):
    name = "combined"
    config_class = CombinedConfig
    accepts_margin = False
    requires_reference = True
    source = "TRL loss_type lists with loss_weights"
    summary = "Σ_k w_k·loss_k over a list of methods (e.g. dpo + λ·sft)"

    def __init__(
        self, config: CombinedConfig, margin_estimator: MarginEstimator | None = None, seed: int = 0
    ) -> None:
        super().__init__(config, margin_estimator, seed)
        self.terms = [build_term(term, seed) for term in config.terms]
        self.weights = [term["weight"] for term in config.terms]
        # The class says True (its default terms include dpo); a built method needs a reference if any term does.
        self.requires_reference = any(term.requires_reference for term in self.terms)

    def __call__(self, logps: PairLogps) -> MethodOutput:
        outputs = [term(logps) for term in self.terms]
        loss = sum(weight * output.loss for weight, output in zip(self.weights, outputs, strict=True))
        objective = sum(
            weight * output.objective for weight, output in zip(self.weights, outputs, strict=True)
        )
        first = outputs[0]
        diagnostics = {
            f"term{index}/{key}": value
            for index, output in enumerate(outputs)
            for key, value in output.diagnostics.items()
        }
        return MethodOutput(
            loss=loss,
            objective=objective,
            reward_gap=first.reward_gap,
            target_margin=first.target_margin,
            chosen_reward=first.chosen_reward,
            rejected_reward=first.rejected_reward,
            diagnostics=diagnostics,
        )

    def optional_fields(self) -> frozenset[str]:
        return frozenset().union(*(term.optional_fields() for term in self.terms))

    def train(self, mode: bool = True) -> Combined:
        super().train(mode)
        for term in self.terms:
            term.train(mode)
        return self

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["terms"] = [term.state_dict() for term in self.terms]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for term, term_state in zip(self.terms, state["terms"], strict=True):
            term.load_state_dict(term_state)
