"""The diagnostic sections of a report: γ diagnostics and training curves (shown, never ranked).

Functions of the report builder (``report._ReportBuilder``): they read its study, runs and titles and
add their figures and tables through it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisypref.reports.document import FigureBlock, Note, ReportSection
from noisypref.reports.figures import (
    SCATTER_MAX_POINTS,
    gamma_figure,
    metric_name,
    robustness_figure,
    training_figure,
)
from noisypref.reports.statistics import summarise
from noisypref.reports.study import (
    CONDITION_KEYS,
    GAMMA_AUROC,
    METHOD,
    RATE,
    SEED,
    gamma_method_labels,
    percent,
)
from noisypref.reports.tables import Table, condition_rows, format_number

GAP_AUROC = "noise_detection_auroc"
SAME_AUROC = 1e-3  # two AUROCs this close in every run tell the same story
TRAINING_QUANTITIES = ("loss", "heldout_accuracy")


def rate_for(builder, condition_runs: pd.DataFrame) -> float:
    rates = sorted(set(condition_runs[RATE]))
    if builder.curve_rate is None:
        return rates[-1]
    matching = [rate for rate in rates if np.isclose(rate, builder.curve_rate)]
    return matching[0] if matching else float("nan")

def gamma_sections(builder) -> list[ReportSection]:
    gamma_labels = gamma_method_labels(builder.results)
    section = ReportSection("γ diagnostics", level=3)
    if not gamma_labels:
        section.blocks.append(Note(f"No γ method (no run with a value of {GAMMA_AUROC}) in the study."))
        return [section]
    gamma_runs = builder.runs[builder.runs[METHOD].isin(gamma_labels)]
    section.blocks.append(_gamma_auroc(builder, gamma_runs, gamma_labels))
    rows = []
    for condition in builder.conditions:
        condition_runs = condition_rows(gamma_runs, condition)
        if condition_runs.empty:
            continue
        rate = rate_for(builder, condition_runs)
        title = builder.titles[condition]
        if np.isnan(rate):
            section.blocks.append(Note(f"{title}: no γ run at rate {builder.curve_rate}."))
            continue
        pairs_by_label = {}
        for label, label_runs in condition_runs[condition_runs[RATE] == rate].groupby(METHOD, sort=True):
            frames = [builder.study.pairs(run_id) for run_id in label_runs["run_id"]]
            frames = [frame for frame in frames if frame is not None and "gamma" in frame]
            if frames:
                pairs_by_label[label] = pd.concat(frames, ignore_index=True)
                rows += _gamma_rows(condition, label, rate, len(frames), pairs_by_label[label])
        if not pairs_by_label:
            section.blocks.append(Note(
                f"{title}: no runs/<run_id>/pairs.parquet with a gamma column for the γ runs at "
                f"{percent(rate)}: the margin plots are skipped."
            ))  # fmt: skip
            continue
        files = builder.add_figure(gamma_figure(pairs_by_label), "gamma", *condition, rate)
        section.blocks.append(FigureBlock(files, (
            f"{title}, target flip rate {percent(rate)}, seeds pooled: target margin γ against the final "
            "reward gap (top; both classes as open marks drawn in a shuffled order, at most "
            f"{SCATTER_MAX_POINTS} pairs at random) and the histogram of γ "
            "of each class on one axis with shared bins, each normalised to its own count (bottom; clean "
            "filled, flipped as an outline)."
        )))  # fmt: skip
    if rows:
        gamma_table = pd.DataFrame(rows)
        gamma_table.to_csv(builder.report_dir / "gamma_diagnostics.csv", index=False)
        section.blocks.append(builder.add_table(_gamma_table(gamma_table, builder.titles)))
    return [section]

def _gamma_auroc(builder, gamma_runs: pd.DataFrame, gamma_labels: list[str]):
    """The γ methods' flip-detection AUROC by γ against the rate, drawn only where it says something the
    reward gap's AUROC (a figure of its own) does not: where some run's two AUROCs differ."""
    metric = GAMMA_AUROC
    if metric not in gamma_runs or gamma_runs[metric].isna().all():
        return Note(f"The results have no {GAMMA_AUROC} for the γ runs: no γ noise-detection figure.")
    if GAP_AUROC in gamma_runs:
        both = gamma_runs[[metric, GAP_AUROC]].dropna()
        largest = float((both[metric] - both[GAP_AUROC]).abs().max()) if len(both) else np.nan
        if len(both) == gamma_runs[metric].notna().sum() and largest <= SAME_AUROC:
            return Note(
                f"γ separates flipped from clean pairs exactly as well as the reward gap in every γ run (largest "
                f"difference of the two AUROCs {largest:.2g}): its figure would repeat the reward gap's, not drawn."
            )
    summary = summarise(gamma_runs, [metric], builder.declarations)
    figure = robustness_figure(
        summary, metric, builder.styles, builder.titles, builder.declarations.get(metric), labels=gamma_labels,
        chance_level=0.5,
    )
    if figure is None:
        return Note(f"No value of {metric} for the γ runs.")
    files = builder.add_figure(figure, "gamma", metric)
    band = "band = 95 % interval over seeds" if summary["n_seeds"].max() > 1 else "one seed: no interval"
    return FigureBlock(files, (
        f"Noise detection by the γ methods ({metric}): AUROC of separating flipped from clean training "
        f"pairs against the realised flip rate (0.5 = chance; undefined at 0 %); {band}. A diagnostic: "
        "shown, not ranked."
    ))  # fmt: skip


def training_sections(builder) -> list[ReportSection]:
    section = ReportSection("Training curves", level=3)
    records = []
    for condition in builder.conditions:
        condition_runs = condition_rows(builder.runs, condition)
        rate = rate_for(builder, condition_runs)
        title = builder.titles[condition]
        if np.isnan(rate):
            section.blocks.append(Note(f"{title}: no run at rate {builder.curve_rate}."))
            continue
        curves: dict[str, dict[str, pd.DataFrame]] = {}
        missing = 0
        for label, label_runs in condition_runs[condition_runs[RATE] == rate].groupby(METHOD, sort=True):
            logs = []
            for run_id, seed in zip(label_runs["run_id"], label_runs[SEED]):
                log = builder.study.metrics_log(run_id)
                if log is None:
                    missing += 1
                else:
                    logs.append(log.assign(seed=seed))
            if not logs:
                continue
            log = pd.concat(logs, ignore_index=True)
            for quantity in TRAINING_QUANTITIES:
                if quantity not in log or log[quantity].isna().all():
                    continue
                # Mean over seeds at each logged step.
                curve = (
                    log.dropna(subset=[quantity])
                    .groupby("step")[quantity]
                    .agg(["mean", "size"])
                    .reset_index()
                )
                curves.setdefault(quantity, {})[label] = curve
                records += [
                    {**dict(zip(CONDITION_KEYS, condition)), RATE: rate, METHOD: label, "quantity": quantity,
                     "step": step, "mean": mean, "n_seeds": size}
                    for step, mean, size in curve.itertuples(index=False)
                ]  # fmt: skip
        if missing:
            section.blocks.append(
                Note(f"{title}: {missing} run(s) at {percent(rate)} have no metrics.jsonl.")
            )
        if not curves:
            section.blocks.append(
                Note(f"{title}: no training log at {percent(rate)}: no training curves.")
            )
            continue
        title_with_rate = f"{title}, {percent(rate)} flips"
        for quantity, by_label in curves.items():
            label = metric_name(quantity)
            figure = training_figure(by_label, builder.styles, title_with_rate, label)
            files = builder.add_figure(figure, "training", quantity, *condition, rate)
            section.blocks.append(FigureBlock(files, (
                f"{title_with_rate}: {label} by training step, mean over seeds; one panel per method, "
                "each with its own y scale (values are not comparable across panels by height)."
            )))  # fmt: skip
    if records:
        pd.DataFrame(records).to_csv(builder.report_dir / "training_curves.csv", index=False)
    return [section]


def _gamma_rows(condition: tuple, label: str, rate: float, runs: int, pairs: pd.DataFrame) -> list[dict]:
    flipped = pairs["is_flipped"].astype(bool)
    row = {
        **dict(zip(CONDITION_KEYS, condition)),
        METHOD: label,
        RATE: rate,
        "runs": runs,
        "pairs": len(pairs),
        "flipped_pairs": int(flipped.sum()),
        "gamma_mean_flipped": float(pairs.loc[flipped, "gamma"].mean()) if flipped.any() else np.nan,
        "gamma_mean_clean": float(pairs.loc[~flipped, "gamma"].mean()) if (~flipped).any() else np.nan,
    }
    return [row]


def _gamma_table(rows: pd.DataFrame, titles: dict[tuple, str]) -> Table:
    cells = [
        [
            titles[tuple(row[key] for key in CONDITION_KEYS)],
            row[METHOD],
            percent(row[RATE]),
            str(row["runs"]),
            f"{row['flipped_pairs']} / {row['pairs']}",
            format_number(row["gamma_mean_flipped"]),
            format_number(row["gamma_mean_clean"]),
        ]
        for _, row in rows.iterrows()
    ]
    return Table(
        stem="gamma_margins",
        caption="Mean target margin γ of flipped and clean training pairs (seeds pooled).",
        header=["condition", "method", "rate", "runs", "flipped / pairs", "mean γ flipped", "mean γ clean"],
        rows=cells,
        align="llrrrrr",
    )
