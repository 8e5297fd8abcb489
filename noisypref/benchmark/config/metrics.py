"""Metric declarations: what each metric of a result means, said once where it is computed.

Each module that computes a metric declares it (``declare("heldout_accuracy", ...)`` beside the
code): its label, its direction (``higher`` or ``lower`` is better, or ``none``), its bounds, whether
it is measured against the (noisy) training labels, whether it is a diagnostic (shown, never
ranked), and whether its values are comparable across methods (a loss of each method's own function,
or a constant of the reference policy, is not: no paired test, no ranking). `noisypref collect` writes the declarations of a study's metrics to ``DIR/metrics.json``;
the reports read direction and bounds from there instead of guessing from a name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DIRECTIONS = ("higher", "lower", "none")
DECLARATIONS_VERSION = 1


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    direction: str  # "higher" / "lower": which is better; "none": neither
    bounds: tuple[float | None, float | None] | None  # (low, high), None for an open side; None: unbounded
    noisy_labels: bool  # measured against the training labels, which carry the injected flips
    diagnostic: bool  # describes the run rather than ranks methods: shown, never given a "best"
    description: str
    comparable: bool = True  # values of two methods measure the same thing: paired tests make sense

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["name"]
        values["bounds"] = list(self.bounds) if self.bounds is not None else None
        return values


METRICS: dict[str, MetricInfo] = {}


def declare(
    name: str,
    label: str,
    direction: str,
    *,
    bounds: tuple[float | None, float | None] | None = None,
    noisy_labels: bool = False,
    diagnostic: bool = False,
    description: str = "",
    comparable: bool = True,
) -> str:
    """Register a metric's meaning; returns ``name`` so a module can keep it as its constant."""
    if direction not in DIRECTIONS:
        raise ValueError(f"metric {name!r}: direction {direction!r} is not one of {DIRECTIONS}")
    info = MetricInfo(
        name, label, direction, bounds, noisy_labels, diagnostic or noisy_labels, description, comparable
    )
    if METRICS.get(name, info) != info:
        raise ValueError(f"metric {name!r} is declared twice, differently")
    METRICS[name] = info
    return name


def declarations_document(names: list[str]) -> dict[str, Any]:
    """The ``metrics.json`` of a study whose results hold ``names``; a metric nobody declared is listed
    with direction ``none`` and ``declared: false``, so that nothing downstream ranks it."""
    metrics = {}
    for name in names:
        info = METRICS.get(name)
        if info is None:
            metrics[name] = {
                "label": name,
                "direction": "none",
                "bounds": None,
                "noisy_labels": False,
                "diagnostic": True,
                "description": "not declared by the code that computed it",
                "comparable": True,
                "declared": False,
            }
        else:
            metrics[name] = {**info.to_dict(), "declared": True}
    return {"version": DECLARATIONS_VERSION, "metrics": metrics}
