"""With and without: each method that is a base method plus a margin estimator against its own base.

The pairs come from two places:

- results.parquet's ``base_label``: for a method that is a base method plus a margin estimator
  (gamma_dpo, gamma_simpo), the label of the study's variant that is its own base with the same β
  (dpo, simpo). A pair whose two labels record different β (``hp_beta``) is not formed, with a note;
- study.yaml's ``report.pairs`` (``[{method: LABEL, base: LABEL}]``): any further pair the study asks
  for, taken as declared.

Each pair is compared as the findings compare a method with the baseline (``findings.compare_family``):
method − base per rate and on the robustness AUC, paired by seed, Holm over the pairs of one metric in
one condition, the interval at each test's Holm level and the verdict read from it. References are
never paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from noisypref.report_settings import DeclaredPair
from noisypref.reports.declarations import MetricDeclarations
from noisypref.reports.findings import AUC, FINDINGS_COLUMNS, VALUE, ItemsLookup, compare_family, no_items
from noisypref.reports.study import BASE_LABEL, CONDITION_KEYS, METHOD, RATE, competitor_runs, percent
from noisypref.reports.tables import (
    DASH,
    Table,
    condition_rows,
    finding_cell,
    format_interval,
    format_pvalue,
    format_signed,
)

BETA = "hp_beta"


@dataclass(frozen=True)
class Pair:
    method: str
    base: str
    declared: bool  # from study.yaml's report.pairs (else from base_label)

    @property
    def name(self) -> str:
        return f"{self.method} − {self.base}"


def resolve_pairs(runs: pd.DataFrame, declared: tuple[DeclaredPair, ...] = ()) -> tuple[list[Pair], list[str]]:
    """The with/without pairs of a study's runs and notes on the ones that could not be formed."""
    runs = competitor_runs(runs)
    labels = set(runs[METHOD])
    pairs: list[Pair] = []
    notes: list[str] = []
    if BASE_LABEL in runs:
        with_base = runs[runs[BASE_LABEL].notna()].drop_duplicates([METHOD, BASE_LABEL])
        for method, base in sorted(zip(with_base[METHOD], with_base[BASE_LABEL].astype(str))):
            if base not in labels:
                notes.append(f"{method}'s base {base!r} is not a competing method label of the study: not paired.")
                continue
            betas = {label: _betas(runs, label) for label in (method, base)}
            if betas[method] and betas[base] and betas[method] != betas[base]:
                notes.append(
                    f"{method} (β {', '.join(map(str, sorted(betas[method])))}) and its base {base} "
                    f"(β {', '.join(map(str, sorted(betas[base])))}) differ in β: not paired."
                )
                continue
            pairs.append(Pair(method, base, declared=False))
    for entry in declared:
        missing = [label for label in (entry.method, entry.base) if label not in labels]
        if missing:
            notes.append(
                f"Declared pair {entry.method} − {entry.base}: {', '.join(missing)} not a competing method "
                "label of the study: skipped."
            )
        elif not any(pair.method == entry.method and pair.base == entry.base for pair in pairs):
            pairs.append(Pair(entry.method, entry.base, declared=True))
    return pairs, notes


def _betas(runs: pd.DataFrame, label: str) -> set:
    if BETA not in runs:
        return set()
    values = pd.to_numeric(runs.loc[runs[METHOD] == label, BETA], errors="coerce").dropna()
    return set(np.round(values.to_numpy(dtype=float), 12))


def pair_findings(
    runs: pd.DataFrame, metrics: list[str], pairs: list[Pair], declarations: MetricDeclarations,
    items: ItemsLookup = no_items,
) -> pd.DataFrame:  # fmt: skip
    """Every pair per condition, metric, rate and on the AUC; columns ``FINDINGS_COLUMNS`` (``baseline``
    holds the pair's base) plus ``declared``."""
    rows = []
    declared = {(pair.method, pair.base): pair.declared for pair in pairs}
    for condition, condition_runs in competitor_runs(runs).groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        for metric in metrics:
            declaration = declarations.get(metric)
            if not declaration.comparable:
                continue
            family = compare_family(condition_runs, metric, list(declared), declaration, items)
            rows += [{**key, **row, "declared": declared[(row[METHOD], row["baseline"])]} for row in family]
    return pd.DataFrame(rows, columns=[*FINDINGS_COLUMNS, "declared"])


def pairs_table(found: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str, label: str) -> Table | None:
    """Pairs × (each rate, AUC): method − base with the Holm-level interval, Holm p and verdict."""
    rows = condition_rows(found, condition)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return None
    rates = sorted(set(rows[RATE].dropna()))
    cells = []
    for (method, base), pair_rows in rows.groupby([METHOD, "baseline"], sort=False):
        line = [f"{method} − {base}" + (" (declared)" if pair_rows["declared"].iloc[0] else "")]
        for rate in rates:
            at_rate = pair_rows[(pair_rows["quantity"] == VALUE) & (pair_rows[RATE] == rate)]
            line.append(finding_cell(at_rate.iloc[0]) if len(at_rate) else DASH)
        auc = pair_rows[pair_rows["quantity"] == AUC]
        line.append(finding_cell(auc.iloc[0]) if len(auc) else DASH)
        cells.append(line)
    return Table(
        stem=stem,
        caption=(
            f"{title}: with and without — {label} ({metric}) of each method minus its own base (same β; "
            "'declared': a pair study.yaml's report.pairs asks for), paired by seed: mean difference, the "
            "interval at the test's Holm level, Holm-adjusted p, verdict."
        ),
        header=["pair", *(percent(rate) for rate in rates), "AUC"],
        rows=cells,
        notes=[
            "One procedure per verdict: the interval is the paired t interval at the level Holm's step-down "
            "used for that test over this table, so it excludes 0 exactly when the verdict is better or worse."
        ],
        align="l" * (len(rates) + 2),
    )


def with_without_sentence(found: pd.DataFrame, condition: tuple, metrics: list[str], labels: dict[str, str]) -> str:
    """"Dynamic margins on dpo (gamma_dpo − dpo): held-out accuracy at 40 % flips …, AUC …; on simpo
    …": the first finding of a report. ``labels``: metric -> its label."""
    rows = condition_rows(found, condition)
    clauses = []
    first_margin = True
    for (method, base), pair_rows in rows.groupby([METHOD, "baseline"], sort=False):
        parts = []
        for metric in metrics:
            metric_rows = pair_rows[pair_rows["metric"] == metric]
            values = metric_rows[metric_rows["quantity"] == VALUE]
            if values.empty:
                continue
            top = values.loc[values[RATE].idxmax()]
            text = f"{labels[metric]} at {percent(top[RATE])} flips {_cell_words(top)}"
            auc = metric_rows[metric_rows["quantity"] == AUC]
            if len(auc):
                text += f", robustness AUC {_cell_words(auc.iloc[0])}"
            parts.append(text)
        if not parts:
            continue
        if pair_rows["declared"].iloc[0]:
            head = f"declared pair {method} − {base}"
        else:
            head = f"{'Dynamic margins on' if first_margin else 'on'} {base} ({method} − {base})"
            first_margin = False
        clauses.append(f"{head}: " + "; ".join(parts))
    if not clauses:
        return ""
    text = "; ".join(clauses) + "."
    return text[0].upper() + text[1:]


def _cell_words(row: pd.Series) -> str:
    """'+0.002 [−0.010, 0.014], p 1.000: no detectable difference'."""
    parts = [format_signed(row["mean_difference"])]
    if not math.isnan(row["ci_low"]):
        parts.append(format_interval(row["ci_low"], row["ci_high"]))
    text = " ".join(parts)
    if not math.isnan(row["t_pvalue_holm"]):
        text += f", p {format_pvalue(row['t_pvalue_holm'])}"
    return f"{text}: {row['verdict']}"
