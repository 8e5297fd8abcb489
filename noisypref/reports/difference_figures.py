"""Figures that show what the tables claim: differences from the baseline, and per-method panels.

- ``difference_figure``: each method minus the baseline against the realised flip rate, one panel per
  condition, with the interval the headline table prints beside each verdict (the Holm-level
  interval), on an axis fitted to the differences; a zero line; the oracle's headroom (oracle −
  baseline, with its 95 % interval) dashed as a reference: the line a method would reach by
  recovering everything noise cost.
- ``per_method_figure``: a metric whose values are not comparable across methods (losses of different
  functions) as one small panel per method, each with its own y scale.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.figures import (
    DODGE,
    PAPER_STYLE,
    MethodStyle,
    hide_unused,
    method_legend,
    panel_grid,
)
from noisypref.reports.study import METHOD, RATE, REALISED_RATE
from noisypref.reports.tables import condition_rows

PER_METHOD_COLUMNS = 4


def _percent_axis(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda rate, _: f"{100 * rate:.4g}%"))


def difference_figure(
    found: pd.DataFrame, metric: str, styles: dict[str, MethodStyle], titles: dict[tuple, str],
    declaration: MetricDeclaration, baseline: str, headroom: pd.DataFrame | None = None,
) -> Figure | None:  # fmt: skip
    """Each method − ``baseline`` (rows of ``findings``) per rate with its Holm-level interval; the
    oracle's headroom (rows of ``headroom.headroom``) dashed where given."""
    values = found[(found["metric"] == metric) & (found["quantity"] == "value")]
    panels = [(condition, title) for condition, title in titles.items() if len(condition_rows(values, condition))]
    if not panels:
        return None
    oracle_rows = pd.DataFrame()
    if headroom is not None and not headroom.empty:
        oracle_rows = headroom[(headroom["metric"] == metric) & (headroom["reference"] == "clean_only")]
    with matplotlib.rc_context(PAPER_STYLE):
        figure, axes = panel_grid(len(panels))
        shown = sorted(set(values[METHOD]))
        legend = list(shown)
        for ax, (condition, title) in zip(axes.flat, panels):
            rows = condition_rows(values, condition)
            span = max(float(rows[REALISED_RATE].max() - rows[REALISED_RATE].min()), 1e-9)
            ax.axhline(0.0, color="black", linewidth=0.8)
            for label, curve in rows.groupby(METHOD, sort=True):
                curve = curve.sort_values(RATE)
                style = styles[label]
                x = curve[REALISED_RATE].to_numpy() + DODGE * 2 * span * (shown.index(label) - (len(shown) - 1) / 2)
                mean = curve["mean_difference"].to_numpy()
                errors = np.vstack([mean - curve["ci_low"].to_numpy(), curve["ci_high"].to_numpy() - mean])
                ax.errorbar(x, mean, yerr=np.nan_to_num(errors), color=style.colour, marker=style.marker,
                            linestyle=style.line_style, markerfacecolor="none", capsize=2, linewidth=1.0,
                            elinewidth=0.8)  # fmt: skip
            oracle = condition_rows(oracle_rows, condition) if not oracle_rows.empty else oracle_rows
            if len(oracle):
                label = str(oracle[METHOD].iloc[0])
                oracle = oracle.sort_values(RATE)
                style = styles.get(label)
                colour = style.colour if style else "grey"
                ax.plot(oracle[REALISED_RATE], oracle["headroom"], color=colour, linestyle=(0, (5, 2)),
                        marker=style.marker if style else "x")  # fmt: skip
                ax.fill_between(oracle[REALISED_RATE], oracle["headroom_low"], oracle["headroom_high"],
                                color=colour, alpha=0.12, linewidth=0)  # fmt: skip
                if label not in legend:
                    legend.append(label)
            ax.set_title(title)
            ax.set_xlabel("realised flip rate")
            ax.set_ylabel(f"{declaration.label} − {baseline}")
            _percent_axis(ax)
        hide_unused(axes, len(panels))
        method_legend(figure, legend, styles)
    return figure


def per_method_figure(
    intervals: pd.DataFrame, metric: str, styles: dict[str, MethodStyle], declaration: MetricDeclaration,
) -> Figure | None:  # fmt: skip
    """One small panel per method, each with its own y scale: a metric not comparable across methods."""
    values = intervals[(intervals["metric"] == metric) & (intervals["quantity"] == "value")]
    labels = sorted(set(values[METHOD]))
    if not labels:
        return None
    with matplotlib.rc_context(PAPER_STYLE):
        columns = min(PER_METHOD_COLUMNS, len(labels))
        rows = math.ceil(len(labels) / columns)
        figure = Figure(figsize=(2.3 * columns, 1.7 * rows + 0.5), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False, sharex=True)
        for ax, label in zip(axes.flat, labels):
            style = styles[label]
            for _, curve in values[values[METHOD] == label].groupby(["dataset", "noise_model", "model"], sort=True):
                curve = curve.sort_values(RATE)
                ax.plot(curve[REALISED_RATE], curve["mean"], markerfacecolor="none", **style.line_kwargs())
                ax.fill_between(curve[REALISED_RATE], curve["ci_low"], curve["ci_high"], color=style.colour,
                                alpha=0.12, linewidth=0)  # fmt: skip
            ax.set_title(label)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
            _percent_axis(ax)
        for ax in axes[-1, :]:
            ax.set_xlabel("realised flip rate")
        for ax in axes[:, 0]:
            ax.set_ylabel(declaration.label)
        hide_unused(axes, len(labels))
    return figure


def is_constant(intervals: pd.DataFrame, metric: str) -> bool:
    """Whether every mean of ``metric`` (all conditions, methods and rates) is the same number: a constant
    such as the reference policy's gold reward, which a figure would only restate."""
    means = intervals.loc[(intervals["metric"] == metric) & (intervals["quantity"] == "value"), "mean"].dropna()
    if means.empty:
        return False
    return bool(np.ptp(means.to_numpy()) <= 1e-9 * max(1.0, float(np.abs(means).max())))
