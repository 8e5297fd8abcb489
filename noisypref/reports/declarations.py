"""What the report knows about a metric and a study, read from files the benchmark writes.

- ``DIR/metrics.json``: each metric's label, direction (higher, lower or none), bounds, whether it is
  measured against the (noisy) training labels, whether it is a diagnostic and whether its values are
  comparable across methods (``comparable``; absent in older files: true). The report reads
  direction and bounds from here and never guesses them from a metric's name; without the file
  every metric has direction "none" (differences are shown, no better/worse verdict is given).
- The ``report:`` section of ``DIR/study.yaml`` (`noisypref.report_settings.ReportSettings`, the one
  definition the study schema checks): the primary metrics of the findings, the baseline method label
  and declared with/without pairs (``pairs: [{method: LABEL, base: LABEL}]``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from noisypref.report_settings import ReportSettings

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
DIRECTIONS = ("higher", "lower", "none")


@dataclass(frozen=True)
class MetricDeclaration:
    name: str
    label: str
    direction: str = "none"
    low: float | None = None
    high: float | None = None
    noisy_labels: bool = False
    diagnostic: bool = False
    description: str = ""
    comparable: bool = True  # two methods' values measure the same thing (not a loss of each one's own function)

    @property
    def ranked(self) -> bool:
        """Whether a verdict (better/worse) or a "best" may be given: a direction, comparable values, and
        not a diagnostic."""
        return self.direction != "none" and not self.diagnostic and self.comparable

    def sign(self) -> float:
        """+1 where higher is better, −1 where lower is better, 0 without a direction."""
        return {"higher": 1.0, "lower": -1.0}.get(self.direction, 0.0)

    def clip(self, value: float) -> float:
        """``value`` moved inside the bounds (NaN stays NaN)."""
        if math.isnan(value):
            return value
        if self.low is not None:
            value = max(value, self.low)
        if self.high is not None:
            value = min(value, self.high)
        return value

    @property
    def span(self) -> float | None:
        """high − low where both bounds are set: the bound of a difference of two values."""
        if self.low is None or self.high is None:
            return None
        return self.high - self.low


@dataclass
class MetricDeclarations:
    """The declarations of a study folder; ``found`` is false where it has no metrics.json."""

    metrics: dict[str, MetricDeclaration] = field(default_factory=dict)
    found: bool = False

    def get(self, name: str) -> MetricDeclaration:
        """The declaration of ``name``; an undeclared metric has direction "none" and no bounds."""
        if name in self.metrics:
            return self.metrics[name]
        return MetricDeclaration(name=name, label=name.replace("_", " "))


def read_metric_declarations(study_dir: Path) -> MetricDeclarations:
    """Parse DIR/metrics.json; an absent file gives no declarations (and ``found`` false).

    A malformed file is an error naming the field; the report must not silently rank by a
    direction it could not read.
    """
    path = Path(study_dir) / METRICS_FILE
    if not path.is_file():
        return MetricDeclarations()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    entries = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected an object with a 'metrics' object")
    metrics = {name: _declaration(path, name, entry) for name, entry in entries.items()}
    return MetricDeclarations(metrics=metrics, found=True)


def _declaration(path: Path, name: str, entry) -> MetricDeclaration:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: metrics.{name} must be an object")
    direction = entry.get("direction", "none")
    if direction not in DIRECTIONS:
        raise ValueError(f"{path}: metrics.{name}.direction is {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    bounds = entry.get("bounds")
    low = high = None
    if bounds is not None:
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ValueError(f"{path}: metrics.{name}.bounds must be [low, high] (null for an open side) or null")
        low, high = (None if bound is None else float(bound) for bound in bounds)
        if low is not None and high is not None and low > high:
            raise ValueError(f"{path}: metrics.{name}.bounds {bounds} has low above high")
    return MetricDeclaration(
        name=name,
        label=str(entry.get("label") or name.replace("_", " ")),
        direction=direction,
        low=low,
        high=high,
        noisy_labels=bool(entry.get("noisy_labels", False)),
        diagnostic=bool(entry.get("diagnostic", False)),
        description=str(entry.get("description", "")),
        comparable=_flag(path, name, entry, "comparable", default=True),
    )


def _flag(path: Path, name: str, entry: dict, key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{path}: metrics.{name}.{key} is {value!r}; allowed: true or false")
    return value


def read_report_settings(study_yaml: str | None) -> ReportSettings:
    """The ``report:`` section of the resolved study file, or the defaults where it has none; a pair
    declared twice is compared once."""
    if not study_yaml:
        return ReportSettings()
    try:
        document = yaml.safe_load(study_yaml)
    except yaml.YAMLError as error:
        logger.warning("study.yaml is not YAML (%s): the report uses its default settings", error)
        return ReportSettings()
    section = document.get("report") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        return ReportSettings()
    try:
        settings = ReportSettings.from_dict(section, "study.yaml: report")
    except ValueError as error:  # a hand-edited or older study file: the report still comes out
        logger.warning("study.yaml's report section is not valid (%s): the report uses its default settings", error)
        return ReportSettings()
    return dataclasses.replace(settings, pairs=tuple(dict.fromkeys(settings.pairs)))
