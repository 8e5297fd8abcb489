"""The findings of a study: each method against the baseline, with intervals, p-values and a verdict.

For every condition, primary metric and method other than the baseline, at each target flip rate and
on the robustness AUC (``statistics.curve_runs`` runs; rate 0 shared by every noise model):

- ``mean_difference``: mean over seeds of (method − baseline), the two runs of a seed sharing their
  flipped pairs and their evaluation items;
- ``ci_low``/``ci_high``: the 95 % paired hierarchical bootstrap interval (``bootstrap``), resampling
  seeds and, where both runs wrote ``items.parquet``, the item ids within the seed jointly; seeds only
  otherwise (``ci_method`` says which);
- ``t_pvalue``: the paired t-test over seeds (``scipy.stats.ttest_rel``), two-sided; ``t_pvalue_holm``:
  Holm-adjusted over the rows of one metric in one condition (all methods, rates and the AUC);
- ``verdict``: *too few seeds* below ``T_TEST_MIN_PAIRS`` paired seeds; else *better* / *worse* when the
  Holm-adjusted p is below ``ALPHA`` and the interval excludes 0 on that side (direction from
  metrics.json); *differs* for a metric without a declared direction; *no detectable difference*
  otherwise.

``method_intervals`` gives every method's own mean with a hierarchical bootstrap interval (at each rate
and on the AUC): the bands of the figures and the ranking. Bounded metrics keep their intervals inside
their bounds (percentiles of means of bounded values cannot leave them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from noisypref.reports.bootstrap import Part, hierarchical_bootstrap
from noisypref.reports.declarations import MetricDeclaration, MetricDeclarations
from noisypref.reports.statistics import T_TEST_MIN_PAIRS, holm_adjust, rate_axis
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, REALISED_RATE, SEED

logger = logging.getLogger(__name__)

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ITEM_MEAN_TOLERANCE = 1e-6
AUC = "auc"
VALUE = "value"
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW, DIFFERS = (
    "better", "worse", "no detectable difference", "too few seeds", "differs",
)  # fmt: skip

FINDINGS_COLUMNS = [
    *CONDITION_KEYS, "metric", METHOD, "baseline", "quantity", RATE, REALISED_RATE, "n_pairs",
    "method_mean", "baseline_mean", "mean_difference", "ci_low", "ci_high", "ci_method",
    "seeds_with_items", "seed_variance", "item_variance", "dominant_source",
    "t_pvalue", "t_pvalue_holm", "verdict", "note",
]  # fmt: skip
INTERVAL_COLUMNS = [
    *CONDITION_KEYS, METHOD, "metric", "quantity", RATE, REALISED_RATE, "n_seeds", "mean",
    "ci_low", "ci_high", "ci_method", "seeds_with_items", "dominant_source",
]  # fmt: skip

# items(run_id, metric) -> per-item values indexed by item id, or None where the run has none.
ItemsLookup = Callable[[str, str], "pd.Series | None"]


def no_items(run_id: str, metric: str) -> None:
    return None


def auc_weights(x: pd.Series) -> pd.Series:
    """Weights w_r with ``Σ w_r·y_r = trapezoid(y, x) / (x_max − x_min)``, the normalised AUC of
    ``statistics.summarise``: (x_{r+1} − x_{r−1}) / 2 inside, half the end gaps at the ends."""
    values = x.to_numpy(dtype=float)
    gaps = np.diff(values)
    weights = np.zeros_like(values)
    weights[:-1] += gaps / 2
    weights[1:] += gaps / 2
    return pd.Series(weights / (values[-1] - values[0]), index=x.index)


class _Cells:
    """One method's runs of one condition: run id and value of a metric by (seed, rate)."""

    def __init__(self, runs: pd.DataFrame, metric: str, items: ItemsLookup):
        runs = runs.dropna(subset=[metric])
        if runs.duplicated([SEED, RATE]).any():
            logger.warning("several runs share a seed and rate for one method; the first one's %s is used", metric)
            runs = runs.drop_duplicates([SEED, RATE])
        self.metric = metric
        self.items = items
        self.value = {(seed, rate): float(v) for seed, rate, v in zip(runs[SEED], runs[RATE], runs[metric])}
        self.run_id = dict(zip(zip(runs[SEED], runs[RATE]), runs["run_id"]))

    def seeds(self, rates) -> list:
        """The seeds with a value at every one of ``rates``, sorted."""
        found = {seed for seed, _ in self.value}
        return sorted(seed for seed in found if all((seed, rate) in self.value for rate in rates))

    def run_items(self, seed, rate) -> pd.Series | None:
        """The run's per-item values, or None where they are absent or do not average to its value."""
        run_items = self.items(self.run_id[(seed, rate)], self.metric)
        if run_items is None or run_items.empty:
            return None
        if abs(float(run_items.mean()) - self.value[(seed, rate)]) > ITEM_MEAN_TOLERANCE:
            logger.warning(
                "run %s: the mean of its %s items (%.6g) is not its value (%.6g); its items are not used",
                self.run_id[(seed, rate)], self.metric, float(run_items.mean()), self.value[(seed, rate)],
            )  # fmt: skip
            return None
        return run_items


def _difference_part(method: _Cells, baseline: _Cells, seed, rate, weight: float) -> Part:
    point = method.value[(seed, rate)] - baseline.value[(seed, rate)]
    method_items, baseline_items = method.run_items(seed, rate), baseline.run_items(seed, rate)
    if method_items is None or baseline_items is None:
        return Part(weight, point)
    if not method_items.index.equals(baseline_items.index):
        common = method_items.index.intersection(baseline_items.index)
        if len(common) != len(method_items) or len(common) != len(baseline_items):
            logger.warning("seed %s, rate %s: the two runs evaluated different items; seeds only", seed, rate)
            return Part(weight, point)
        baseline_items = baseline_items.reindex(method_items.index)
    return Part(weight, point, (method_items - baseline_items).to_numpy(dtype=float))


def _value_part(cells: _Cells, seed, rate, weight: float) -> Part:
    run_items = cells.run_items(seed, rate)
    items = None if run_items is None else run_items.to_numpy(dtype=float)
    return Part(weight, cells.value[(seed, rate)], items)


def _ci_method(seeds: int, with_items: int) -> str:
    if seeds < 2:
        return "none"
    if with_items == seeds:
        return "hierarchical bootstrap"
    if with_items == 0:
        return "seed bootstrap"
    return f"hierarchical bootstrap ({with_items} of {seeds} seeds with items)"


def findings(
    runs: pd.DataFrame,
    metrics: list[str],
    baseline: str,
    declarations: MetricDeclarations,
    items: ItemsLookup = no_items,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> pd.DataFrame:
    """Each method label against ``baseline`` per condition, metric, rate and on the AUC.

    ``runs``: the succeeded runs with shared clean runs (``statistics.curve_runs``). One row per
    (condition, metric, method, quantity[, rate]); columns ``FINDINGS_COLUMNS``.
    """
    rows = []
    for condition, condition_runs in runs.groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        x = rate_axis(condition_runs)
        baseline_runs = condition_runs[condition_runs[METHOD] == baseline]
        if baseline_runs.empty:
            continue
        for metric in metrics:
            declaration = declarations.get(metric)
            baseline_cells = _Cells(baseline_runs, metric, items)
            if not baseline_cells.value:
                continue
            family = []
            for label, method_runs in condition_runs.groupby(METHOD, sort=True):
                if label == baseline:
                    continue
                method_cells = _Cells(method_runs, metric, items)
                if not method_cells.value:
                    continue
                base = {**key, "metric": metric, METHOD: label, "baseline": baseline}
                measured = [rate for rate in x.index
                            if method_cells.seeds([rate]) and baseline_cells.seeds([rate])]  # fmt: skip
                for rate in measured:
                    seeds = sorted(set(method_cells.seeds([rate])) & set(baseline_cells.seeds([rate])))
                    parts = [[_difference_part(method_cells, baseline_cells, seed, rate, 1.0)] for seed in seeds]
                    means = (
                        np.mean([method_cells.value[(s, rate)] for s in seeds]),
                        np.mean([baseline_cells.value[(s, rate)] for s in seeds]),
                    )
                    row = _comparison_row(parts, means, resamples, declaration)
                    family.append({**base, "quantity": VALUE, RATE: rate, REALISED_RATE: x[rate], **row})
                if len(measured) >= 2 and x[measured].iloc[-1] > x[measured].iloc[0]:
                    weights = auc_weights(x[measured])
                    seeds = sorted(set(method_cells.seeds(measured)) & set(baseline_cells.seeds(measured)))
                    parts = [
                        [_difference_part(method_cells, baseline_cells, seed, rate, weights[rate]) for rate in measured]
                        for seed in seeds
                    ]
                    means = tuple(
                        float(np.mean([sum(weights[r] * cells.value[(s, r)] for r in measured) for s in seeds]))
                        if seeds else np.nan
                        for cells in (method_cells, baseline_cells)
                    )  # fmt: skip
                    row = _comparison_row(parts, means, resamples, declaration)
                    span = f"AUC over {100 * measured[0]:.4g}–{100 * measured[-1]:.4g} %"
                    row["note"] = "; ".join(filter(None, [span, row["note"]]))
                    family.append({**base, "quantity": AUC, RATE: np.nan, REALISED_RATE: np.nan, **row})
            adjusted = holm_adjust([row["t_pvalue"] for row in family])
            for row, value in zip(family, adjusted):
                row["t_pvalue_holm"] = value
                row["verdict"] = verdict(row, declaration)
            rows.extend(family)
    return pd.DataFrame(rows, columns=FINDINGS_COLUMNS)


def _comparison_row(parts: list[list[Part]], means: tuple, resamples: int, declaration: MetricDeclaration) -> dict:
    differences = np.array([sum(part.weight * part.point for part in seed) for seed in parts], dtype=float)
    n = len(differences)
    interval = hierarchical_bootstrap(parts, resamples, BOOTSTRAP_SEED)
    low, high = interval.low, interval.high
    if declaration.span is not None:  # a difference of two bounded values lies in [−span, span]
        low, high = max(low, -declaration.span), min(high, declaration.span)
    notes = []
    pvalue = np.nan
    if n < T_TEST_MIN_PAIRS:
        notes.append(f"{n} paired seed(s): too few for a t-test (needs {T_TEST_MIN_PAIRS})")
    elif not differences.std(ddof=1) > 0:
        notes.append("constant differences: t-test undefined")
    else:
        pvalue = float(stats.ttest_1samp(differences, 0.0).pvalue)
    return {
        "n_pairs": n,
        "method_mean": float(means[0]),
        "baseline_mean": float(means[1]),
        "mean_difference": interval.estimate,
        "ci_low": low,
        "ci_high": high,
        "ci_method": _ci_method(n, interval.seeds_with_items),
        "seeds_with_items": interval.seeds_with_items,
        "seed_variance": interval.seed_variance,
        "item_variance": interval.item_variance,
        "dominant_source": interval.dominant_source if n >= 2 else "",
        "t_pvalue": pvalue,
        "t_pvalue_holm": np.nan,
        "verdict": "",
        "note": "; ".join(notes),
    }


def verdict(row: dict, declaration: MetricDeclaration) -> str:
    """The word of one comparison; see the module docstring."""
    if row["n_pairs"] < T_TEST_MIN_PAIRS:
        return TOO_FEW
    significant = row["t_pvalue_holm"] < ALPHA  # False for NaN
    if significant and row["ci_low"] > 0:
        side = 1.0
    elif significant and row["ci_high"] < 0:
        side = -1.0
    else:
        return NO_DIFFERENCE
    if declaration.direction == "none" or declaration.diagnostic:
        return DIFFERS
    return BETTER if side == declaration.sign() else WORSE


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
                cells = _Cells(method_runs, metric, items)
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
        "ci_method": _ci_method(interval.seeds, interval.seeds_with_items),
        "seeds_with_items": interval.seeds_with_items,
        "dominant_source": interval.dominant_source if interval.seeds >= 2 else "",
    }


def ranking(
    intervals: pd.DataFrame, found: pd.DataFrame, metric: str, condition: tuple, baseline: str,
    declaration: MetricDeclaration,
) -> pd.DataFrame:  # fmt: skip
    """Methods of one condition ordered by AUC (best first for a declared direction), with the AUC
    interval, the verdict of the AUC against the baseline and the breaking point: the lowest target
    rate at which the method's whole 95 % interval (its mean, with one seed) is worse than the
    baseline's mean at the lowest rate."""
    mask = (intervals["metric"] == metric).to_numpy().copy()
    for name, value in zip(CONDITION_KEYS, condition):
        mask &= (intervals[name] == value).to_numpy()
    rows = intervals[mask]
    aucs = rows[rows["quantity"] == AUC].copy()
    values = rows[rows["quantity"] == VALUE]
    if aucs.empty:
        return pd.DataFrame()
    ascending = declaration.direction == "lower"
    aucs = aucs.sort_values(["mean", METHOD], ascending=[ascending, True])
    clean = values[values[METHOD] == baseline].sort_values(RATE)
    clean_value = float(clean["mean"].iloc[0]) if not clean.empty else np.nan
    clean_rate = float(clean[RATE].iloc[0]) if not clean.empty else np.nan
    verdicts = {}
    if not found.empty:
        auc_rows = found[(found["metric"] == metric) & (found["quantity"] == AUC)]
        for name, value in zip(CONDITION_KEYS, condition):
            auc_rows = auc_rows[auc_rows[name] == value]
        verdicts = dict(zip(auc_rows[METHOD], auc_rows["verdict"]))
    out = []
    for _, row in aucs.iterrows():
        curve = values[values[METHOD] == row[METHOD]].sort_values(RATE)
        breaking = np.nan
        if declaration.ranked and not np.isnan(clean_value):
            # The whole interval on the worse side of the clean value (the mean, without an interval).
            sign = declaration.sign()
            far_end = (curve["ci_high"] if sign > 0 else curve["ci_low"]).fillna(curve["mean"])
            worse = far_end * sign < clean_value * sign
            if worse.any():
                breaking = float(curve.loc[worse, RATE].iloc[0])
        out.append({
            METHOD: row[METHOD], "auc": row["mean"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
            "n_seeds": row["n_seeds"], "verdict": "baseline" if row[METHOD] == baseline else verdicts.get(row[METHOD], ""),
            "breaking_rate": breaking, "highest_rate": float(curve[RATE].max()),
            "value_at_highest": float(curve["mean"].iloc[-1]), "clean_value": clean_value, "clean_rate": clean_rate,
        })  # fmt: skip
    return pd.DataFrame(out)
