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
  the share of the oracle's headroom it recovers (`recovered_share`, by the report's one procedure);
- draws each judge's recall at its budget against the held-out accuracy after cleaning.

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
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from noisypref.reports.declarations import MetricDeclaration, MetricDeclarations
from noisypref.reports.document import FigureBlock, Note, ReportSection, TableBlock, Text
from noisypref.reports.figures import (
    MARKERS,
    PAPER_STYLE,
    fitted_legend,
    hide_unused,
    method_styles,
    panel_grid,
)
from noisypref.reports.procedure import CONFIDENCE, excludes_zero, fieller_interval, paired_t, sample
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, SEED, SUCCEEDED, percent
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
SECTION_TITLE = "Cleaning against robust losses"


def has_cleaning(results: pd.DataFrame) -> bool:
    return CLEANING in results and bool((results[CLEANING].astype(str) != NO_CLEANING).any())


def fold_cleaning_into_labels(results: pd.DataFrame) -> pd.DataFrame:
    """``method_label`` of a cleaned run becomes ``<cleaning>+<method>``; the loss's own label is kept in
    ``loss_label``. A table without a cleaning column (an older study) gets ``cleaning`` "none"."""
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
    return results


def ranked_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The runs the general sections compare: every run but those cleaned by the oracle (a reference)."""
    if CLEANING_JUDGE not in results:
        return results
    return results[results[CLEANING_JUDGE] != ORACLE_JUDGE]


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
    not_reference = runs["reference"].fillna("none") == "none" if "reference" in runs else pd.Series(True, index=runs.index)
    found = []
    for keys, group in runs.groupby([*CONDITION_KEYS, RATE], sort=True):
        condition, rate = tuple(keys[:-1]), float(keys[-1])
        if rate <= 0:
            continue
        uncleaned = group[CLEANING_JUDGE] == NO_CLEANING
        judged = ~uncleaned & (group[CLEANING_JUDGE] != ORACLE_JUDGE)
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


# ---------------------------------------------------------------------------------------------
# Detection quality


def _detection_cell(values: pd.Series, column: str) -> str:
    if not values.notna().any():
        return DASH
    return f"{values.mean():.0f}" if column == "cleaning_pairs_left" else format_number(values.mean())


def detection_table(
    results: pd.DataFrame, condition: tuple, title: str, stem: str, metric: str, metric_label: str
) -> Table | None:
    """Per flip rate and cleaning entry: the judge's detection metrics (means over runs) and ``metric`` of
    each loss trained on its cleaned data (mean over seeds)."""
    runs = results[(results["status"] == SUCCEEDED)]
    for key, value in zip(CONDITION_KEYS, condition, strict=True):
        runs = runs[runs[key] == value]
    if runs.empty or metric not in runs:
        return None
    losses = sorted(set(runs[LOSS_LABEL]))
    detection = [(column, label) for column, label in DETECTION_METRICS if column in runs]
    rows = []
    for (rate, cleaning), group in runs.groupby([RATE, CLEANING], sort=True):
        cells = [percent(rate), cleaning]
        cells += [_detection_cell(group[column], column) for column, _ in detection]
        for loss in losses:
            values = group.loc[group[LOSS_LABEL] == loss, metric].dropna()
            cells.append(format_number(values.mean()) if len(values) else DASH)
        rows.append(cells)
    return Table(
        stem=stem,
        caption=f"{title}: each cleaning judge's detection of the flipped pairs at its budget, and {metric_label} of "
        "each loss trained on what it left (one column per loss)",
        header=["rate", "cleaning", *(label for _, label in detection), *losses],
        rows=rows,
        notes=["means over seeds (the detection metrics are one judge's record, shared by every loss)"],
        align="ll" + "r" * (len(detection) + len(losses)),
    )


def detection_figure(results: pd.DataFrame, metric: str, declaration: MetricDeclaration,
                     titles: dict[tuple, str]) -> Figure | None:  # fmt: skip
    """Recall at the judge's budget (x) against ``metric`` after cleaning (y): one panel per condition and
    rate above 0, one point per (cleaning entry, loss), mean over seeds; no cleaning stands at recall 0."""
    runs = results[(results["status"] == SUCCEEDED) & (results[RATE] > 0)]
    if runs.empty or metric not in runs or RECALL not in runs:
        return None
    runs = runs.assign(**{RECALL: runs[RECALL].where(runs[CLEANING_JUDGE] != NO_CLEANING, 0.0)})
    points = runs.groupby([*CONDITION_KEYS, RATE, CLEANING, LOSS_LABEL], sort=True)[[RECALL, metric]].mean().dropna()
    if points.empty:
        return None
    panels = sorted({key[: len(CONDITION_KEYS) + 1] for key in points.index})
    cleanings = sorted({key[-2] for key in points.index})
    losses = sorted({key[-1] for key in points.index})
    colours = method_styles(cleanings)
    markers = {loss: MARKERS[index % len(MARKERS)] for index, loss in enumerate(losses)}
    with matplotlib.rc_context(PAPER_STYLE):
        figure, axes = panel_grid(len(panels))
        for ax, panel in zip(axes.flat, panels):
            panel_points = points.loc[panel]
            for (cleaning, loss), (recall, value) in panel_points.iterrows():
                ax.plot([recall], [value], linestyle="none", marker=markers[loss], color=colours[cleaning].colour,
                        markerfacecolor="none" if cleaning == ORACLE_JUDGE else colours[cleaning].colour)  # fmt: skip
            condition_title = titles.get(tuple(panel[:-1]), " · ".join(map(str, panel[:-1])))
            ax.set_title(f"{condition_title} · {percent(panel[-1])} flips")
            ax.set_xlabel("recall of the flipped pairs at the judge's budget")
            ax.set_ylabel(declaration.label)
            ax.set_xlim(-0.04, 1.04)
        hide_unused(axes, len(panels))
        handles = [Line2D([], [], linestyle="none", marker="s", color=colours[c].colour, label=c) for c in cleanings]
        handles += [Line2D([], [], linestyle="none", marker=markers[loss], color="black", markerfacecolor="none",
                           label=f"loss: {loss}") for loss in losses]  # fmt: skip
        fitted_legend(figure, handles)
    return figure


# ---------------------------------------------------------------------------------------------
# The section


def cleaning_sections(
    results: pd.DataFrame,
    baseline: str,
    metrics: list[str],
    declarations: MetricDeclarations,
    titles: dict[tuple, str],
    add_table: Callable[[Table | None], TableBlock | None],
    add_figure: Callable[..., object],
    stem: Callable[..., str],
) -> list[ReportSection]:
    """The report's cleaning section (empty for a study without cleaning). ``results`` as
    `fold_cleaning_into_labels` leaves them; ``metrics`` the primary metrics (the first drawn);
    ``add_table`` / ``add_figure`` / ``stem`` the report's own helpers."""
    if not has_cleaning(results) or not metrics:
        return []
    blocks: list = [Text(
        "Cleaning changes the data before training (a judge flags the pairs it distrusts; they are removed or "
        "their labels swapped); robust losses change the objective. Both are measured against the same noisy "
        "data and the oracle, which removes exactly the flipped pairs. Judges are scored against the flip "
        "record: precision, recall, F1 at their budget and AUROC of their scores (docs/cleaning.md)."
    )]  # fmt: skip
    for metric in metrics:
        declaration = declarations.get(metric)
        found = cleaning_findings(results, metric, baseline, declaration)
        if not found:
            blocks.append(Note(f"{declaration.label}: no rate above 0 has both {baseline} without cleaning and the "
                               "oracle; no headroom to share."))  # fmt: skip
            continue
        for condition in sorted({finding.condition for finding in found}):
            of_condition = [finding for finding in found if finding.condition == condition]
            blocks += [Text(finding_sentence(finding, baseline, declaration)) for finding in of_condition]
            table = add_table(findings_table(of_condition, titles.get(condition, str(condition)),
                                             stem("cleaning-finding", metric, *condition), baseline, declaration))  # fmt: skip
            if table is not None:
                blocks.append(table)
    primary = metrics[0]
    figure = detection_figure(results, primary, declarations.get(primary), titles)
    if figure is not None:
        files = add_figure(figure, "cleaning-detection", primary)
        blocks.append(FigureBlock(files, (
            f"Recall of each judge at its budget (share of the flipped pairs it flagged) against "
            f"{declarations.get(primary).label} after cleaning, mean over seeds; colour: the cleaning entry "
            "(open: the oracle, a reference), marker: the loss; without cleaning, recall is 0."
        )))  # fmt: skip
    for condition, title in titles.items():
        table = add_table(detection_table(
            results, condition, title, stem("cleaning-detection", *condition), primary, declarations.get(primary).label
        ))  # fmt: skip
        if table is not None:
            blocks.append(table)
    return [ReportSection(SECTION_TITLE, blocks)]
