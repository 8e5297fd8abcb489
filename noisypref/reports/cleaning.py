"""The cleaning part of a report: cleaners and robust losses side by side, and detection against accuracy.

A study with a ``cleaning:`` axis has runs of every (cleaner, loss): results.parquet's ``cleaning`` (the
entry's label, "none" where the noisy pairs are trained as they are), ``cleaning_judge`` and the
``cleaning_*`` metrics of each run (precision, recall, F1 and AUROC of the judge against the flip record,
the noise left, the pairs left). This module

- folds the cleaner into the method label for the general sections of the report
  (``reward_model+dpo``), keeping the loss's own label in ``loss_label``, and keeps the ``oracle`` judge's
  runs out of them: they are a reference, drawn and used for headroom, never ranked;
- writes the cleaning finding: per condition and flip rate, the baseline, the oracle, the best cleaner
  (with the baseline loss), the best robust loss (without cleaning) and the best combination, each with
  the share of the oracle's headroom it recovers (`recovered_share`, by the report's one procedure).

The report's section that lays these out, with each judge's recall at its budget against the held-out
accuracy after cleaning, is `noisypref.reports.cleaning_section`.

The oracle of the headroom is the ``oracle`` judge removing at its own estimate (exactly the flipped pairs)
with the baseline loss, or, where a study has no such runs, the rows whose ``reference`` column says
``clean_only`` (the oracle reference of issue 22). `recovered_share` pairs the three by seed and uses
`noisypref.reports.procedure` (paired t for the headroom, Fieller for the share), as
`noisypref.reports.headroom` does for the robust losses.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import pandas as pd

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.procedure import CONFIDENCE, excludes_zero, fieller_interval, paired_t, sample
from noisypref.reports.study import (
    BASE_LABEL,
    COMPETITOR,
    CONDITION_KEYS,
    METHOD,
    RATE,
    REFERENCE,
    SEED,
    SUCCEEDED,
    percent,
)
from noisypref.reports.tables import DASH, Table, format_number

logger = logging.getLogger(__name__)

CLEANING = "cleaning"
CLEANING_JUDGE = "cleaning_judge"
LOSS_LABEL = "loss_label"
NO_CLEANING = "none"
ORACLE_JUDGE = "oracle"
CLEAN_ONLY_REFERENCE = "clean_only"  # the `reference` column of issue 22's oracle rows
RECALL = "cleaning_recall"
DETECTION_METRICS = (
    ("cleaning_precision", "precision"),
    ("cleaning_recall", "recall"),
    ("cleaning_f1", "F1"),
    ("cleaning_auroc", "AUROC"),
    ("cleaning_noise_left", "noise left"),
    ("cleaning_pairs_left", "pairs left"),
)
# The metrics of the cleaning judges: properties of a cleaned dataset, the same for every loss trained on
# it, so they are shown in the cleaning section only (not as robustness curves per method).
CLEANING_METRICS = (*(column for column, _ in DETECTION_METRICS), "cleaning_estimated_rate")


def has_cleaning(results: pd.DataFrame) -> bool:
    return CLEANING in results and bool((results[CLEANING].astype(str) != NO_CLEANING).any())


def fold_cleaning_into_labels(results: pd.DataFrame) -> pd.DataFrame:
    """``method_label`` of a cleaned run becomes ``<cleaning>+<method>`` and its ``base_label`` (the with/without
    base, `noisypref.reports.pairs`) ``<cleaning>+<base>``, so a cleaned γ run is paired with its base
    cleaned the same way, never with an uncleaned one; the loss's own label is kept in ``loss_label``. A
    table without a cleaning column (an older study) gets ``cleaning`` "none"."""
    results = results.copy()
    if CLEANING not in results:
        results[CLEANING] = NO_CLEANING
    if CLEANING_JUDGE not in results:
        results[CLEANING_JUDGE] = results[CLEANING]
    for column in (CLEANING, CLEANING_JUDGE):
        results[column] = results[column].astype(object).where(results[column].notna(), NO_CLEANING).astype(str)
    results[LOSS_LABEL] = results[METHOD].astype(str)
    cleaned = results[CLEANING] != NO_CLEANING
    results.loc[cleaned, METHOD] = results.loc[cleaned, CLEANING] + "+" + results.loc[cleaned, LOSS_LABEL]
    if BASE_LABEL in results:
        with_base = cleaned & results[BASE_LABEL].notna()
        results[BASE_LABEL] = results[BASE_LABEL].astype(object)
        results.loc[with_base, BASE_LABEL] = (
            results.loc[with_base, CLEANING] + "+" + results.loc[with_base, BASE_LABEL].astype(str)
        )
    return results


def cleaned_references(results: pd.DataFrame) -> pd.Series:
    """The cleaned runs that are references: their cleaning read the flip record (the oracle judge) or the
    realised rate (budget ``realised_rate``), as their ``reference`` kind says (`config.references`).
    A table written before cleaned runs carried a kind: its oracle judge's runs."""
    if CLEANING not in results:
        return pd.Series(False, index=results.index)
    cleaned = results[CLEANING].astype(str) != NO_CLEANING
    reference = results[REFERENCE].astype(str) != COMPETITOR if REFERENCE in results else False
    oracle_judge = results[CLEANING_JUDGE] == ORACLE_JUDGE if CLEANING_JUDGE in results else False
    return (cleaned & reference) | oracle_judge


def ranked_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The runs the general sections compare: every run but the cleaned references (`cleaned_references`:
    drawn and used for headroom in the cleaning section, never ranked). The method references of the
    general sections (``clean_only``, ``known_rate`` methods) stay: those sections draw them, unranked."""
    return results[~cleaned_references(results)]


# ---------------------------------------------------------------------------------------------
# Headroom


@dataclass(frozen=True)
class Recovered:
    """A method's mean, its difference from the baseline and the share of the headroom it recovers with
    its 95 % interval (None where the headroom is not established: its interval includes zero, or too
    few seeds)."""

    mean: float
    difference: float
    share: float | None
    seeds: int
    share_low: float | None = None
    share_high: float | None = None


def recovered_share(
    method: pd.Series, baseline: pd.Series, oracle: pd.Series, sign: float = 1.0
) -> tuple[Recovered | None, float, bool]:
    """(the method's recovery, the headroom, whether the headroom is established), all paired by seed,
    by the report's one procedure (`noisypref.reports.procedure`, as `noisypref.reports.headroom`):
    headroom = mean over seeds of sign · (oracle − baseline), established when its paired-t 95 %
    interval lies above zero; recovered share = mean(method − baseline) / mean(oracle − baseline) with
    Fieller's interval, over the seeds all three have. Series are indexed by seed."""
    seeds = sorted(set(method.index) & set(baseline.index) & set(oracle.index))
    if not seeds:
        return None, math.nan, False
    gains = sample(sign * (oracle[seeds] - baseline[seeds]).to_numpy(dtype=float))
    low, high = paired_t(gains).interval(1 - CONFIDENCE)
    established = excludes_zero(low, high) > 0
    differences = (method[seeds] - baseline[seeds]).to_numpy(dtype=float)
    recovery = Recovered(float(method[seeds].mean()), float(differences.mean()), None, len(seeds))
    if established:
        ratio = fieller_interval(sample(sign * differences), gains, CONFIDENCE)
        if ratio.defined:
            recovery = dataclasses.replace(recovery, share=ratio.estimate, share_low=ratio.low, share_high=ratio.high)
    return recovery, gains.mean, established


def _by_seed(runs: pd.DataFrame, metric: str) -> pd.Series:
    return runs.groupby(SEED)[metric].mean().dropna()


def _best(runs: pd.DataFrame, metric: str, sign: float) -> tuple[str | None, pd.DataFrame]:
    """The method label with the best mean of ``metric`` (sign +1: highest) and its runs."""
    means = runs.groupby(METHOD)[metric].mean().dropna()
    if means.empty:
        return None, runs.iloc[0:0]
    label = (means * sign).idxmax()
    return label, runs[runs[METHOD] == label]


@dataclass(frozen=True)
class CleaningFinding:
    condition: tuple
    rate: float
    metric: str
    baseline: float
    oracle: float
    headroom: float
    established: bool
    seeds: int
    rows: list[tuple[str, str, Recovered]]  # (role, method label, recovery)


def cleaning_findings(
    results: pd.DataFrame, metric: str, baseline: str, declaration: MetricDeclaration
) -> list[CleaningFinding]:
    """Per condition and flip rate above 0: the best cleaner, robust loss and combination against the
    baseline and the oracle. ``results`` as `fold_cleaning_into_labels` leaves them."""
    runs = results[(results["status"] == SUCCEEDED) & results[metric].notna()] if metric in results else results.iloc[0:0]
    sign = declaration.sign() or 1.0
    # references (the oracle, known-rate runs, cleaned or not) are never candidates for "best"
    not_reference = ~cleaned_references(runs)
    if REFERENCE in runs:
        not_reference &= runs[REFERENCE].fillna(COMPETITOR) == COMPETITOR
    found = []
    for keys, group in runs.groupby([*CONDITION_KEYS, RATE], sort=True):
        condition, rate = tuple(keys[:-1]), float(keys[-1])
        if rate <= 0:
            continue
        uncleaned = group[CLEANING_JUDGE] == NO_CLEANING
        judged = ~uncleaned & not_reference.loc[group.index]
        with_baseline = group[LOSS_LABEL] == baseline
        baseline_runs = group[uncleaned & with_baseline & not_reference.loc[group.index]]
        oracle_runs = group[(group[CLEANING_JUDGE] == ORACLE_JUDGE) & with_baseline]
        if oracle_runs.empty and "reference" in group:  # issue 22's reference rows name their base method
            base_method = group["base_label"] if "base_label" in group else group[LOSS_LABEL]
            oracle_runs = group[(group["reference"] == CLEAN_ONLY_REFERENCE) & (base_method == baseline)]
        elif oracle_runs[METHOD].nunique() > 1:  # several oracle entries: the default one (remove, its estimate)
            preferred = oracle_runs[oracle_runs[CLEANING] == ORACLE_JUDGE]
            oracle_runs = preferred if not preferred.empty else oracle_runs[oracle_runs[METHOD] == oracle_runs[METHOD].iloc[0]]
        if baseline_runs.empty or oracle_runs.empty:
            continue
        base, oracle = _by_seed(baseline_runs, metric), _by_seed(oracle_runs, metric)
        rows = []
        candidates = (
            ("best cleaner", group[judged & with_baseline]),
            ("best robust loss", group[uncleaned & ~with_baseline & not_reference.loc[group.index]]),
            ("best combination", group[judged & ~with_baseline]),
        )
        headroom, established = math.nan, False
        for role, candidate_runs in candidates:
            label, best_runs = _best(candidate_runs, metric, sign)
            if label is None:
                continue
            recovery, headroom, established = recovered_share(_by_seed(best_runs, metric), base, oracle, sign)
            if recovery is not None:
                rows.append((role, label, recovery))
        seeds = len(set(base.index) & set(oracle.index))
        if not rows:
            headroom = float(sign * (oracle - base).dropna().mean())
        found.append(CleaningFinding(condition, rate, metric, float(base.mean()), float(oracle.mean()), headroom,
                                     established, seeds, rows))  # fmt: skip
    return found


def finding_sentence(finding: CleaningFinding, baseline: str, declaration: MetricDeclaration) -> str:
    label = declaration.label
    opening = (
        f"At {percent(finding.rate)} flips, {baseline} reaches {format_number(finding.baseline)} {label} and the "
        f"oracle (the flipped pairs removed) {format_number(finding.oracle)}: a headroom of "
        f"{format_number(finding.headroom)} over {finding.seeds} seed(s)"
    )
    if not finding.established:
        opening += (
            " — not established (its 95 % interval over seeds includes zero, or too few seeds), so no recovered share "
            "is given"
        )
    parts = []
    for role, method, recovery in finding.rows:
        share = "" if recovery.share is None else (
            f", recovering {100 * recovery.share:.0f} % of the headroom "
            f"[{100 * recovery.share_low:.0f} %, {100 * recovery.share_high:.0f} %]"
        )
        parts.append(f"the {role} is {method} ({format_number(recovery.mean)}{share})")
    if not parts:
        return opening + "."
    comparisons = "; ".join(parts)
    return f"{opening}. {comparisons[0].upper()}{comparisons[1:]}."


def findings_table(
    found: list[CleaningFinding], title: str, stem: str, baseline: str, declaration: MetricDeclaration
) -> Table | None:
    if not found:
        return None
    roles = ("best cleaner", "best robust loss", "best combination")
    rows = []
    for finding in found:
        by_role = {role: (method, recovery) for role, method, recovery in finding.rows}
        cells = [percent(finding.rate), format_number(finding.baseline), format_number(finding.oracle),
                 format_number(finding.headroom) + ("" if finding.established else " (n.s.)")]  # fmt: skip
        for role in roles:
            if role not in by_role:
                cells.append(DASH)
                continue
            method, recovery = by_role[role]
            share = "" if recovery.share is None else f" ({100 * recovery.share:.0f} %)"
            cells.append(f"{method} {format_number(recovery.mean)}{share}")
        rows.append(cells)
    return Table(
        stem=stem,
        caption=f"{title}: {declaration.label}, the best cleaner, robust loss and combination against {baseline} "
        "and the oracle, with the share of the headroom each recovers",
        header=["rate", baseline, "oracle", "headroom", *roles],
        rows=rows,
        notes=[
            "headroom = oracle − baseline, mean over seeds (n.s.: its 95 % t-interval over seeds includes zero; "
            "then no share is given); share = (method − baseline) / headroom, paired by seed",
            "the oracle is the 'oracle' judge removing exactly the flipped pairs, trained with the baseline loss: "
            "a reference, never a candidate",
        ],
        align="l" + "r" * 3 + "l" * 3,
    )
