"""Robustness, not level: each method's drop from its own clean level, and where primary metrics disagree.

A method that is ahead at 0 % flips stays ahead at 40 % without being any more robust. The drop of a
method is its value at the lowest rate minus its value at the highest, per seed (the same method's two
runs of a seed evaluate the same held-out items), with the 95 % interval of ``procedure.paired_t``.
References have no 0 % runs and no drop.

Two primary metrics disagree on a comparison where, at the highest rate or on the AUC, a method is
*better* than the baseline on one and *worse* on the other; the findings then say so in one sentence
instead of leading with either.
"""

from __future__ import annotations

import pandas as pd

from noisypref.reports.declarations import MetricDeclarations
from noisypref.reports.findings import AUC, BETTER, VALUE, WORSE, Cells, ItemsLookup, no_items, paired_sample
from noisypref.reports.procedure import CONFIDENCE, paired_t
from noisypref.reports.statistics import rate_axis
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, competitor_runs, percent
from noisypref.reports.tables import Table, condition_rows, format_interval, format_number, format_signed

DROP_COLUMNS = [*CONDITION_KEYS, "metric", METHOD, "clean_rate", "top_rate", "n_seeds", "clean_mean", "top_mean",
                "drop", "ci_low", "ci_high", "note"]  # fmt: skip


def drops(
    runs: pd.DataFrame, metrics: list[str], declarations: MetricDeclarations, items: ItemsLookup = no_items
) -> pd.DataFrame:
    """One row per condition, metric and competing method: value at the lowest and highest rate and the
    drop between them (seeds with both). Columns ``DROP_COLUMNS``."""
    rows = []
    for condition, condition_runs in competitor_runs(runs).groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        rates = list(rate_axis(condition_runs).index)
        if len(rates) < 2:
            continue
        clean, top = rates[0], rates[-1]
        for metric in metrics:
            if not declarations.get(metric).comparable:
                continue
            for label, method_runs in condition_runs.groupby(METHOD, sort=True):
                cells = Cells(method_runs, metric, items)
                seeds = cells.seeds([clean, top])
                if not seeds:
                    continue
                drop_sample, _, _ = paired_sample(cells, None, seeds, {clean: 1.0, top: -1.0})
                test = paired_t(drop_sample)
                low, high = test.interval(1 - CONFIDENCE)
                rows.append({
                    **key, "metric": metric, METHOD: label, "clean_rate": clean, "top_rate": top,
                    "n_seeds": test.n, "clean_mean": sum(cells.value[(s, clean)] for s in seeds) / len(seeds),
                    "top_mean": sum(cells.value[(s, top)] for s in seeds) / len(seeds), "drop": test.mean,
                    "ci_low": low, "ci_high": high, "note": test.note,
                })  # fmt: skip
    return pd.DataFrame(rows, columns=DROP_COLUMNS)


def drop_table(rows: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str, label: str) -> Table | None:
    rows = condition_rows(rows, condition)
    rows = rows[rows["metric"] == metric].sort_values("drop")
    if rows.empty:
        return None
    clean, top = percent(rows["clean_rate"].iloc[0]), percent(rows["top_rate"].iloc[0])
    cells = [
        [row[METHOD], format_number(row["clean_mean"]), format_number(row["top_mean"]),
         f"{format_signed(row['drop'])} {format_interval(row['ci_low'], row['ci_high'])}".strip(), row["note"] or ""]
        for _, row in rows.iterrows()
    ]  # fmt: skip
    return Table(
        stem=stem,
        caption=(
            f"{title}: robustness, not level — {label} ({metric}) of each method at {clean} and {top} flips and its "
            f"drop from its own {clean} level (value at {clean} minus value at {top}, per seed), with its 95 % "
            "paired-t interval; smallest drop first."
        ),
        header=["method", f"at {clean}", f"at {top}", "drop [95 % interval]", "note"],
        rows=cells,
        align="lrrll",
    )


def drop_sentence(rows: pd.DataFrame, condition: tuple, metric: str, label: str) -> str:
    rows = condition_rows(rows, condition)
    rows = rows[rows["metric"] == metric].sort_values("drop")
    if rows.empty:
        return ""
    clean, top = percent(rows["clean_rate"].iloc[0]), percent(rows["top_rate"].iloc[0])
    listed = ", ".join(
        f"{row[METHOD]} {format_signed(row['drop'])} {format_interval(row['ci_low'], row['ci_high'])} "
        f"(from {format_number(row['clean_mean'])})"
        for _, row in rows.iterrows()
    )
    return f"Drop of {label} from each method's own {clean} level to {top} flips: {listed}."


def disagreement_sentence(found: pd.DataFrame, condition: tuple, metrics: list[str], labels: dict[str, str]) -> str:
    """One sentence naming the comparisons on which two primary metrics give opposite verdicts."""
    rows = condition_rows(found, condition)
    clashes = []
    for index, first in enumerate(metrics):
        for second in metrics[index + 1:]:
            for (method, quantity), group in rows[rows["metric"].isin([first, second])].groupby([METHOD, "quantity"]):
                if quantity == VALUE:
                    group = group[group[RATE] == group[RATE].max()]
                verdicts = dict(zip(group["metric"], group["verdict"]))
                differences = dict(zip(group["metric"], group["mean_difference"]))
                if {verdicts.get(first), verdicts.get(second)} == {BETTER, WORSE}:
                    where = "on the AUC" if quantity == AUC else f"at {percent(group[RATE].iloc[0])} flips"
                    clashes.append(
                        f"{method} {where} is {verdicts[first]} on {labels[first]} "
                        f"({format_signed(differences[first])}) but {verdicts[second]} on {labels[second]} "
                        f"({format_signed(differences[second])})"
                    )
    if not clashes:
        return ""
    baseline = rows["baseline"].iloc[0]
    return (
        f"The primary metrics disagree against {baseline}: " + "; ".join(clashes)
        + ". Neither metric alone says which method holds up; read both."
    )
