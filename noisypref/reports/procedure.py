"""The one procedure behind every verdict of a report, and the intervals that agree with it by construction.

A comparison is a set of per-seed paired values d_s (the difference of two methods' values, or AUCs,
in the runs of seed s, which flip the same pairs) and, where the runs wrote items.parquet, the per-item
values behind them. Every run of a dataset evaluates the same held-out items, so a difference has two
sources of variance, crossed: training (seeds) and the evaluation sample (items). Its standard error is

    se² = A + B,   A = var_s(d_s) / S,   B = var_i(ē_i) / n

with ē_i the mean over seeds of item i's paired value and n the items: the row-plus-column variance of
a crossed design (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1:386–411, §3), which counts
the seed × item interaction twice and so errs on the safe side. Without items (or where the seeds'
items differ) B = 0 and this is the paired t-test over seeds (Student 1908; scipy.stats.ttest_1samp).
Degrees of freedom: Welch–Satterthwaite, ν = (A + B)² / (A²/(S − 1) + B²/(n − 1)) (ν = S − 1 for
B = 0). The test: p = 2·P(T_ν > |d̄| / se), for S ≥ ``MIN_SEEDS`` seeds and se > 0.

Over the m tests of one table, **Holm's step-down** (Holm 1979, Scand. J. Statist. 6:65–70): with the
p-values sorted, p_(1) ≤ … ≤ p_(m), the test of rank r (1-based) is rejected when (m − j + 1)·p_(j) < α
for every j ≤ r. Let k be the first rank that is not rejected (k = m + 1 if all are). The **interval
printed beside a verdict** is d̄ ± t_{1−a/2, ν}·se at the level a the step-down used for that test:
a = α/(m − r + 1) for a rejected test of rank r < k, a = α/(m − k + 1) for every test of rank ≥ k.
An interval at level a excludes 0 exactly when p < a, so the interval excludes 0 exactly when Holm
rejects: the verdict is read from the interval, and the two cannot disagree.

Why a t-test (docs/reports.md, "One procedure per verdict"): exact tests over the seeds' signs or ranks
cannot reach significance with the study's seeds (the Wilcoxon signed-rank test and the sign-flip
permutation test both have the exact two-sided minimum 2/2^S, 0.031 for 6 seeds, so after Holm over
two or more tests never 0.05); the t-test assumes roughly normal per-seed differences (means over
hundreds of held-out items), and its p has no such floor.

A **ratio** of two paired means (the share of the headroom a method recovers, (method − baseline) /
(oracle − baseline)) gets Fieller's interval (Fieller 1954, J. R. Statist. Soc. B 16:175–185) from the
same variances: the ρ for which the test of N − ρ·D = 0 does not reject, with the denominator's
degrees of freedom. It is a bounded interval exactly when the denominator's interval excludes 0;
otherwise the ratio is undefined (the report says so instead of printing one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
MIN_SEEDS = 3  # a t-test needs at least this many paired seeds


@dataclass(frozen=True)
class Sample:
    """The per-seed values of one comparison and, where every seed has them on the same items, the mean
    over seeds of each item's value (``items``; None: no item term)."""

    values: np.ndarray
    items: np.ndarray | None = None

    @property
    def seeds(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.seeds else math.nan

    @property
    def seed_variance(self) -> float:
        """A = var_s(d_s) / S."""
        return float(self.values.var(ddof=1)) / self.seeds if self.seeds > 1 else math.nan

    @property
    def item_variance(self) -> float:
        """B = var_i(ē_i) / n; 0 without items."""
        if self.items is None or len(self.items) < 2:
            return 0.0
        return float(self.items.var(ddof=1)) / len(self.items)


def sample(values, items=None) -> Sample:
    return Sample(np.asarray(values, dtype=float), None if items is None else np.asarray(items, dtype=float))


@dataclass(frozen=True)
class PairedTest:
    n: int  # paired seeds
    mean: float
    standard_error: float  # √(A + B); NaN below two seeds
    df: float  # Welch–Satterthwaite degrees of freedom
    pvalue: float  # two-sided; NaN below MIN_SEEDS seeds or with se = 0
    seed_variance: float
    item_variance: float
    note: str = ""

    def interval(self, level: float) -> tuple[float, float]:
        """The t interval at error level ``level`` (0.05: a 95 % interval); NaN where there is no test."""
        if math.isnan(self.pvalue) or math.isnan(level):
            return math.nan, math.nan
        half_width = float(stats.t.ppf(1 - level / 2, self.df)) * self.standard_error
        return self.mean - half_width, self.mean + half_width


def satterthwaite(seed_variance: float, item_variance: float, seeds: int, items: int) -> float:
    """ν = (A + B)² / (A²/(S − 1) + B²/(n − 1)); S − 1 where B = 0."""
    if not item_variance > 0:
        return float(seeds - 1)
    denominator = seed_variance**2 / (seeds - 1) + item_variance**2 / (items - 1)
    return (seed_variance + item_variance) ** 2 / denominator


def paired_t(comparison: Sample) -> PairedTest:
    """The test of one comparison against 0 (module docstring)."""
    n, mean = comparison.seeds, comparison.mean
    seed_variance, item_variance = comparison.seed_variance, comparison.item_variance
    if n < MIN_SEEDS:
        note = f"{n} paired seed(s): too few for a t-test (needs {MIN_SEEDS})"
        error = math.sqrt(seed_variance + item_variance) if n > 1 else math.nan
        return PairedTest(n, mean, error, math.nan, math.nan, seed_variance, item_variance, note)
    error = math.sqrt(seed_variance + item_variance)
    df = satterthwaite(seed_variance, item_variance, n, 0 if comparison.items is None else len(comparison.items))
    if not error > 0:
        note = "constant differences: t-test undefined"
        return PairedTest(n, mean, error, df, math.nan, seed_variance, item_variance, note)
    pvalue = float(2 * stats.t.sf(abs(mean) / error, df))
    return PairedTest(n, mean, error, df, pvalue, seed_variance, item_variance)


def holm_levels(pvalues, alpha: float = ALPHA) -> np.ndarray:
    """The error level Holm's step-down used for each test (see the module docstring); NaN where the
    p-value is NaN (not a test)."""
    pvalues = np.asarray(pvalues, dtype=float)
    levels = np.full_like(pvalues, np.nan)
    tested = np.flatnonzero(~np.isnan(pvalues))
    m = len(tested)
    order = tested[np.argsort(pvalues[tested], kind="stable")]
    stopped = None  # the level of the first test that is not rejected, kept for every later one
    for rank, index in enumerate(order):  # rank 0-based: the multiplier is m − rank
        if stopped is None and (m - rank) * pvalues[index] >= alpha:
            stopped = alpha / (m - rank)
        levels[index] = stopped if stopped is not None else alpha / (m - rank)
    return levels


def excludes_zero(low: float, high: float) -> float:
    """+1 where the interval lies above 0, −1 where below, 0 where it contains 0 (or is NaN)."""
    if low > 0:
        return 1.0
    if high < 0:
        return -1.0
    return 0.0


@dataclass(frozen=True)
class RatioInterval:
    estimate: float  # mean numerator / mean denominator
    low: float
    high: float
    defined: bool  # False where the denominator's interval contains 0: no bounded interval


def fieller_interval(numerator: Sample, denominator: Sample, confidence: float = CONFIDENCE) -> RatioInterval:
    """Fieller's interval for mean(numerator) / mean(denominator), paired by seed (module docstring).

    The set {ρ : (N̄ − ρD̄)² ≤ q²·(v_NN − 2ρ·v_ND + ρ²·v_DD)} with v the (co)variances of the two
    means (seed part + item part, as ``paired_t``'s se²) and q = t_{(1+c)/2, ν_D}, ν_D the
    denominator's degrees of freedom: the ρ whose test of N − ρ·D does not reject. Bounded,
    [root₁, root₂], exactly when |D̄| > q·√v_DD, the denominator's interval excluding 0. The two
    samples have the same seeds, and items on both or neither.
    """
    count = numerator.seeds
    n_mean, d_mean = numerator.mean, denominator.mean
    estimate = n_mean / d_mean if d_mean != 0 else math.nan
    if count < MIN_SEEDS:
        return RatioInterval(estimate, math.nan, math.nan, False)
    v_nn = numerator.seed_variance + numerator.item_variance
    v_dd = denominator.seed_variance + denominator.item_variance
    v_nd = float(np.cov(numerator.values, denominator.values, ddof=1)[0, 1]) / count
    items = 0
    if numerator.items is not None and denominator.items is not None and len(denominator.items) > 1:
        items = len(denominator.items)
        v_nd += float(np.cov(numerator.items, denominator.items, ddof=1)[0, 1]) / items
    df = satterthwaite(denominator.seed_variance, denominator.item_variance, count, items)
    q = float(stats.t.ppf((1 + confidence) / 2, df))
    half_width = q * math.sqrt(v_dd)
    if not abs(d_mean) > half_width:  # the denominator's interval contains 0
        return RatioInterval(estimate, math.nan, math.nan, False)
    a = (abs(d_mean) - half_width) * (abs(d_mean) + half_width)  # D̄² − q²·v_DD, > 0
    b = -2.0 * (n_mean * d_mean - q**2 * v_nd)
    c = n_mean**2 - q**2 * v_nn
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))  # ≥ 0 when a > 0: the estimate itself lies inside
    return RatioInterval(estimate, (-b - root) / (2 * a), (-b + root) / (2 * a), True)
