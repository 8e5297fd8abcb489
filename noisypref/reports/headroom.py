"""Headroom recovered: how much of what noise costs the baseline each method gets back.

For every condition, target rate of at least ``MIN_RATE`` and metric, with the oracle O (the
``clean_only`` reference: the baseline's method trained on the noisy pairs minus the flipped ones), the
baseline B and a method M, paired by seed (the runs of a seed flip the same pairs):

- **headroom** = mean(O − B), with the 95 % interval of ``procedure.paired_t`` (seeds, and the items
  of the shared held-out set where the runs wrote them);
- **recovered share** = mean(M − B) / mean(O − B), with Fieller's 95 % interval from the same
  procedure (``procedure.fieller_interval``). The share is **undefined** where the headroom's interval
  includes 0 (or lies on the side where the oracle is worse): then there is nothing measurable to
  recover, and the report says so in words instead of printing a ratio. Fieller's interval is bounded
  exactly when that interval excludes 0, so the two cannot disagree.

Known-rate references (``known_rate``) get a share too, marked as references; nothing here is ranked.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from noisypref.reports.declarations import MetricDeclaration, MetricDeclarations
from noisypref.reports.findings import Cells, ItemsLookup, common_seeds, no_items, paired_sample
from noisypref.reports.procedure import (
    CONFIDENCE,
    MIN_SEEDS,
    excludes_zero,
    fieller_interval,
    paired_t,
    sample,
)
from noisypref.reports.statistics import rate_axis
from noisypref.reports.study import (
    CLEAN_ONLY,
    COMPETITOR,
    CONDITION_KEYS,
    METHOD,
    RATE,
    REALISED_RATE,
    REFERENCE,
    percent,
)
from noisypref.reports.tables import (
    DASH,
    Table,
    condition_rows,
    format_interval,
    format_number,
    format_signed,
)

MIN_RATE = 0.1
HEADROOM_COLUMNS = [
    *CONDITION_KEYS, "metric", RATE, REALISED_RATE, METHOD, REFERENCE, "oracle", "baseline", "n_seeds",
    "oracle_mean", "baseline_mean", "method_mean", "headroom", "headroom_low", "headroom_high",
    "headroom_defined", "recovered", "share", "share_low", "share_high", "note",
]  # fmt: skip


def oracle_label(condition_runs: pd.DataFrame, baseline: str) -> tuple[str | None, str]:
    """The clean_only reference of a condition that is the baseline's own oracle, and a note where the
    choice is not that one: the one with the baseline's method name and hyperparameters, else the only
    clean_only label, else the first."""
    if REFERENCE not in condition_runs:
        return None, ""
    oracles = condition_runs[condition_runs[REFERENCE] == CLEAN_ONLY].drop_duplicates(METHOD).sort_values(METHOD)
    if oracles.empty:
        return None, ""
    base = condition_runs[condition_runs[METHOD] == baseline].head(1)
    if not base.empty:
        same = oracles["method_name"] == base["method_name"].iloc[0]
        if "hyperparameters" in oracles and "hyperparameters" in base:
            same &= oracles["hyperparameters"].astype(str) == str(base["hyperparameters"].iloc[0])
        if same.any():
            return str(oracles.loc[same, METHOD].iloc[0]), ""
    label = str(oracles[METHOD].iloc[0])
    return label, (f"the oracle {label} is not the baseline {baseline}'s own method and hyperparameters; "
                   "its headroom is measured against the baseline all the same")  # fmt: skip


def headroom(
    runs: pd.DataFrame, metrics: list[str], baseline: str, declarations: MetricDeclarations,
    items: ItemsLookup = no_items,
) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """The headroom rows (one per condition, metric, rate ≥ ``MIN_RATE`` and method; columns
    ``HEADROOM_COLUMNS``) and notes. ``runs``: ``statistics.curve_runs`` with a ``reference`` column."""
    rows, notes = [], []
    for condition, condition_runs in runs.groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        oracle, note = oracle_label(condition_runs, baseline)
        if oracle is None or baseline not in set(condition_runs[METHOD]):
            continue
        if note:
            notes.append(f"{' · '.join(map(str, condition))}: {note}.")
        x = rate_axis(condition_runs)
        by_label = dict(tuple(condition_runs.groupby(METHOD, sort=True)))
        kinds = dict(zip(condition_runs[METHOD], condition_runs[REFERENCE]))
        others = [label for label in by_label if label not in (baseline, oracle) and kinds[label] != CLEAN_ONLY]
        for metric in metrics:
            declaration = declarations.get(metric)
            if not declaration.comparable:
                continue
            cells = {label: Cells(by_label[label], metric, items) for label in [baseline, oracle, *others]}
            for rate in [rate for rate in x.index if rate >= MIN_RATE - 1e-12]:
                measured = headroom_at(cells[oracle], cells[baseline], rate, declaration)
                if measured is None:
                    continue
                base = {**key, "metric": metric, RATE: rate, REALISED_RATE: x[rate], "oracle": oracle,
                        "baseline": baseline, **measured}  # fmt: skip
                rows.append({**base, METHOD: oracle, REFERENCE: CLEAN_ONLY, "method_mean": base["oracle_mean"],
                             "recovered": base["headroom"], "share": 1.0 if base["headroom_defined"] else np.nan,
                             "share_low": np.nan, "share_high": np.nan})  # fmt: skip
                for label in others:
                    rows.append({**base, METHOD: label, REFERENCE: kinds[label],
                                 **recovered_share(cells[label], cells[baseline], cells[oracle], rate,
                                                   base["headroom_defined"], labels=(label, baseline, oracle),
                                                   headroom_seeds=base["n_seeds"])})  # fmt: skip
    return pd.DataFrame(rows, columns=HEADROOM_COLUMNS), notes


def headroom_at(oracle: Cells, baseline: Cells, rate: float, declaration: MetricDeclaration) -> dict | None:
    """The headroom at ``rate``: mean over the seeds both have of oracle − baseline (``headroom``), its
    paired-t 95 % interval (``headroom_low``, ``headroom_high``), whether it is established on the side
    the metric calls better (``headroom_defined``), both means, ``n_seeds`` and the test's ``note``; None
    where no seed has both."""
    seeds = common_seeds([oracle, baseline], [rate])
    if not seeds:
        return None
    gap, _, _ = paired_sample(oracle, baseline, seeds, {rate: 1.0})
    test = paired_t(gap)
    low, high = test.interval(1 - CONFIDENCE)
    side = excludes_zero(low, high)
    return {
        "headroom": test.mean, "headroom_low": low, "headroom_high": high,
        "headroom_defined": side != 0 and (declaration.sign() in (0.0, side)),
        "oracle_mean": _mean(oracle, seeds, rate), "baseline_mean": _mean(baseline, seeds, rate),
        "n_seeds": test.n, "note": test.note,
    }  # fmt: skip


def _mean(cells: Cells, seeds: list, rate: float) -> float:
    return float(np.mean([cells.value[(seed, rate)] for seed in seeds]))


def recovered_share(
    method: Cells, baseline: Cells, oracle: Cells, rate: float, defined: bool, *,
    labels: tuple[str, str, str], headroom_seeds: int = 0,
) -> dict:  # fmt: skip
    """A method's recovery at ``rate`` over the seeds it shares with the baseline and the oracle: its mean
    (``method_mean``), mean(method − baseline) (``recovered``), ``n_seeds``, and where the headroom is
    ``defined`` (`headroom_at`) the share mean(M − B) / mean(O − B) with Fieller's 95 % interval
    (``share``, ``share_low``, ``share_high``); ``note`` says why a share is missing, naming the side
    that lacks what by ``labels`` (method, baseline, oracle). ``headroom_seeds``: the seeds of the
    headroom's own interval (`headroom_at`'s ``n_seeds``), to say when this method shares fewer."""
    labelled = dict(zip(("method", "baseline", "oracle"), zip(labels, (method, baseline, oracle))))
    seeds = common_seeds([method, baseline, oracle], [rate])
    empty = {"n_seeds": len(seeds), "method_mean": np.nan, "recovered": np.nan, "share": np.nan,
             "share_low": np.nan, "share_high": np.nan}  # fmt: skip
    if not seeds:
        return {**empty, "note": "no seed shared with the baseline and the oracle"}
    numerator, numerator_items, _ = paired_sample(method, baseline, seeds, {rate: 1.0})
    denominator, denominator_items, _ = paired_sample(oracle, baseline, seeds, {rate: 1.0})
    seeds_only = ""
    if numerator_items is not None and denominator_items is not None:
        # both are item ids of the baseline's runs (paired_sample): the same set, aligned for the covariance
        denominator = sample(denominator.values, denominator_items.reindex(numerator_items.index).to_numpy())
    else:
        numerator, denominator = sample(numerator.values), sample(denominator.values)  # seeds only, for both
        seeds_only = _items_lacking(labelled, seeds, rate)
    row = {**empty, "method_mean": _mean(method, seeds, rate), "recovered": numerator.mean}
    notes = [f"interval over seeds only: {seeds_only}"] if seeds_only else []
    if len(seeds) < MIN_SEEDS:
        return {**row, "note": f"{len(seeds)} seed(s): too few for an interval (needs {MIN_SEEDS})"}
    if not defined:
        return {**row, "note": "headroom not distinguishable from zero: share undefined"}
    ratio = fieller_interval(numerator, denominator, CONFIDENCE)
    if not ratio.defined:  # the headroom's interval, on this method's seeds and terms, includes 0
        causes = []
        if len(seeds) < headroom_seeds:
            causes.append(f"on the {len(seeds)} of the headroom's {headroom_seeds} seeds this method shares")
        if seeds_only:
            causes.append("without the item term (" + seeds_only + ")")
        where = " and ".join(causes) or f"on the {len(seeds)} seeds this method shares"
        return {**row, "note": f"{where}, the headroom's interval includes 0: share undefined"}
    return {**row, "share": ratio.estimate, "share_low": ratio.low, "share_high": ratio.high, "note": "; ".join(notes)}


def _items_lacking(labelled: dict[str, tuple[str, Cells]], seeds: list, rate: float) -> str:
    """Why the share's interval has no item term, naming the side that lacks what: the runs (method,
    baseline or oracle) without per-item values, else the side whose item ids differ from the baseline's."""
    baseline = labelled["baseline"][0]
    runs = {side: [cells.run_items(seed, rate) for seed in seeds] for side, (_, cells) in labelled.items()}

    def name(side: str) -> str:
        label = labelled[side][0]
        return label if side == "method" else f"the {side} {label}"

    reasons = []
    for side in labelled:
        lacking = sum(items is None for items in runs[side])
        if lacking:
            reasons.append(f"{name(side)} has no per-item values in {lacking} of its {len(seeds)} runs")
    if reasons:
        return "; ".join(reasons)
    for side in ("method", "oracle"):
        differing = sum(set(items.index) != set(base.index) for items, base in zip(runs[side], runs["baseline"]))
        if differing:
            reasons.append(f"{name(side)} evaluated other items than the baseline {baseline} in {differing} of "
                           f"{len(seeds)} seeds")  # fmt: skip
    return "; ".join(reasons) or "the held-out items differ from seed to seed"


def format_share(value: float) -> str:
    """A share as a signed percentage: 0.14 -> '+14 %', -0.083 -> '−8.3 %'."""
    if value is None or math.isnan(value):
        return DASH
    return f"{100 * value:+.2g} %".replace("-", "−") if abs(value) < 0.1 else f"{100 * value:+.0f} %".replace("-", "−")


def share_interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return DASH
    return f"[{format_share(low)}, {format_share(high)}]"


def headroom_table(rows: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str, label: str) -> Table | None:
    """Rates × methods of one metric in one condition: the headroom, then each method's recovered share."""
    rows = condition_rows(rows, condition)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return None
    cells = []
    for _, row in rows.sort_values([RATE, REFERENCE, METHOD], key=_reference_last).iterrows():
        kind = row[REFERENCE]
        if kind == CLEAN_ONLY:
            recovered = "oracle: 100 %" if row["headroom_defined"] else "oracle"
            cells.append([percent(row[RATE]), f"{row[METHOD]} (oracle)", format_number(row["method_mean"]),
                          f"{format_signed(row['headroom'])} {format_interval(row['headroom_low'], row['headroom_high'])}",
                          recovered, row["note"] or ""])  # fmt: skip
            continue
        name = row[METHOD] if kind == COMPETITOR else f"{row[METHOD]} (reference: {kind})"
        if math.isnan(row["share"]):
            share = "undefined" if not row["headroom_defined"] else DASH
        else:
            share = f"{format_share(row['share'])} {share_interval(row['share_low'], row['share_high'])}"
        cells.append([percent(row[RATE]), name, format_number(row["method_mean"]), format_signed(row["recovered"]),
                      share, row["note"] or ""])  # fmt: skip
    baseline = rows["baseline"].iloc[0]
    return Table(
        stem=stem,
        caption=(
            f"{title}: headroom of {label} ({metric}) — the oracle minus {baseline} (what noise costs {baseline}) "
            f"— and the share of it each method recovers, (method − {baseline}) / (oracle − {baseline}), paired "
            "by seed, with 95 % intervals (headroom: paired t; share: Fieller's interval from the same "
            "procedure). References are shown, never ranked."
        ),
        header=["rate", "method", "value", f"− {baseline} (headroom for the oracle)", "recovered share", "note"],
        rows=cells,
        notes=[
            "The share is undefined where the headroom's interval includes 0: there is then no measurable "
            "headroom, and a ratio would only restate noise.",
        ],
        align="llrlll",
    )


def _reference_last(column: pd.Series) -> pd.Series:
    if column.name == REFERENCE:
        return column.map({CLEAN_ONLY: 0, COMPETITOR: 1}).fillna(2)
    return column


def headroom_sentence(rows: pd.DataFrame, condition: tuple, metric: str, label: str) -> str:
    """The headline of the headroom at the highest rate: 'At 40 % flips, noise costs dpo 0.170 held-out
    accuracy (oracle clean_only 0.730 vs 0.560, 95 % interval [..]); cdpo recovers +14 % [..], …'."""
    rows = condition_rows(rows, condition)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return ""
    top = rows[rows[RATE] == rows[RATE].max()]
    oracle = top[top[REFERENCE] == CLEAN_ONLY].iloc[0]
    baseline = oracle["baseline"]
    where = f"At {percent(oracle[RATE])} flips"
    numbers = (
        f"oracle {oracle[METHOD]} {format_number(oracle['oracle_mean'])} vs {format_number(oracle['baseline_mean'])}, "
        f"95 % interval of the difference {format_interval(oracle['headroom_low'], oracle['headroom_high'])}"
    )
    if not oracle["headroom_defined"]:
        return (
            f"{where}, the headroom of {label} is not measurable ({numbers}): the oracle is not detectably "
            f"better than {baseline}, so no recovered share is given."
        )
    others = top[top[REFERENCE] != CLEAN_ONLY]
    competitors = [_share_words(row) for _, row in others[others[REFERENCE] == COMPETITOR].iterrows()]
    references = [_share_words(row) for _, row in others[others[REFERENCE] != COMPETITOR].iterrows()]
    text = f"{where}, noise costs {baseline} {format_number(abs(oracle['headroom']))} {label} ({numbers})"
    if competitors:
        text += "; " + ", ".join(competitors)
    if references:
        text += "; references (not ranked): " + ", ".join(references)
    return text + "."


def _share_words(row: pd.Series) -> str:
    if math.isnan(row["share"]):
        return f"{row[METHOD]}: share undefined ({row['note'] or 'no interval'})"
    return f"{row[METHOD]} recovers {format_share(row['share'])} {share_interval(row['share_low'], row['share_high'])}"
