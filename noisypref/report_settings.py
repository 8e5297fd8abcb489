"""What a study's report leads with: the ``report`` section of a study file, defined once.

    report:
      primary_metrics: [heldout_accuracy, gold_win_rate]   # those absent from the results are skipped
      baseline: dpo                                        # the method label the others are compared with
      pairs: [{method: gamma_dpo, base: robust_dpo}]       # with/without pairs beyond the automatic ones

The study schema checks it (`noisypref.benchmark.study.schema`, which also checks the labels against
the study's methods) and the reports read it back from a study folder's study.yaml
(`noisypref.reports.declarations.read_report_settings`). It imports no torch and nothing of the
benchmark, as the reports must not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from noisypref.checks import Invalid, text
from noisypref.settings import Section, setting

DEFAULT_PRIMARY_METRICS = ("heldout_accuracy", "gold_win_rate")
DEFAULT_BASELINE = "dpo"
PAIR_KEYS = ("method", "base")


@dataclass(frozen=True, eq=False)
class DeclaredPair(Mapping):
    """A with/without comparison the study file asks for: ``method`` minus ``base`` (method labels).
    As a mapping it is the study file's entry ``{method: LABEL, base: LABEL}``."""

    method: str
    base: str

    def __getitem__(self, key: str) -> str:
        if key not in PAIR_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(PAIR_KEYS)

    def __len__(self) -> int:
        return len(PAIR_KEYS)

    def __hash__(self) -> int:
        return hash((self.method, self.base))


def _metric_names(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(name, str) and name for name in names):
        raise Invalid("a non-empty list of metric names, e.g. [heldout_accuracy, gold_win_rate]")
    return tuple(names)


def _declared_pairs(value: Any) -> tuple[DeclaredPair, ...]:
    expected = "a list of {method: LABEL, base: LABEL} mappings, each naming two method labels of the study"
    if not isinstance(value, (list, tuple)):
        raise Invalid(expected)
    pairs = []
    for pair in value:
        if not isinstance(pair, Mapping) or set(pair) != set(PAIR_KEYS):
            raise Invalid(expected)
        if not all(isinstance(pair[key], str) and pair[key].strip() for key in PAIR_KEYS):
            raise Invalid(expected)
        pairs.append(DeclaredPair(pair["method"], pair["base"]))
    return tuple(pairs)


@dataclass(frozen=True)
class ReportSettings(Section):
    """What a study's report leads with (the ``report`` section): its primary metrics (those absent
    from the results are skipped), the method label the others are compared with, and the
    with/without pairs it compares beyond the automatic ones."""

    section = "report"

    primary_metrics: tuple[str, ...] = setting(list(DEFAULT_PRIMARY_METRICS), _metric_names)
    baseline: str = setting(DEFAULT_BASELINE, text())
    # with/without comparisons beyond the automatic ones (a method and its declared base_method): each a
    # {method: LABEL, base: LABEL} of two competitors' labels (the study schema checks them against its methods)
    pairs: tuple[DeclaredPair, ...] = setting([], _declared_pairs, since="0.2")

    def problems(self) -> list[tuple[str, Any, str]]:
        return [
            (f"pairs[{index}].base", pair.base, "a label other than the pair's method")
            for index, pair in enumerate(self.pairs)
            if pair.method == pair.base
        ]
