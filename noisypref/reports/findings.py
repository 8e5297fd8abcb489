"""The findings of a study: each method against the baseline, with intervals, p-values and a verdict.

For every condition, primary metric and method other than the baseline, at each target flip rate and
on the robustness AUC (``statistics.curve_runs`` runs; rate 0 shared by every noise model), one
comparison of two method labels, paired by seed (the runs of one seed flip the same pairs and evaluate
the same items). References (``reference`` ≠ "none": the oracle, known-rate variants) are never
compared, ranked or given a verdict. ``compare_family`` is the same for any list of (method, base)
pairs (the with/without comparisons of ``pairs``).

- ``mean_difference``: mean over seeds of (method − baseline);
- ``t_pvalue``: the test of ``procedure.paired_t`` (a paired t-test over seeds whose standard error
  also carries the item sampling of the shared held-out items, where both runs wrote items.parquet);
  ``t_pvalue_holm``: Holm-adjusted over the rows of one table (one metric in one condition: all
  methods, rates and the AUC);
- ``ci_low``/``ci_high``: the interval of the same procedure at the level Holm's step-down used for
  that test (``ci_level``: its confidence), so that it excludes 0 exactly when Holm rejects;
- ``verdict``: *too few seeds* below ``procedure.MIN_SEEDS`` paired seeds; else *better* / *worse*
  when the interval excludes 0 on that side (direction from metrics.json); *differs* for a metric
  without a declared direction; *no detectable difference* otherwise.

``paired_tests`` is the same procedure over every comparable metric (not only the primary ones), from
the results table, with two descriptive columns beside it: the standard deviation of the per-seed
differences and Cohen's d_z; on a primary metric its rows are the findings' rows.

Each method's own mean with its bootstrap interval (the figures' bands) is ``noisypref.reports.intervals``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from noisypref.reports.declarations import MetricDeclaration, MetricDeclarations
from noisypref.reports.procedure import (
    ALPHA,
    MIN_SEEDS,
    PairedTest,
    Sample,
    excludes_zero,
    holm_levels,
    paired_t,
    sample,
)
from noisypref.reports.statistics import curve_runs, holm_adjust, rate_axis
from noisypref.reports.study import (
    CONDITION_KEYS,
    METHOD,
    RATE,
    REALISED_RATE,
    SEED,
    competitor_runs,
    metric_columns,
    normalise_results,
)

logger = logging.getLogger(__name__)

ITEM_MEAN_TOLERANCE = 1e-6
AUC = "auc"
VALUE = "value"
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW, DIFFERS = (
    "better", "worse", "no detectable difference", "too few seeds", "differs",
)  # fmt: skip

FINDINGS_COLUMNS = [
    *CONDITION_KEYS, "metric", METHOD, "baseline", "quantity", RATE, REALISED_RATE, "n_pairs",
    "method_mean", "baseline_mean", "mean_difference", "ci_low", "ci_high", "ci_level", "standard_error",
    "df", "ci_method", "seeds_with_items", "seed_variance", "item_variance", "dominant_source",
    "t_pvalue", "t_pvalue_holm", "verdict", "note",
]  # fmt: skip
PAIRED_COLUMNS = [*FINDINGS_COLUMNS[:-1], "sd_difference", "cohens_dz", "note"]

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


class Cells:
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


def common_seeds(cells: list[Cells], rates) -> list:
    """The seeds at which every one of ``cells`` has a value at every one of ``rates``."""
    found = set(cells[0].seeds(rates))
    for other in cells[1:]:
        found &= set(other.seeds(rates))
    return sorted(found)


def paired_sample(
    method: Cells, base: Cells | None, seeds: list, weights: dict
) -> tuple[Sample, pd.Series | None, int]:  # fmt: skip
    """The comparison method − base over ``seeds``: per seed Σ_r w_r·(method − base) at the rates of
    ``weights`` (rate -> weight; ``base`` None: Σ_r w_r·method, e.g. a drop with weights +1 and −1),
    and, where every seed has items for every run at every rate on one common set of item ids, the
    mean over seeds of each item's weighted value (a Series by item id; None otherwise). Returns the
    sample, that Series and the number of seeds with items."""

    def base_value(seed, rate) -> float:
        return 0.0 if base is None else base.value[(seed, rate)]

    values = [sum(w * (method.value[(s, r)] - base_value(s, r)) for r, w in weights.items()) for s in seeds]
    per_seed_items = [_seed_items(method, base, seed, weights) for seed in seeds]
    with_items = sum(items is not None for items in per_seed_items)
    item_means = None
    if seeds and with_items == len(seeds):
        index = per_seed_items[0].index
        if all(len(other) == len(index) and other.index.isin(index).all() for other in per_seed_items[1:]):
            item_means = pd.concat([other.reindex(index) for other in per_seed_items], axis=1).mean(axis=1)
    return sample(values, None if item_means is None else item_means.to_numpy()), item_means, with_items


def _seed_items(method: Cells, base: Cells | None, seed, weights: dict) -> pd.Series | None:
    """Σ_r w_r·(method − base) item by item for one seed, or None where a run lacks items or the
    runs evaluated different items."""
    combined = None
    for rate, weight in weights.items():
        method_items = method.run_items(seed, rate)
        base_items = None if base is None else base.run_items(seed, rate)
        if method_items is None or (base is not None and base_items is None):
            return None
        difference = method_items if base_items is None else method_items - base_items.reindex(method_items.index)
        same_count = (base_items is None or len(base_items) == len(method_items)) and (
            combined is None or len(combined) == len(method_items)
        )  # fmt: skip
        if combined is not None:
            difference = difference.reindex(combined.index)
        if not same_count or difference.isna().any():
            logger.warning("seed %s, rate %s: the runs evaluated different items; seeds only", seed, rate)
            return None
        combined = weight * difference if combined is None else combined + weight * difference
    return combined


def _ci_method(seeds: int, with_items: int, item_term: bool) -> str:
    if seeds < MIN_SEEDS:
        return "none"
    if item_term:
        return "paired t (seeds and items)"
    if with_items:
        return f"paired t (seeds only: {with_items} of {seeds} seeds with items on shared item ids)"
    return "paired t (seeds)"


def _comparison_row(comparison: Sample, with_items: int, means: tuple, declaration: MetricDeclaration) -> dict:
    test = paired_t(comparison)
    seed_variance, item_variance = test.seed_variance, test.item_variance
    if comparison.items is None:
        dominant = "seeds (no items)"
    else:
        dominant = "items" if item_variance >= seed_variance else "seeds"
    return {
        "n_pairs": test.n,
        "method_mean": float(means[0]),
        "baseline_mean": float(means[1]),
        "mean_difference": test.mean,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "ci_level": np.nan,
        "standard_error": test.standard_error,
        "df": test.df,
        "ci_method": _ci_method(test.n, with_items, comparison.items is not None),
        "seeds_with_items": with_items,
        "seed_variance": seed_variance,
        "item_variance": item_variance,
        "dominant_source": dominant if test.n >= 2 else "",
        "t_pvalue": test.pvalue,
        "t_pvalue_holm": np.nan,
        "verdict": "",
        "note": test.note,
        "_test": test,
    }


def compare_family(
    condition_runs: pd.DataFrame, metric: str, pairs: list[tuple[str, str]], declaration: MetricDeclaration,
    items: ItemsLookup = no_items,
) -> list[dict]:  # fmt: skip
    """One table: each (method, base) of ``pairs`` at each rate both have and on the AUC, with Holm's
    step-down over the whole table, the interval at each test's Holm level and the verdict.
    ``condition_runs``: the runs of one condition (with shared clean runs). Rows as ``FINDINGS_COLUMNS``
    without the condition keys."""
    x = rate_axis(condition_runs)
    by_label = {label: runs for label, runs in condition_runs.groupby(METHOD, sort=True)}
    cells: dict[str, Cells] = {}
    family = []
    for method, base in pairs:
        if method not in by_label or base not in by_label:
            continue
        for label in (method, base):
            if label not in cells:
                cells[label] = Cells(by_label[label], metric, items)
        method_cells, base_cells = cells[method], cells[base]
        if not method_cells.value or not base_cells.value:
            continue
        header = {"metric": metric, METHOD: method, "baseline": base}
        measured = [rate for rate in x.index if common_seeds([method_cells, base_cells], [rate])]
        for rate in measured:
            seeds = common_seeds([method_cells, base_cells], [rate])
            comparison, _, with_items = paired_sample(method_cells, base_cells, seeds, {rate: 1.0})
            means = tuple(np.mean([cells_.value[(s, rate)] for s in seeds]) for cells_ in (method_cells, base_cells))
            row = _comparison_row(comparison, with_items, means, declaration)
            family.append({**header, "quantity": VALUE, RATE: rate, REALISED_RATE: x[rate], **row})
        seeds = common_seeds([method_cells, base_cells], measured)
        if len(measured) >= 2 and seeds and x[measured].iloc[-1] > x[measured].iloc[0]:
            weights = auc_weights(x[measured]).to_dict()
            comparison, _, with_items = paired_sample(method_cells, base_cells, seeds, weights)
            means = tuple(
                float(np.mean([sum(w * cells_.value[(s, r)] for r, w in weights.items()) for s in seeds]))
                for cells_ in (method_cells, base_cells)
            )  # fmt: skip
            row = _comparison_row(comparison, with_items, means, declaration)
            span = f"AUC over {100 * measured[0]:.4g}–{100 * measured[-1]:.4g} %"
            row["note"] = "; ".join(filter(None, [span, row["note"]]))
            family.append({**header, "quantity": AUC, RATE: np.nan, REALISED_RATE: np.nan, **row})
    decide(family, declaration)
    return family


def decide(family: list[dict], declaration: MetricDeclaration) -> None:
    """Holm over ``family`` (rows with ``t_pvalue`` and ``_test``): adjusted p, the interval at each
    test's Holm level, and the verdict read from that interval."""
    pvalues = [row["t_pvalue"] for row in family]
    for row, adjusted, level in zip(family, holm_adjust(pvalues), holm_levels(pvalues, ALPHA)):
        test: PairedTest = row.pop("_test")
        low, high = test.interval(level)
        if declaration.span is not None and not math.isnan(low):  # a difference of bounded values
            low, high = max(low, -declaration.span), min(high, declaration.span)
        row.update(t_pvalue_holm=adjusted, ci_low=low, ci_high=high, ci_level=1 - level)
        row["verdict"] = verdict(row, declaration)


def findings(
    runs: pd.DataFrame,
    metrics: list[str],
    baseline: str,
    declarations: MetricDeclarations,
    items: ItemsLookup = no_items,
) -> pd.DataFrame:
    """Each competing method label against ``baseline`` per condition, metric, rate and on the AUC.

    ``runs``: the succeeded runs with shared clean runs (``statistics.curve_runs``). One row per
    (condition, metric, method, quantity[, rate]); columns ``FINDINGS_COLUMNS``. Metrics whose
    values are not comparable across methods (``comparable: false`` in metrics.json) get no row.
    """
    rows = []
    for condition, condition_runs in competitor_runs(runs).groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        labels = sorted(set(condition_runs[METHOD]))
        if baseline not in labels:
            continue
        pairs = [(label, baseline) for label in labels if label != baseline]
        for metric in metrics:
            declaration = declarations.get(metric)
            if not declaration.comparable:
                continue
            rows += [{**key, **row} for row in compare_family(condition_runs, metric, pairs, declaration, items)]
    return pd.DataFrame(rows, columns=FINDINGS_COLUMNS)


def paired_tests(
    results: pd.DataFrame, baseline: str, metrics: list[str] | None = None,
    declarations: MetricDeclarations | None = None, items: ItemsLookup = no_items,
) -> pd.DataFrame:  # fmt: skip
    """``findings`` of every comparable metric from the results table: each competing method label against
    ``baseline`` per condition, metric, rate and on the AUC, by the one procedure of every verdict (the same
    test, the same Holm family, the same numbers as the findings of a primary metric).

    ``results``: one row per run (failed and pending runs are left out, the runs without flips are the 0 %
    point of every noise model: ``statistics.curve_runs``); ``metrics``: default every metric with a value;
    ``declarations``: default none (every metric comparable, direction ``none``); ``items``: the per-item
    values of the runs, as for ``findings``. Columns ``PAIRED_COLUMNS``: ``FINDINGS_COLUMNS`` plus
    ``sd_difference`` (standard deviation, ddof 1, of the per-seed differences) and ``cohens_dz`` (their
    mean over that: Cohen's effect size for paired data). Raises ``ValueError`` for a baseline that is not
    a method label of the results.
    """
    results = normalise_results(results)
    labels = set(results[METHOD])
    if baseline not in labels:
        raise ValueError(
            f"baseline method label {baseline!r} is not in the results (labels: {', '.join(sorted(labels))})"
        )
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    found = findings(curve_runs(results), metrics, baseline, declarations or MetricDeclarations(), items)
    # seed_variance is var_s(d_s)/S (procedure.Sample), so the sd of the differences is √(S·seed_variance)
    sd = np.sqrt(found["seed_variance"].astype(float) * found["n_pairs"].astype(float))
    found["sd_difference"] = sd
    found["cohens_dz"] = (found["mean_difference"] / sd).where(sd > 0)
    return found[PAIRED_COLUMNS]


def verdict(row: dict, declaration: MetricDeclaration) -> str:
    """The word of one comparison, read from its Holm-level interval; see the module docstring."""
    if row["n_pairs"] < MIN_SEEDS:
        return TOO_FEW
    side = excludes_zero(row["ci_low"], row["ci_high"])
    if side == 0:
        return NO_DIFFERENCE
    if declaration.direction == "none" or declaration.diagnostic or not declaration.comparable:
        return DIFFERS
    return BETTER if side == declaration.sign() else WORSE
