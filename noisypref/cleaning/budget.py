"""Budgets: how many of a judge's scored pairs are flagged (`cleaning.base.select_flagged` applies one)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noisypref.checks import Invalid, interval, number

BUDGET_KINDS = ("estimated", "realised_rate", "fraction", "threshold")
# Budgets written as a word; the other two are mappings {fraction: x} / {threshold: x}.
WORD_BUDGETS = ("estimated", "realised_rate")


@dataclass(frozen=True)
class Budget:
    """How many pairs a judge flags.

    - ``estimated``: the judge's own estimate of the share of mislabelled pairs (`JudgeScores.estimated_rate`),
      or its own flag set where it decides by itself (the ensemble's vote; the oracle's flipped pairs);
    - ``realised_rate``: the share the noise model actually flipped: the judge is told how many pairs are
      wrong, not which (a known-rate reference, like cDPO / rDPO with ε set to the realised rate);
    - ``fraction``: the ``round(value · N)`` most suspect pairs;
    - ``threshold``: every pair whose score exceeds ``value``.
    """

    kind: str = "estimated"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind {self.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if self.kind in WORD_BUDGETS and self.value is not None:
            raise ValueError(f"budget {self.kind!r} takes no value")
        value_checks = {"fraction": interval(0, 1, high_inclusive=True), "threshold": number()}
        if self.kind in value_checks:
            try:
                value_checks[self.kind](self.value)
            except Invalid as error:
                raise ValueError(f"budget {self.kind} {self.value!r} must be {error.expected}") from None

    @classmethod
    def parse(cls, value: Any) -> Budget:
        """A budget from its study-file form: ``estimated``, ``realised_rate``, a number (a fraction),
        ``{fraction: x}`` or ``{threshold: x}``. ``ValueError`` says what is allowed."""
        allowed = "'estimated', 'realised_rate', a fraction in [0, 1], {fraction: x} or {threshold: x}"
        if isinstance(value, Budget):
            return value
        if isinstance(value, str):
            if value not in WORD_BUDGETS:
                raise ValueError(f"budget {value!r} is not allowed; give {allowed}")
            return cls(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return cls("fraction", float(value))
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, number),) = value.items()
            if kind in ("fraction", "threshold"):
                if isinstance(number, numbers.Real) and not isinstance(number, bool):
                    number = float(number)
                return cls(kind, number)
        raise ValueError(f"budget {value!r} is not allowed; give {allowed}")

    def to_plain(self) -> str | dict[str, float]:
        """The canonical study-file / run-config form (parse(to_plain()) == self)."""
        return self.kind if self.kind in WORD_BUDGETS else {self.kind: self.value}

    def describe(self) -> str:
        if self.kind == "estimated":
            return "the judge's estimate"
        if self.kind == "realised_rate":
            return "the realised flip rate"
        if self.kind == "fraction":
            return f"top {100 * self.value:g}%"
        return f"score > {self.value:g}"
