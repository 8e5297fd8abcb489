"""The report's cleaning section: the cleaning finding per metric, and each judge's detection of the flips.

The numbers come from `noisypref.reports.cleaning` (the cleaner folded into the method label, the share
of the oracle's headroom each cleaner and loss recovers); this module lays them out: the finding's
sentences and tables, a figure of each judge's recall at its budget against the primary metric after
cleaning, and a table of the judges' detection metrics per condition.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from noisypref.reports.cleaning import (
    CLEANING,
    CLEANING_JUDGE,
    DETECTION_METRICS,
    LOSS_LABEL,
    NO_CLEANING,
    ORACLE_JUDGE,
    POST_HOC_NOTE,
    RECALL,
    cleaning_findings,
    finding_sentence,
    findings_table,
    has_cleaning,
)
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
from noisypref.reports.findings import ItemsLookup, no_items
from noisypref.reports.study import CONDITION_KEYS, RATE, SUCCEEDED, percent
from noisypref.reports.tables import DASH, Table, format_number

SECTION_TITLE = "Cleaning against robust losses"


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


def cleaning_sections(
    results: pd.DataFrame,
    baseline: str,
    metrics: list[str],
    declarations: MetricDeclarations,
    titles: dict[tuple, str],
    add_table: Callable[[Table | None], TableBlock | None],
    add_figure: Callable[..., object],
    stem: Callable[..., str],
    items: ItemsLookup = no_items,
) -> list[ReportSection]:
    """The report's cleaning section (empty for a study without cleaning). ``results`` as
    `fold_cleaning_into_labels` leaves them; ``metrics`` the primary metrics (the first drawn);
    ``add_table`` / ``add_figure`` / ``stem`` the report's own helpers; ``items`` the runs' per-item values."""
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
        found = cleaning_findings(results, metric, baseline, declaration, items)
        if not found:
            blocks.append(Note(f"{declaration.label}: no rate above 0 has both {baseline} without cleaning and the "
                               "oracle; no headroom to share."))  # fmt: skip
            continue
        for condition in sorted({finding.condition for finding in found}):
            of_condition = [finding for finding in found if finding.condition == condition]
            blocks += [Text(finding_sentence(finding, baseline, declaration)) for finding in of_condition]
            blocks += [Note(note) for note in sorted({finding.note for finding in of_condition if finding.note})]
            blocks.append(Note(POST_HOC_NOTE))
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
