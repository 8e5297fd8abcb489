"""The findings paragraph: templated sentences written from the findings and ranking tables.

Every number a sentence states is formatted exactly as the tables format it (``tables.format_*``),
so that a reader can find it in the headline table (differences, intervals, p-values, seeds) or the
ranking table (a method's value at the highest rate, its AUC).
"""

from __future__ import annotations

import math

import pandas as pd

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.findings import AUC, BETTER, DIFFERS, TOO_FEW, VALUE, WORSE
from noisypref.reports.study import METHOD, RATE, percent
from noisypref.reports.tables import (
    condition_rows,
    format_interval,
    format_number,
    format_pvalue,
    format_signed,
)

MAX_NAMED = 3  # methods named per sentence; the rest are counted


def _statistics(row: pd.Series) -> str:
    """'+0.150, Holm-level interval [0.120, 0.180], p = 0.003, 8 seeds' (Holm-adjusted p; the interval
    excludes 0 exactly when the verdict is better or worse)."""
    parts = [format_signed(row["mean_difference"])]
    if row["n_pairs"] >= 2 and not math.isnan(row["ci_low"]):
        parts.append(f"Holm-level interval {format_interval(row['ci_low'], row['ci_high'])}")
    if not math.isnan(row["t_pvalue_holm"]):
        value = format_pvalue(row["t_pvalue_holm"])
        parts.append(f"p < {value[1:]}" if value.startswith("<") else f"p = {value}")
    parts.append(f"{int(row['n_pairs'])} seed{'s' if row['n_pairs'] != 1 else ''}")
    return ", ".join(parts)


def _named(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    ordered = rows.reindex(rows["mean_difference"].abs().sort_values(ascending=False).index)
    return ordered.head(MAX_NAMED), max(0, len(ordered) - MAX_NAMED)


def condition_paragraphs(
    found: pd.DataFrame,
    ranked: dict[str, pd.DataFrame],
    condition: tuple,
    noise_model: str,
    metrics: list[str],
    declarations: dict[str, MetricDeclaration],
    baseline: str,
) -> dict[str, str]:
    """One paragraph per primary metric of one condition (metric -> text; none where the metric has no
    comparison): the verdicts at the highest rate and on the AUC."""
    paragraphs = {}
    rows = condition_rows(found, condition)
    for metric in metrics:
        if sentences := _metric_sentences(rows, ranked, noise_model, metric, declarations[metric], baseline):
            paragraphs[metric] = " ".join(sentences)
    return paragraphs


def _metric_sentences(
    rows: pd.DataFrame, ranked: dict[str, pd.DataFrame], noise_model: str, metric: str,
    declaration: MetricDeclaration, baseline: str,
) -> list[str]:  # fmt: skip
    sentences = []
    label = declaration.label
    metric_rows = rows[rows["metric"] == metric]
    if metric_rows.empty:
        return sentences
    values = metric_rows[metric_rows["quantity"] == VALUE]
    highest = values[RATE].max()
    at_highest = values[values[RATE] == highest]
    ranking = ranked.get(metric, pd.DataFrame())
    level = dict(zip(ranking[METHOD], ranking["value_at_highest"])) if not ranking.empty else {}
    where = f"Under {noise_model} noise at {percent(highest)} flips"
    if (at_highest["verdict"] == TOO_FEW).all():
        sentences.append(
            f"{where}, {label}: too few seeds ({int(at_highest['n_pairs'].max())}) to call any difference "
            f"from {baseline}."
        )
        return sentences
    decided = at_highest[at_highest["verdict"].isin([BETTER, WORSE, DIFFERS])]
    if decided.empty:
        largest = at_highest.loc[at_highest["mean_difference"].abs().idxmax()]
        sentences.append(
            f"{where}, no method's {label} differs detectably from {baseline}'s "
            f"{format_number(level.get(baseline, math.nan))} (largest difference: {largest[METHOD]}, "
            f"{_statistics(largest)})."
        )
    else:
        named, more = _named(decided)
        clauses = []
        for _, row in named.iterrows():
            verb = {BETTER: "keeps", WORSE: "falls to", DIFFERS: "reaches"}[row["verdict"]]
            clauses.append(
                f"{row[METHOD]} {verb} {format_number(level.get(row[METHOD], math.nan))} {label} against "
                f"{format_number(level.get(baseline, math.nan))} for {baseline} ({_statistics(row)})"
            )
        tail = f"; {more} more method(s) differ detectably (headline table)" if more else ""
        sentences.append(f"{where}, " + "; ".join(clauses) + tail + ".")
    auc_rows = metric_rows[metric_rows["quantity"] == AUC]
    if auc_rows.empty:
        return sentences
    if declaration.ranked:
        parts = []
        for word in (BETTER, WORSE):
            chosen = auc_rows[auc_rows["verdict"] == word]
            if chosen.empty:
                continue
            named, more = _named(chosen)
            listed = "; ".join(f"{row[METHOD]} {_statistics(row)}" for _, row in named.iterrows())
            parts.append(f"{len(chosen)} {word} than {baseline} ({listed}{f'; {more} more' if more else ''})")
        rest = len(auc_rows) - sum(auc_rows["verdict"].isin([BETTER, WORSE]))
        if rest:
            parts.append(f"{rest} without a detectable difference or with too few seeds")
        sentences.append(f"On the robustness AUC of {label}: " + ", ".join(parts) + ".")
        if not ranking.empty:
            first, others = ranking.iloc[0], ranking.iloc[1:]
            overlapping = int(((others["ci_low"] <= first["ci_high"]) & (others["ci_high"] >= first["ci_low"])).sum())
            extreme = "highest" if declaration.direction == "higher" else "lowest"
            overlap = (
                "its interval overlaps no other method's" if not overlapping
                else f"its interval overlaps those of {overlapping} other method(s), so no single best"
            )  # fmt: skip
            sentences.append(
                f"{first[METHOD]} has the {extreme} AUC ({format_number(first['auc'])}, 95 % interval "
                f"{format_interval(first['ci_low'], first['ci_high'])}); {overlap}."
            )
    return sentences
