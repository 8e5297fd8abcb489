"""``method_intervals``: every method's own mean with a hierarchical bootstrap interval, at each rate and
on the AUC: the bands of the figures and the ranking. Bounded metrics keep their intervals inside their
bounds (percentiles of means of bounded values cannot leave them). The comparisons of methods with the
baseline are ``noisypref.reports.findings``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisypref.reports.bootstrap import Part, hierarchical_bootstrap
from noisypref.reports.declarations import MetricDeclaration, MetricDeclarations
from noisypref.reports.findings import AUC, VALUE, Cells, ItemsLookup, auc_weights, no_items
from noisypref.reports.statistics import rate_axis
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, REALISED_RATE

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
INTERVAL_COLUMNS = [
    *CONDITION_KEYS, METHOD, "metric", "quantity", RATE, REALISED_RATE, "n_seeds", "mean",
    "ci_low", "ci_high", "ci_method", "seeds_with_items", "dominant_source",
]  # fmt: skip


def _value_part(cells: Cells, seed, rate, weight: float) -> Part:
    run_items = cells.run_items(seed, rate)
    items = None if run_items is None else run_items.to_numpy(dtype=float)
    return Part(weight, cells.value[(seed, rate)], items)


def _bootstrap_method(seeds: int, with_items: int) -> str:
    if seeds < 2:
        return "none"
    if with_items == seeds:
        return "hierarchical bootstrap"
    if with_items == 0:
        return "seed bootstrap"
    return f"hierarchical bootstrap ({with_items} of {seeds} seeds with items)"


def method_intervals(
    runs: pd.DataFrame,
    metrics: list[str],
    declarations: MetricDeclarations,
    items: ItemsLookup = no_items,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> pd.DataFrame:
    """Each method's mean over seeds with a hierarchical bootstrap interval, at each rate and on the
    AUC (over the rates the method has, seeds with every one of them). Columns ``INTERVAL_COLUMNS``;
    with one seed there is no interval (NaN, ``ci_method`` "none")."""
    rows = []
    for condition, condition_runs in runs.groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        x = rate_axis(condition_runs)
        for metric in metrics:
            declaration = declarations.get(metric)
            for label, method_runs in condition_runs.groupby(METHOD, sort=True):
                cells = Cells(method_runs, metric, items)
                if not cells.value:
                    continue
                base = {**key, METHOD: label, "metric": metric}
                measured = [rate for rate in x.index if cells.seeds([rate])]
                for rate in measured:
                    parts = [[_value_part(cells, seed, rate, 1.0)] for seed in cells.seeds([rate])]
                    rows.append({**base, "quantity": VALUE, RATE: rate, REALISED_RATE: x[rate],
                                 **_interval_row(parts, resamples, declaration)})  # fmt: skip
                seeds = cells.seeds(measured)
                if len(measured) >= 2 and seeds and x[measured].iloc[-1] > x[measured].iloc[0]:
                    weights = auc_weights(x[measured])
                    parts = [[_value_part(cells, seed, rate, weights[rate]) for rate in measured] for seed in seeds]
                    rows.append({**base, "quantity": AUC, RATE: np.nan, REALISED_RATE: np.nan,
                                 **_interval_row(parts, resamples, declaration)})  # fmt: skip
    return pd.DataFrame(rows, columns=INTERVAL_COLUMNS)


def _interval_row(parts: list[list[Part]], resamples: int, declaration: MetricDeclaration) -> dict:
    interval = hierarchical_bootstrap(parts, resamples, BOOTSTRAP_SEED)
    return {
        "n_seeds": interval.seeds,
        "mean": interval.estimate,
        "ci_low": declaration.clip(interval.low),
        "ci_high": declaration.clip(interval.high),
        "ci_method": _bootstrap_method(interval.seeds, interval.seeds_with_items),
        "seeds_with_items": interval.seeds_with_items,
        "dominant_source": interval.dominant_source if interval.seeds >= 2 else "",
    }
