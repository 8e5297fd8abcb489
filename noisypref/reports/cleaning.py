"""The cleaning part of a report: cleaners and robust losses side by side, and detection against accuracy.

A study with a ``cleaning:`` axis has runs of every (cleaner, loss): results.parquet's ``cleaning`` (the
entry's label, "none" where the noisy pairs are trained as they are), ``cleaning_judge`` and the
``cleaning_*`` metrics of each run (precision, recall, F1 and AUROC of the judge against the flip record,
the noise left, the pairs left). This module

- folds the cleaner into the method label for the general sections of the report
  (``reward_model+dpo``; a with/without base likewise), keeping the loss's own label in ``loss_label``,
  and keeps the cleaned references out of them (`ranked_runs`): runs whose cleaning read the flip record
  or the realised rate, drawn and used for headroom, never ranked;
- writes the cleaning finding: per condition and flip rate, the baseline, the oracle, the best cleaner
  (with the baseline loss), the best robust loss (without cleaning) and the best combination, each with
  the share of the oracle's headroom it recovers.

The report's section that lays these out, with each judge's recall at its budget against the held-out
accuracy after cleaning, is `noisypref.reports.cleaning_section`.

The headroom numbers are `noisypref.reports.headroom`'s, one definition: its oracle (`oracle_label`: the
``clean_only`` reference with the baseline's method and hyperparameters, the ``oracle`` judge removing the
flipped pairs or issue 22's method entry), its headroom (`headroom_at`, once per rate) and its share
(`recovered_share`: Fieller's interval, per-item values where the runs wrote them). The "best" of each
role is picked post hoc, and the report says so (`POST_HOC_NOTE`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pandas as pd

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.findings import Cells, ItemsLookup, no_items
from noisypref.reports.headroom import (
    format_share,
    headroom_at,
    oracle_label,
    recovered_share,
    share_interval,
)
from noisypref.reports.study import (
    BASE_LABEL,
    COMPETITOR,
    CONDITION_KEYS,
    METHOD,
    RATE,
    REFERENCE,
    SUCCEEDED,
    percent,
)
from noisypref.reports.tables import DASH, Table, format_interval, format_number

logger = logging.getLogger(__name__)

CLEANING = "cleaning"
CLEANING_JUDGE = "cleaning_judge"
LOSS_LABEL = "loss_label"
NO_CLEANING = "none"
ORACLE_JUDGE = "oracle"
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

ROLES = ("best cleaner", "best robust loss", "best combination")
POST_HOC_NOTE = (
    "The best cleaner, robust loss and combination are picked after the fact, as the highest mean among "
    "their candidates; their intervals are not adjusted for that selection among many, so they overstate "
    "how sure the pick is."
)


@dataclass(frozen=True)
class CleaningFinding:
    condition: tuple
    rate: float
    metric: str
    oracle: str  # the oracle's method label (`headroom.oracle_label`)
    headroom: dict  # `headroom.headroom_at`: headroom, its interval, whether defined, both means, n_seeds
    rows: list[tuple[str, str, int, dict]]  # (role, method label, candidates, `headroom.recovered_share`)
    note: str = ""  # where the oracle is not the baseline's own method (`headroom.oracle_label`)


def _best(runs: pd.DataFrame, metric: str, sign: float) -> tuple[str | None, int]:
    """The method label with the best mean of ``metric`` (sign +1: highest) and the number of candidates."""
    means = runs.groupby(METHOD)[metric].mean().dropna()
    if means.empty:
        return None, 0
    return str((means * sign).idxmax()), len(means)


def cleaning_findings(
    results: pd.DataFrame, metric: str, baseline: str, declaration: MetricDeclaration,
    items: ItemsLookup = no_items,
) -> list[CleaningFinding]:  # fmt: skip
    """Per condition and flip rate above 0: the best cleaner, robust loss and combination against the
    baseline and the oracle, by the headroom module's one procedure (its oracle, `headroom_at` once per
    rate and `recovered_share`). ``results`` as `fold_cleaning_into_labels` leaves them."""
    if metric not in results:
        return []
    runs = results[(results["status"] == SUCCEEDED) & results[metric].notna()]
    sign = declaration.sign() or 1.0
    # references (the oracle, known-rate runs, cleaned or not) are never candidates for "best"
    competing = ~cleaned_references(runs) & (runs[REFERENCE].fillna(COMPETITOR) == COMPETITOR)
    found = []
    for condition, condition_runs in runs.groupby(list(CONDITION_KEYS), sort=True):
        oracle, note = oracle_label(condition_runs, baseline)
        if oracle is None or baseline not in set(condition_runs[METHOD]):
            continue
        by_label = dict(tuple(condition_runs.groupby(METHOD, sort=True)))
        oracle_cells, baseline_cells = Cells(by_label[oracle], metric, items), Cells(by_label[baseline], metric, items)
        candidates = condition_runs[competing.loc[condition_runs.index]]
        uncleaned = candidates[CLEANING_JUDGE] == NO_CLEANING
        with_baseline = candidates[LOSS_LABEL] == baseline
        roles = dict(zip(ROLES, (candidates[~uncleaned & with_baseline], candidates[uncleaned & ~with_baseline],
                                 candidates[~uncleaned & ~with_baseline])))  # fmt: skip
        for rate in sorted(rate for rate in set(condition_runs[RATE]) if rate > 0):
            measured = headroom_at(oracle_cells, baseline_cells, rate, declaration)
            if measured is None:
                continue
            rows = []
            for role, role_runs in roles.items():
                label, count = _best(role_runs[role_runs[RATE] == rate], metric, sign)
                if label is None:
                    continue
                recovery = recovered_share(Cells(by_label[label], metric, items), baseline_cells, oracle_cells, rate,
                                           measured["headroom_defined"], labels=(label, baseline, oracle),
                                           headroom_seeds=measured["n_seeds"])  # fmt: skip
                rows.append((role, label, count, recovery))
            found.append(CleaningFinding(tuple(condition), float(rate), metric, oracle, measured, rows, note))
    return found


def _share_words(recovery: dict) -> str:
    if math.isnan(recovery["share"]):
        return ""
    return (f", recovering {format_share(recovery['share'])} of the headroom "
            f"{share_interval(recovery['share_low'], recovery['share_high'])}")  # fmt: skip


def finding_sentence(finding: CleaningFinding, baseline: str, declaration: MetricDeclaration) -> str:
    label, measured = declaration.label, finding.headroom
    opening = (
        f"At {percent(finding.rate)} flips, {baseline} reaches {format_number(measured['baseline_mean'])} {label} and "
        f"the oracle {finding.oracle} (the flipped pairs removed) {format_number(measured['oracle_mean'])}: a headroom "
        f"of {format_number(measured['headroom'])} {format_interval(measured['headroom_low'], measured['headroom_high'])} "
        f"over {measured['n_seeds']} seed(s)"
    )
    if not measured["headroom_defined"]:
        opening += (
            " — not established (its 95 % interval includes zero or lies on the worse side, or too few seeds), so no "
            "recovered share is given"
        )
    parts = [
        f"the {role} (of {count}) is {method} ({format_number(recovery['method_mean'])}{_share_words(recovery)})"
        for role, method, count, recovery in finding.rows
    ]
    if not parts:
        return opening + "."
    comparisons = "; ".join(parts)
    return f"{opening}. {comparisons[0].upper()}{comparisons[1:]}."


def findings_table(
    found: list[CleaningFinding], title: str, stem: str, baseline: str, declaration: MetricDeclaration
) -> Table | None:
    if not found:
        return None
    rows = []
    for finding in found:
        measured = finding.headroom
        by_role = {role: (method, recovery) for role, method, _, recovery in finding.rows}
        cells = [percent(finding.rate), format_number(measured["baseline_mean"]), format_number(measured["oracle_mean"]),
                 format_number(measured["headroom"]) + ("" if measured["headroom_defined"] else " (n.s.)")]  # fmt: skip
        for role in ROLES:
            if role not in by_role:
                cells.append(DASH)
                continue
            method, recovery = by_role[role]
            share = "" if math.isnan(recovery["share"]) else f" ({format_share(recovery['share'])})"
            cells.append(f"{method} {format_number(recovery['method_mean'])}{share}")
        rows.append(cells)
    oracles = sorted({finding.oracle for finding in found})
    return Table(
        stem=stem,
        caption=f"{title}: {declaration.label}, the best cleaner, robust loss and combination against {baseline} "
        "and the oracle, with the share of the headroom each recovers",
        header=["rate", baseline, "oracle", "headroom", *ROLES],
        rows=rows,
        notes=[
            "headroom = oracle − baseline, mean over seeds (n.s.: not established — its 95 % interval includes "
            "zero or lies on the worse side, or too few seeds; then no share is given); share = (method − baseline) / headroom, paired by seed, as in the headroom "
            "table of the findings",
            f"the oracle is {', '.join(oracles)}: the baseline's method trained without the flipped pairs, a "
            "reference, never a candidate; the best of each role is picked after the fact (the note above)",
        ],
        align="l" + "r" * 3 + "l" * 3,
    )
