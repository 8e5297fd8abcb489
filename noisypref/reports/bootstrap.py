"""The paired hierarchical bootstrap: resample seeds, then the items (held-out pairs, evaluation
prompts) within each run.

A statistic is a mean over seeds of a per-seed value; the per-seed value is a weighted sum of parts,
each part the mean of a run's per-item values (``items``), or a fixed number where a run has no items:

- a method's value at one flip rate: one part, weight 1, the run's items;
- a paired difference at one rate: one part, the per-item differences of the two runs (the methods
  of one condition, rate and seed evaluate the same items, so item ids are resampled jointly);
- a robustness AUC (or its difference): one part per rate, the trapezoid weight of the rate.

One replicate (Davison & Hinkley 1997, §3.8, the two-stage bootstrap of a nested design): draw S
seeds with replacement; for each drawn seed and each of its parts draw ``n`` items with replacement
and take their mean; average the weighted sums over the S drawn seeds. Resampling n items with
replacement and averaging is drawing counts from Multinomial(n, share of each distinct value) and
taking the count-weighted mean of the distinct values, which is what is computed where the items
take few distinct values (the same distribution, far fewer random numbers for 0/1 or 1/0.5/0 items);
for items with many distinct values (gold rewards) the resampled mean is drawn from its normal limit
(from 30 items; index draws below that), see ``_resampled_means``. The interval is the (1−c)/2 and
(1+c)/2 quantiles of the replicates.

Random numbers: ``rng.integers(0, S, size=(resamples, S))`` picks the seeds first; then, seed by
seed in order and part by part, ``rng.multinomial`` (or ``rng.standard_normal``, ``rng.integers``) for the drawn slots of
that seed. Without items only the first call is made: the seed-only percentile bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
MULTINOMIAL_SHARE = 8  # counts over distinct values where there are at most n / 8 of them
NORMAL_MIN_ITEMS = 30  # from this many items with many distinct values, the resampled mean's normal limit


@dataclass(frozen=True)
class Part:
    weight: float
    point: float  # the run's value in results.parquet (or the difference of two runs' values)
    items: np.ndarray | None = None  # per-item values whose mean is ``point``; None: no items


@dataclass(frozen=True)
class BootstrapInterval:
    estimate: float  # mean over seeds of the per-seed value
    low: float
    high: float
    seeds: int
    seeds_with_items: int
    seed_variance: float  # squared standard error from seed-to-seed variation of the per-seed value
    item_variance: float  # squared standard error that resampling items within the runs alone gives

    @property
    def dominant_source(self) -> str:
        """"items" where the item sampling of the evaluation explains at least half of the seed-to-seed
        variance of the per-seed value, "seeds" where training variation does; see ``item_share``."""
        if self.seeds_with_items == 0:
            return "seeds (no items)"
        return "items" if self.item_share >= 0.5 else "seeds"

    @property
    def item_share(self) -> float:
        if not self.seed_variance > 0:
            return 1.0 if self.item_variance > 0 else 0.0
        return min(1.0, self.item_variance / self.seed_variance)


def seed_value(parts: list[Part]) -> float:
    return float(sum(part.weight * part.point for part in parts))


def hierarchical_bootstrap(
    seeds: list[list[Part]], resamples: int, random_seed: int = 0, confidence: float = CONFIDENCE
) -> BootstrapInterval:
    """The percentile interval of the mean over ``seeds`` (one list of parts per seed); see the module."""
    count = len(seeds)
    values = np.array([seed_value(parts) for parts in seeds], dtype=float)
    with_items = sum(any(part.items is not None and len(part.items) for part in parts) for parts in seeds)
    item_variance = float(
        sum(
            part.weight**2 * float(np.var(part.items)) / len(part.items)
            for parts in seeds
            for part in parts
            if part.items is not None and len(part.items)
        )
        / count**2
    ) if count else float("nan")  # fmt: skip
    seed_variance = float(values.var(ddof=1) / count) if count > 1 else float("nan")
    estimate = float(values.mean()) if count else float("nan")
    if count < 2:
        return BootstrapInterval(estimate, float("nan"), float("nan"), count, with_items, seed_variance, item_variance)
    rng = np.random.default_rng(random_seed)
    picks = rng.integers(0, count, size=(resamples, count))
    slot_values = values[picks]
    for seed_index, parts in enumerate(seeds):
        if not any(part.items is not None and len(part.items) for part in parts):
            continue
        slots = picks == seed_index
        drawn = int(slots.sum())
        if not drawn:
            continue
        replicate = np.zeros(drawn)
        for part in parts:
            if part.items is None or not len(part.items):
                replicate += part.weight * part.point
                continue
            replicate += part.weight * _resampled_means(part.items, drawn, rng)
        slot_values[slots] = replicate
    replicates = slot_values.mean(axis=1)
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return BootstrapInterval(estimate, float(low), float(high), count, with_items, seed_variance, item_variance)


def _resampled_means(items: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` means of ``len(items)`` items drawn with replacement.

    Few distinct values (0/1 or 1/½/0 items): multinomial counts over them, exactly. Many distinct
    values (gold rewards): from ``NORMAL_MIN_ITEMS`` items on, the normal limit of the resampled mean,
    N(mean, var/n) with the plug-in variance (the central limit theorem for the bootstrap mean;
    Davison & Hinkley 1997, §2.6), a hundredth of the random numbers; below that, index draws.
    """
    total = len(items)
    levels, counts = np.unique(items, return_counts=True)
    if len(levels) * MULTINOMIAL_SHARE <= total:
        return rng.multinomial(total, counts / total, size=count) @ levels / total
    if total >= NORMAL_MIN_ITEMS:
        return items.mean() + np.sqrt(items.var() / total) * rng.standard_normal(count)
    return items[rng.integers(0, total, size=(count, total))].mean(axis=1)
