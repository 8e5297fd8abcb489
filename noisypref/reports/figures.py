"""Figures of a report, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Every figure uses the same style per method label everywhere (``method_styles``): a colour from the
Okabe–Ito colour-blind-safe palette plus a marker and a line style, so that lines stay apart in
greyscale. Panels are a paper column wide (3.3 in) with text of 7–8 pt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, REALISED_RATE

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies. Yellow last: it is the weakest on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
LINE_STYLES = ("-", "--", ":", "-.")
FLIPPED_COLOUR, CLEAN_COLOUR = "#D55E00", "#0072B2"

PANEL_WIDTH_IN = 3.3
PANEL_HEIGHT_IN = 2.4
MAX_COLUMNS = 3
PNG_DPI = 200
PAPER_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "noisypref",  # stable ids in the SVG files
}

METRIC_NAMES = {
    "heldout_accuracy": "held-out accuracy",
    "noise_detection_auroc": "noise-detection AUROC (reward gap)",
    "noise_detection_auroc_gamma": "noise-detection AUROC (γ)",
    "gold_reward_mean": "mean gold reward",
    "gold_reward_reference_mean": "mean gold reward of the reference",
    "gold_win_rate": "gold win rate vs reference",
    "gold_lc_win_rate": "length-controlled gold win rate",
    "kl_estimate": "KL(π‖π_ref) estimate",
    "final_loss": "final training loss",
    "train_accuracy": "training accuracy",
    "alpaca_eval_win_rate": "AlpacaEval 2 win rate",
    "alpaca_eval_lc_win_rate": "AlpacaEval 2 LC win rate",
    "loss": "training loss",
}


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


@dataclass(frozen=True)
class MethodStyle:
    colour: str
    marker: str
    line_style: str

    def line_kwargs(self) -> dict:
        return {"color": self.colour, "marker": self.marker, "linestyle": self.line_style}


def method_styles(labels) -> dict[str, MethodStyle]:
    """A fixed style per method label: the i-th label in sorted order gets the i-th entries."""
    return {
        label: MethodStyle(
            PALETTE[index % len(PALETTE)],
            MARKERS[index % len(MARKERS)],
            LINE_STYLES[index % len(LINE_STYLES)],
        )
        for index, label in enumerate(sorted(set(labels)))
    }


@dataclass(frozen=True)
class FigureFiles:
    png: Path
    svg: Path


def save_figure(figure: Figure, folder: Path, stem: str) -> FigureFiles:
    folder.mkdir(parents=True, exist_ok=True)
    files = FigureFiles(folder / f"{stem}.png", folder / f"{stem}.svg")
    with matplotlib.rc_context(PAPER_STYLE):
        FigureCanvasAgg(figure)
        figure.savefig(files.png, dpi=PNG_DPI, metadata={"Software": None})
        figure.savefig(files.svg, metadata={"Date": None, "Creator": None})
    return files


def _panel_grid(count: int, rows_per_panel: int = 1) -> tuple[Figure, np.ndarray]:
    columns = min(MAX_COLUMNS, count)
    rows = math.ceil(count / columns) * rows_per_panel
    figure = Figure(figsize=(PANEL_WIDTH_IN * columns, PANEL_HEIGHT_IN * rows + 0.4), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    return figure, axes


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _method_legend(figure: Figure, labels: Sequence[str], styles: dict[str, MethodStyle]) -> None:
    handles = [Line2D([], [], label=label, **styles[label].line_kwargs()) for label in labels]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)


def robustness_figure(
    summary: pd.DataFrame,
    metric: str,
    styles: dict[str, MethodStyle],
    titles: dict[tuple, str],
    labels: Sequence[str] | None = None,
    chance_level: float | None = None,
) -> Figure | None:
    """``metric`` against the mean realised flip rate, one panel per condition (keys of ``titles``).

    One line per method label: the mean over seeds with its 95 % interval as a band.
    """
    values = summary[(summary["metric"] == metric) & (summary["quantity"] == "value")]
    if labels is not None:
        values = values[values[METHOD].isin(labels)]
    panels = [
        (condition, title) for condition, title in titles.items() if _condition_rows(values, condition).size
    ]
    if not panels:
        return None
    with matplotlib.rc_context(PAPER_STYLE):
        figure, axes = _panel_grid(len(panels))
        shown = set()
        for ax, (condition, title) in zip(axes.flat, panels):
            rows = _condition_rows(values, condition)
            for label, curve in rows.groupby(METHOD, sort=True):
                curve = curve.sort_values(RATE)
                style = styles[label]
                ax.plot(curve[REALISED_RATE], curve["mean"], label=label, **style.line_kwargs())
                ax.fill_between(
                    curve[REALISED_RATE], curve["ci_low"], curve["ci_high"],
                    color=style.colour, alpha=0.15, linewidth=0,
                )  # fmt: skip
                shown.add(label)
            if chance_level is not None:
                ax.axhline(chance_level, color="grey", linewidth=0.8, linestyle=(0, (1, 2)))
            ax.set_title(title + (" (bands clipped)" if _clip_bands(ax, rows) else ""))
            ax.set_xlabel("realised flip rate")
            ax.set_ylabel(metric_name(metric))
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda rate, _: f"{100 * rate:.4g}%"))
        _hide_unused(axes, len(panels))
        _method_legend(figure, sorted(shown), styles)
    return figure


def _clip_bands(ax, rows: pd.DataFrame) -> bool:
    """Keep the y axis on the curves: bands reaching further than the spread of the means beyond
    them (a t-interval from 2 seeds is ±12.7 sd/√2) are cut at the axes. True where it cut."""
    if rows["ci_low"].isna().all():
        return False
    low, high = rows["mean"].min(), rows["mean"].max()
    reach = max(high - low, 0.05 * max(abs(low), abs(high)), 1e-9)
    limits = (low - reach, high + reach)
    if rows["ci_low"].min() >= limits[0] and rows["ci_high"].max() <= limits[1]:
        return False
    ax.set_ylim(max(limits[0], rows["ci_low"].min()), min(limits[1], rows["ci_high"].max()))
    return True


def _condition_rows(frame: pd.DataFrame, condition: tuple) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for key, value in zip(CONDITION_KEYS, condition):
        mask &= (frame[key] == value).to_numpy()
    return frame[mask]


def gamma_figure(pairs_by_label: dict[str, pd.DataFrame]) -> Figure:
    """Per γ method: target margin against reward gap (top) and margin histograms (bottom).

    Each frame holds the pairs of the method's runs (seeds pooled) with ``is_flipped``,
    ``reward_gap`` and ``gamma``; flipped pairs in vermillion crosses, clean in blue dots.
    """
    with matplotlib.rc_context(PAPER_STYLE):
        count = len(pairs_by_label)
        figure = Figure(figsize=(PANEL_WIDTH_IN * count, PANEL_HEIGHT_IN * 2 + 0.4), layout="constrained")
        axes = figure.subplots(2, count, squeeze=False)
        for column, (label, pairs) in enumerate(pairs_by_label.items()):
            flipped = pairs["is_flipped"].astype(bool).to_numpy()
            gamma = pairs["gamma"].to_numpy(dtype=float)
            scatter, histogram = axes[0, column], axes[1, column]
            if "reward_gap" in pairs:
                gap = pairs["reward_gap"].to_numpy(dtype=float)
                scatter.scatter(gap[~flipped], gamma[~flipped], s=4, marker="o", color=CLEAN_COLOUR,
                                alpha=0.4, linewidths=0, rasterized=True)  # fmt: skip
                scatter.scatter(gap[flipped], gamma[flipped], s=8, marker="x", color=FLIPPED_COLOUR,
                                alpha=0.6, linewidths=0.7, rasterized=True)  # fmt: skip
                scatter.set_xlabel("reward gap")
            else:
                scatter.text(0.5, 0.5, "no reward gap recorded", ha="center", va="center",
                             transform=scatter.transAxes)  # fmt: skip
            scatter.set_ylabel("target margin γ")
            scatter.set_title(label)
            bins = np.histogram_bin_edges(gamma[np.isfinite(gamma)], bins=40)
            histogram.hist(gamma[~flipped], bins=bins, density=True, histtype="step",
                           color=CLEAN_COLOUR, linestyle="-", linewidth=1.2)  # fmt: skip
            if flipped.any():
                histogram.hist(gamma[flipped], bins=bins, density=True, histtype="step",
                               color=FLIPPED_COLOUR, linestyle="--", linewidth=1.2)  # fmt: skip
            histogram.set_xlabel("target margin γ")
            histogram.set_ylabel("density")
        handles = [
            Line2D([], [], color=CLEAN_COLOUR, marker="o", linestyle="-", label="clean pairs"),
            Line2D([], [], color=FLIPPED_COLOUR, marker="x", linestyle="--", label="flipped pairs"),
        ]
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return figure


def training_figure(
    curves: dict[str, dict[str, pd.DataFrame]], styles: dict[str, MethodStyle], title: str
) -> Figure:
    """Per logged quantity (``loss``, ``heldout_accuracy``) a panel of its mean over seeds by step.

    ``curves[quantity][label]`` has columns ``step`` and ``mean``.
    """
    with matplotlib.rc_context(PAPER_STYLE):
        figure, axes = _panel_grid(len(curves))
        shown = set()
        for ax, (quantity, by_label) in zip(axes.flat, curves.items()):
            for label, curve in sorted(by_label.items()):
                style = styles[label]
                many_points = len(curve) > 30
                ax.plot(curve["step"], curve["mean"], color=style.colour, linestyle=style.line_style,
                        marker=style.marker, markevery=max(1, len(curve) // 8) if many_points else 1)  # fmt: skip
                shown.add(label)
            ax.set_xlabel("training step")
            ax.set_ylabel(metric_name(quantity))
            ax.set_title(title)
        _hide_unused(axes, len(curves))
        _method_legend(figure, sorted(shown), styles)
    return figure
