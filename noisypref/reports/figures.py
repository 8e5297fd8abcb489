"""Figures of a report, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Every figure uses the same style per method label everywhere (``method_styles``): a colour from the
Okabe–Ito colour-blind-safe palette plus a marker and a line style, so that lines stay apart in
greyscale. Panels are a paper column wide (3.3 in) with text of 7–8 pt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, MaxNLocator

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, REALISED_RATE

logger = logging.getLogger(__name__)

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies. Yellow last: it is the weakest on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
LINE_STYLES = ("-", "--", ":", "-.")
FLIPPED_COLOUR, CLEAN_COLOUR = "#D55E00", "#0072B2"
SCATTER_MAX_POINTS = 4000  # per γ panel; the histograms use every pair

DODGE = 0.008  # share of the rate span between neighbouring methods' points
PANEL_WIDTH_IN = 3.3
PANEL_HEIGHT_IN = 2.4
MAX_COLUMNS = 3
PNG_DPI = 200
PAD_INCHES = 0.03
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
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, editable and quick to write
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
    line_style: str | tuple
    reference: bool = False  # a reference (the oracle, a known-rate variant): drawn, never ranked

    def line_kwargs(self) -> dict:
        return {"color": self.colour, "marker": self.marker, "linestyle": self.line_style}


REFERENCE_COLOURS = ("#4D4D4D", "#8C8C8C", "#B3B3B3")
REFERENCE_MARKERS = ("x", "+", "1")
REFERENCE_LINE_STYLE = (0, (5, 2))


def method_styles(labels, references=()) -> dict[str, MethodStyle]:
    """A fixed style per method label: the i-th competing label in sorted order gets the i-th entries;
    references (``references``: their labels) are grey and dashed with cross-like markers, drawn apart
    from every competitor."""
    references = set(references)
    competitors = sorted(set(labels) - references)
    styles = {
        label: MethodStyle(
            PALETTE[index % len(PALETTE)],
            MARKERS[index % len(MARKERS)],
            LINE_STYLES[index % len(LINE_STYLES)],
        )
        for index, label in enumerate(competitors)
    }
    for index, label in enumerate(sorted(references & set(labels))):
        styles[label] = MethodStyle(
            REFERENCE_COLOURS[index % len(REFERENCE_COLOURS)],
            REFERENCE_MARKERS[index % len(REFERENCE_MARKERS)],
            REFERENCE_LINE_STYLE,
            reference=True,
        )
    return styles


@dataclass(frozen=True)
class FigureFiles:
    png: Path
    svg: Path


def save_figure(figure: Figure, folder: Path, stem: str) -> FigureFiles:
    """PNG and SVG of ``figure``, cut to its tight bounding box so that no legend or label is lost
    even where the layout could not make room for it. The layout is computed once and then kept
    (later saves, such as the PDF, reuse it)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = FigureFiles(folder / f"{stem}.png", folder / f"{stem}.svg")
    with matplotlib.rc_context(PAPER_STYLE):
        canvas = FigureCanvasAgg(figure)
        figure.draw_without_rendering()  # runs the constrained layout
        figure.set_layout_engine("none")  # keeps its result for every later draw
        area = figure.get_tightbbox(canvas.get_renderer()).padded(PAD_INCHES)
        figure.savefig(files.png, dpi=PNG_DPI, metadata={"Software": None}, bbox_inches=area)
        figure.savefig(files.svg, metadata={"Date": None, "Creator": None}, bbox_inches=area)
    return files


def save_pdf(figures: list[Figure], path: Path) -> None:
    """All ``figures`` in one PDF, a page each (for a paper's appendix)."""
    with matplotlib.rc_context(PAPER_STYLE), PdfPages(path, metadata={"Creator": None, "Producer": None}) as pdf:
        for figure in figures:
            pdf.savefig(figure, bbox_inches="tight", pad_inches=PAD_INCHES)


def texts_outside(figure: Figure) -> list[str]:
    """The visible legends and texts of ``figure`` whose drawn extent is not inside the figure's area."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    renderer = canvas.get_renderer()
    figure.draw_without_rendering()
    frame = figure.bbox
    artists = [*figure.legends, *(legend for ax in figure.axes for legend in [ax.get_legend()] if legend)]
    tick_labels, shown_ticks = set(), []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                tick_labels.update((id(tick.label1), id(tick.label2)))
            if ax.get_visible():  # the labels of the ticks inside the view: the ones drawn
                low, high = sorted(axis.get_view_interval())
                locations = axis.get_majorticklocs()
                labels = axis.get_majorticklabels()
                shown_ticks += [label for location, label in zip(locations, labels) if low <= location <= high]
    texts = [text for text in figure.findobj(Text) if id(text) not in tick_labels] + shown_ticks
    artists += [text for text in texts if text.get_text() and text.get_visible()]
    outside = []
    for artist in artists:
        if not artist.get_visible() or (isinstance(artist, Text) and not _shown(artist)):
            continue
        extent = artist.get_window_extent(renderer)
        inside = (
            extent.x0 >= frame.x0 - 0.5 and extent.y0 >= frame.y0 - 0.5
            and extent.x1 <= frame.x1 + 0.5 and extent.y1 <= frame.y1 + 0.5
        )  # fmt: skip
        if not inside:
            outside.append(artist.get_text() if isinstance(artist, Text) else "legend")
    return outside


def _shown(text: Text) -> bool:
    """False for the texts of hidden axes (unused panels) and the like."""
    axes = text.axes
    return axes is None or axes.get_visible()


def panel_grid(count: int, rows_per_panel: int = 1) -> tuple[Figure, np.ndarray]:
    columns = min(MAX_COLUMNS, count)
    rows = math.ceil(count / columns) * rows_per_panel
    figure = Figure(figsize=(PANEL_WIDTH_IN * columns, PANEL_HEIGHT_IN * rows + 0.4), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    return figure, axes


def hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def method_legend(figure: Figure, labels: Sequence[str], styles: dict[str, MethodStyle]) -> None:
    """A legend under the panels with as many columns as fit the figure's width (never cut); references
    are named as such."""
    handles = [
        Line2D([], [], label=legend_label(label, styles[label]), markerfacecolor="none", **styles[label].line_kwargs())
        for label in labels
    ]
    fitted_legend(figure, handles)


def legend_label(label: str, style: MethodStyle) -> str:
    return f"{label} (reference)" if style.reference else label


# The height the figures reserve under their panels for a legend of a line or two (inches).
LEGEND_RESERVE_IN = 0.4


def fitted_legend(figure: Figure, handles: list) -> None:
    """The legend under the panels, in as many columns (up to 4) as fit the figure's width; where it is
    taller than ``LEGEND_RESERVE_IN`` (many labels: a cleaning study's cleaner+loss labels), the figure
    grows by the difference, so that the panels keep their height instead of collapsing under it."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    for columns in range(min(4, len(handles)), 0, -1):
        legend = figure.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False)
        if legend.get_window_extent(renderer).width <= figure.bbox.width * 0.98 or columns == 1:
            break
        legend.remove()
    excess = legend.get_window_extent(renderer).height / figure.dpi - LEGEND_RESERVE_IN
    if excess > 0:
        width, height = figure.get_size_inches()
        figure.set_size_inches(width, height + excess)


def robustness_figure(
    summary: pd.DataFrame,
    metric: str,
    styles: dict[str, MethodStyle],
    titles: dict[tuple, str],
    declaration: MetricDeclaration,
    labels: Sequence[str] | None = None,
    chance_level: float | None = None,
    whole_range: bool = False,
) -> Figure | None:
    """``metric`` against the mean realised flip rate, one panel per condition (keys of ``titles``).

    One line per method label: the mean over seeds (open markers) with its 95 % interval as a band
    where there is one (references: dashed grey, no band). Methods are spread by ``DODGE`` of the rate
    span along x so that coinciding lines stay visible. The y axis fits the data (never leaving the
    metric's bounds), so that the differences the tables claim can be seen; ``whole_range`` shows the
    metric's whole range instead, for a figure where the range itself matters.
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
        figure, axes = panel_grid(len(panels))
        shown = sorted(set(values[METHOD]))
        for ax, (condition, title) in zip(axes.flat, panels):
            rows = _condition_rows(values, condition)
            span = max(float(rows[REALISED_RATE].max() - rows[REALISED_RATE].min()), 1e-9)
            for label, curve in rows.groupby(METHOD, sort=True):
                curve = curve.sort_values(RATE)
                style = styles[label]
                x = curve[REALISED_RATE] + DODGE * span * (shown.index(label) - (len(shown) - 1) / 2)
                ax.plot(x, curve["mean"], label=label, markerfacecolor="none", **style.line_kwargs())
                if not style.reference:
                    ax.fill_between(x, curve["ci_low"], curve["ci_high"], color=style.colour, alpha=0.12, linewidth=0)
            if chance_level is not None:
                ax.axhline(chance_level, color="grey", linewidth=0.8, linestyle=(0, (1, 2)))
            _y_limits(ax, declaration, whole_range)
            ax.set_title(title)
            ax.set_xlabel("realised flip rate")
            ax.set_ylabel(declaration.label)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda rate, _: f"{100 * rate:.4g}%"))
        hide_unused(axes, len(panels))
        method_legend(figure, shown, styles)
    return figure


def _y_limits(ax, declaration: MetricDeclaration, whole_range: bool) -> None:
    """The whole declared range where asked for; otherwise the data's range, cut at the bounds."""
    if whole_range and declaration.low is not None and declaration.high is not None:
        margin = 0.02 * (declaration.high - declaration.low)
        ax.set_ylim(declaration.low - margin, declaration.high + margin)
        return
    low, high = ax.get_ylim()
    margin = 0.02 * (high - low)
    if declaration.low is not None and low < declaration.low:
        low = declaration.low - margin
    if declaration.high is not None and high > declaration.high:
        high = declaration.high + margin
    ax.set_ylim(low, high)


def _condition_rows(frame: pd.DataFrame, condition: tuple) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for key, value in zip(CONDITION_KEYS, condition):
        mask &= (frame[key] == value).to_numpy()
    return frame[mask]


def gamma_figure(pairs_by_label: dict[str, pd.DataFrame]) -> Figure:
    """Per γ method: target margin against reward gap (top) and one histogram per class (bottom).

    Each frame holds the pairs of the method's runs (seeds pooled) with ``is_flipped``,
    ``reward_gap`` and ``gamma``. The scatter draws both classes as translucent open marks in a shuffled
    order, so that neither class hides the other (at most ``SCATTER_MAX_POINTS`` pairs, drawn at random); the histograms share their bins and axis, clean pairs
    filled, flipped pairs as an outline, each normalised to its own count.
    """
    rng = np.random.default_rng(0)
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
                order = rng.permutation(len(gap))[:SCATTER_MAX_POINTS]  # a random subset, in random order
                colours = np.where(flipped[order], FLIPPED_COLOUR, CLEAN_COLOUR)
                scatter.scatter(gap[order], gamma[order], s=6, marker="o", facecolors="none",
                                edgecolors=colours, alpha=0.5, linewidths=0.6, rasterized=True)  # fmt: skip
                scatter.set_xlabel("reward gap")
            else:
                scatter.text(0.5, 0.5, "no reward gap recorded", ha="center", va="center",
                             transform=scatter.transAxes)  # fmt: skip
            scatter.set_ylabel("target margin γ")
            scatter.set_title(label)
            finite = gamma[np.isfinite(gamma)]
            bins = np.histogram_bin_edges(finite, bins=40) if finite.size else 10
            histogram.hist(gamma[~flipped], bins=bins, density=True, histtype="stepfilled",
                           color=CLEAN_COLOUR, alpha=0.35, linewidth=0)  # fmt: skip
            if flipped.any():
                histogram.hist(gamma[flipped], bins=bins, density=True, histtype="step",
                               color=FLIPPED_COLOUR, linestyle="-", linewidth=1.4)  # fmt: skip
            histogram.set_xlabel("target margin γ")
            histogram.set_ylabel("density (per class)")
        flipped_total = sum(int(frame["is_flipped"].astype(bool).sum()) for frame in pairs_by_label.values())
        total = sum(len(frame) for frame in pairs_by_label.values())
        handles = [
            Line2D([], [], color=CLEAN_COLOUR, marker="s", linestyle="none", alpha=0.5,
                   label=f"clean pairs ({total - flipped_total})"),
            Line2D([], [], color=FLIPPED_COLOUR, marker="o", markerfacecolor="none", linestyle="-",
                   label=f"flipped pairs ({flipped_total})"),
        ]  # fmt: skip
        fitted_legend(figure, handles)
    return figure


TRAINING_COLUMNS = 4


def training_figure(
    curves: dict[str, pd.DataFrame], styles: dict[str, MethodStyle], title: str, quantity_label: str
) -> Figure:
    """One logged quantity by training step, one panel per method with its own y scale (a loss of ~20
    for IPO would flatten every other method's curve on a shared axis). ``curves[label]`` has
    columns ``step`` and ``mean``."""
    with matplotlib.rc_context(PAPER_STYLE):
        columns = min(TRAINING_COLUMNS, len(curves))
        rows = math.ceil(len(curves) / columns)
        figure = Figure(figsize=(2.3 * columns, 1.7 * rows + 0.5), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False, sharex=True)
        for ax, (label, curve) in zip(axes.flat, sorted(curves.items())):
            style = styles[label]
            ax.plot(curve["step"], curve["mean"], color=style.colour, linestyle=style.line_style,
                    marker=style.marker, markerfacecolor="none",
                    markevery=max(1, len(curve) // 8) if len(curve) > 30 else 1)  # fmt: skip
            ax.set_title(label)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        for index, ax in enumerate(axes.flat[: len(curves)]):
            if index + columns >= len(curves):  # the lowest panel of its column
                ax.set_xlabel("training step")
        for ax in axes[:, 0]:
            ax.set_ylabel(quantity_label)
        hide_unused(axes, len(curves))
        figure.suptitle(title)
    return figure
