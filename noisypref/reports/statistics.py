"""Summary numbers over seeds, and Holm's adjustment.

Every function takes the results table (one row per run, DESIGN.md §1) and returns a long
DataFrame; failed and pending runs are left out, a missing metric value is left out of its cell,
and the runs without flips (noise model "none") count as the 0 % point of every noise model.

- Intervals: mean over seeds with a 95 % interval, Student's t for fewer than
  ``BOOTSTRAP_MIN_SEEDS`` seeds, a seeded percentile bootstrap of the mean from there on.
- Robustness-curve summaries, per seed then aggregated: the normalised area under the curve
  ``trapezoid(value, x) / (x_max − x_min)`` with x the mean realised flip rate of each target rate,
  and the drop ``value(lowest rate) − value(highest rate)``.

The tests of one method against another are not here: every p-value of a report comes from the one
procedure of ``procedure`` (``findings.findings`` and ``findings.paired_tests``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.integrate import trapezoid

from noisypref.reports.study import (
    CONDITION_KEYS,
    METHOD,
    RATE,
    REALISED_RATE,
    SEED,
    metric_columns,
    normalise_results,
    percent,
    share_clean_runs,
    succeeded_runs,
)

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
BOOTSTRAP_MIN_SEEDS = 10
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

SUMMARY_COLUMNS = [
    *CONDITION_KEYS, METHOD, "metric", "quantity", RATE, REALISED_RATE,
    "n_seeds", "mean", "std", "ci_low", "ci_high", "ci_method", "note",
]  # fmt: skip

@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    std: float
    low: float
    high: float
    method: str  # "t", "bootstrap" or "none"


def mean_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """Mean, standard deviation (ddof 1) and a confidence interval of the mean.

    t-interval ``mean ± t_{(1+c)/2, n−1} · sd/√n`` below ``BOOTSTRAP_MIN_SEEDS`` values; from there
    a percentile bootstrap: ``BOOTSTRAP_RESAMPLES`` resamples with replacement drawn by
    ``numpy.random.default_rng(BOOTSTRAP_SEED).integers(0, n, (BOOTSTRAP_RESAMPLES, n))``, the
    interval being the (1−c)/2 and (1+c)/2 quantiles of the resampled means.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return Interval(0, np.nan, np.nan, np.nan, np.nan, "none")
    mean = float(values.mean())
    if n == 1:
        return Interval(1, mean, np.nan, np.nan, np.nan, "none")
    std = float(values.std(ddof=1))
    if n >= BOOTSTRAP_MIN_SEEDS:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        resampled_means = values[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
        low, high = np.quantile(resampled_means, [(1 - confidence) / 2, (1 + confidence) / 2])
        return Interval(n, mean, std, float(low), float(high), "bootstrap")
    half_width = stats.t.ppf((1 + confidence) / 2, n - 1) * std / np.sqrt(n)
    return Interval(n, mean, std, mean - half_width, mean + half_width, "t")


def curve_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The succeeded runs, with the runs without flips shared by every noise model (see
    ``share_clean_runs``): what every curve, summary and test is computed on."""
    return share_clean_runs(succeeded_runs(results))


def rate_axis(runs: pd.DataFrame) -> pd.Series:
    """x of the robustness curve: the mean realised flip rate of each target rate (sorted).

    Where no realised rate was recorded for a target rate, the target rate itself.
    """
    realised = runs.groupby(RATE)[REALISED_RATE].mean().sort_index()
    return realised.fillna(pd.Series(realised.index, index=realised.index))


def _per_seed(runs: pd.DataFrame, metric: str, rates) -> pd.DataFrame:
    """Seeds × target rates table of one method's metric (mean if a seed was run twice)."""
    cells = runs.groupby([SEED, RATE])[metric].agg(["mean", "size"])
    if (cells["size"] > 1).any():
        logger.warning("several runs share a seed and rate for one method; their %s is averaged", metric)
    return cells["mean"].unstack(RATE).reindex(columns=list(rates))


def summarise(results: pd.DataFrame, metrics: list[str] | None = None, declarations=None) -> pd.DataFrame:
    """Per condition, method label and metric: the value at each rate, the AUC and the drop.

    With ``declarations`` (``declarations.MetricDeclarations``) the intervals of values and AUCs of
    a bounded metric are cut at its bounds (``ci_method`` then ends in "clipped to bounds").

    One row per (condition, method, metric, quantity[, rate]) with ``quantity`` one of
    ``"value"`` (at ``target_flip_rate``; ``realised_flip_rate`` is the curve's x), ``"auc"`` and
    ``"drop"`` (both over the seeds that have every rate). Columns: ``SUMMARY_COLUMNS``.
    """
    results = normalise_results(results)
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    rows = []
    for condition, condition_runs in curve_runs(results).groupby(list(CONDITION_KEYS), sort=True):
        x = rate_axis(condition_runs)
        key = dict(zip(CONDITION_KEYS, condition))
        for metric in metrics:
            for label, method_runs in condition_runs.groupby(METHOD, sort=True):
                per_seed = _per_seed(method_runs, metric, x.index)
                if per_seed.isna().all().all():
                    continue
                base = {**key, METHOD: label, "metric": metric}
                for rate, realised in x.items():
                    interval = mean_interval(per_seed[rate])
                    if interval.n == 0:
                        continue
                    note = "one seed: no spread" if interval.n == 1 else ""
                    rows.append(_summary_row(base, "value", rate, realised, interval, note))
                rows.extend(_curve_rows(base, per_seed, x))
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    if declarations is not None:
        summary = _clip_to_bounds(summary, declarations)
    return summary


def _clip_to_bounds(summary: pd.DataFrame, declarations) -> pd.DataFrame:
    """Cut the intervals of values and AUCs (a mean level) at the metric's bounds; drops stay."""
    summary = summary.copy()
    for metric in summary["metric"].unique():
        declaration = declarations.get(metric)
        if declaration.low is None and declaration.high is None:
            continue
        rows = (summary["metric"] == metric) & summary["quantity"].isin(["value", "auc"])
        low = summary.loc[rows, "ci_low"].clip(lower=declaration.low, upper=declaration.high)
        high = summary.loc[rows, "ci_high"].clip(lower=declaration.low, upper=declaration.high)
        clipped = rows & ((summary["ci_low"] != low.reindex(summary.index)) | (summary["ci_high"] != high.reindex(summary.index)))
        clipped &= summary["ci_low"].notna()
        summary.loc[rows, "ci_low"], summary.loc[rows, "ci_high"] = low, high
        summary.loc[clipped, "ci_method"] += " (clipped to bounds)"
    return summary


def _curve_rows(base: dict, per_seed: pd.DataFrame, x: pd.Series) -> list[dict]:
    """AUC and drop per seed over the rates this method has values at, then aggregated."""
    measured = per_seed.columns[per_seed.notna().any()]
    per_seed, x = per_seed[measured], x[measured]
    if len(x) < 2:
        return []
    complete = per_seed.dropna()
    left_out = len(per_seed) - len(complete)
    first, last = x.index[0], x.index[-1]
    span = x.iloc[-1] - x.iloc[0]
    notes = [f"{left_out} seed(s) lacking a rate left out"] if left_out else []
    if len(complete) == 1:
        notes.append("one seed: no spread")
    rows = []
    if span > 0:
        auc = trapezoid(complete.to_numpy(), x.to_numpy(), axis=1) / span
        note = f"over {percent(first)}–{percent(last)}, divided by the realised-rate span {span:.4g}"
        rows.append(_summary_row(base, "auc", np.nan, np.nan, mean_interval(auc), "; ".join([note, *notes])))
    drop = complete[first] - complete[last]
    note = f"value at {percent(first)} minus value at {percent(last)}"
    rows.append(_summary_row(base, "drop", np.nan, np.nan, mean_interval(drop), "; ".join([note, *notes])))
    return [row for row in rows if row["n_seeds"] > 0]


def _summary_row(base: dict, quantity: str, rate, realised, interval: Interval, note: str) -> dict:
    return {
        **base,
        "quantity": quantity,
        RATE: rate,
        REALISED_RATE: realised,
        "n_seeds": interval.n,
        "mean": interval.mean,
        "std": interval.std,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "ci_method": interval.method,
        "note": note,
    }


def holm_adjust(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries are not tests and stay NaN.

    With the m p-values sorted ascending, ``adjusted_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))``
    (Holm 1979, Scand. J. Statist. 6:65–70).
    """
    pvalues = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(pvalues, np.nan)
    tested = np.flatnonzero(~np.isnan(pvalues))
    m = len(tested)
    order = tested[np.argsort(pvalues[tested], kind="stable")]
    running_max = 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running_max
    return adjusted
