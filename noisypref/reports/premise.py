"""The premise check: could the trained models locate the flipped pairs at all?

Every robust loss acts on one signal: that a flipped pair looks different (a small or negative reward
gap, a small γ) from a clean one. Per condition and target rate the check shows

- the baseline's flip-detection AUROC: how well its final reward gap separates flipped from clean
  training pairs (``noise_detection_auroc``; 0.5 = chance), and γ's for the γ methods (the methods with
  a value of ``noise_detection_auroc_gamma``, whatever their name);
- the gold reward's AUROC (``noise_detection_auroc_gold``): what a perfect reward model would reach;
- the share of the training labels, after injection, that agree with the gold order
  (``label_gold_agreement``).

The rule (``AUROC_RULE``): where the baseline's AUROC, mean over seeds, is below 0.6 at the lowest
nonzero rate, the trained models cannot locate the flips, and the findings say that in this regime
robust losses can only change how strongly gaps are held near zero, not find noisy pairs. Each value
is a mean over seeds with its 95 % seed-level interval (``statistics.mean_interval``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from noisypref.reports.statistics import mean_interval
from noisypref.reports.study import (
    CONDITION_KEYS,
    GAMMA_AUROC,
    METHOD,
    RATE,
    REALISED_RATE,
    SEED,
    competitor_runs,
    gamma_method_labels,
    percent,
)
from noisypref.reports.tables import DASH, Table, condition_rows, format_interval, format_number

AUROC_RULE = 0.6
GAP_AUROC = "noise_detection_auroc"
GOLD_AUROC = "noise_detection_auroc_gold"
AGREEMENT = "label_gold_agreement"
PREMISE_COLUMNS = [*CONDITION_KEYS, RATE, REALISED_RATE, "quantity", METHOD, "n_seeds", "mean", "ci_low", "ci_high"]


def premise_rows(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per condition, rate and quantity: ``agreement`` and ``gold_auroc`` (per condition and
    seed, read from the baseline's runs, else from any competitor's), ``gap_auroc`` of the baseline,
    ``gamma_auroc`` of each γ method. Columns ``PREMISE_COLUMNS``."""
    rows = []
    runs = competitor_runs(runs)
    for condition, condition_runs in runs.groupby(list(CONDITION_KEYS), sort=True):
        key = dict(zip(CONDITION_KEYS, condition))
        baseline_runs = condition_runs[condition_runs[METHOD] == baseline]
        shared = baseline_runs if not baseline_runs.empty else condition_runs.drop_duplicates([SEED, RATE])
        gamma_labels = gamma_method_labels(condition_runs)
        sources = [("agreement", AGREEMENT, shared, ""), ("gold_auroc", GOLD_AUROC, shared, ""),
                   ("gap_auroc", GAP_AUROC, baseline_runs, baseline)]  # fmt: skip
        sources += [("gamma_auroc", GAMMA_AUROC, condition_runs[condition_runs[METHOD] == label], label)
                    for label in gamma_labels]  # fmt: skip
        for quantity, metric, source, label in sources:
            if metric not in source:
                continue
            for rate, at_rate in source.groupby(RATE, sort=True):
                values = at_rate[metric].dropna()
                if values.empty:
                    continue
                interval = mean_interval(values)
                realised = at_rate[REALISED_RATE].mean()
                rows.append({**key, RATE: rate, REALISED_RATE: rate if math.isnan(realised) else realised,
                             "quantity": quantity, METHOD: label, "n_seeds": interval.n, "mean": interval.mean,
                             "ci_low": interval.low, "ci_high": interval.high})  # fmt: skip
    return pd.DataFrame(rows, columns=PREMISE_COLUMNS)


@dataclass
class PremiseCheck:
    rate: float = math.nan  # the lowest nonzero rate with a baseline AUROC
    auroc: float = math.nan  # the baseline's mean AUROC there
    gold_auroc: float = math.nan
    fires: bool = False  # the rule: AUROC < AUROC_RULE at the lowest nonzero rate
    missing: list[str] = field(default_factory=list)  # parts of the check that could not be made


def check(rows: pd.DataFrame, condition: tuple, baseline: str) -> PremiseCheck:
    rows = condition_rows(rows, condition)
    result = PremiseCheck()
    gap = rows[(rows["quantity"] == "gap_auroc") & (rows[RATE] > 0)].sort_values(RATE)
    if gap.empty:
        result.missing.append(f"no {GAP_AUROC} for {baseline} at a nonzero rate: whether the models locate the flips")
    else:
        result.rate, result.auroc = float(gap[RATE].iloc[0]), float(gap["mean"].iloc[0])
        result.fires = result.auroc < AUROC_RULE
        gold = rows[(rows["quantity"] == "gold_auroc") & np.isclose(rows[RATE], result.rate)]
        result.gold_auroc = float(gold["mean"].iloc[0]) if not gold.empty else math.nan
    absent = [(metric, what) for quantity, metric, what in (
        ("gold_auroc", GOLD_AUROC, "what a perfect reward model would detect"),
        ("agreement", AGREEMENT, "how many labels agree with the gold order"),
    ) if not (rows["quantity"] == quantity).any()]  # fmt: skip
    if absent:
        result.missing.append(
            f"no gold reward ({' and '.join(metric for metric, _ in absent)} absent): "
            + " and ".join(what for _, what in absent)
        )
    return result


def premise_sentence(rows: pd.DataFrame, condition: tuple, baseline: str) -> str:
    """The premise check in words: the AUROC at the lowest nonzero rate against the rule, the label–gold
    agreement, and the parts that could not be checked."""
    result = check(rows, condition, baseline)
    rows = condition_rows(rows, condition)
    sentences = []
    if not math.isnan(result.auroc):
        gold = f" (the gold reward's: {format_number(result.gold_auroc)})" if not math.isnan(result.gold_auroc) else ""
        head = (
            f"Premise check: {baseline}'s final reward gap separates flipped from clean training pairs with "
            f"AUROC {format_number(result.auroc)} at {percent(result.rate)} flips{gold}; the rule: below "
            f"{AUROC_RULE} at the lowest nonzero rate, the trained models cannot locate the flips."
        )
        if result.fires:
            head += (
                " It fires: in this regime robust losses can only change how strongly gaps are held near zero, "
                "not find noisy pairs."
            )
        else:
            head += " It does not fire: the trained baseline tells flipped from clean pairs, a signal robust losses can use."
        sentences.append(head)
    agreement = rows[rows["quantity"] == "agreement"].sort_values(RATE)
    if not agreement.empty:
        shares = ", ".join(f"{100 * mean:.1f} % at {percent(rate)}" for rate, mean in zip(agreement[RATE], agreement["mean"]))
        sentences.append(f"Training labels agree with the gold order on {shares} flips.")
    if result.missing:
        sentences.append("Not checked: " + "; ".join(result.missing) + ".")
    return " ".join(sentences)


def premise_table(rows: pd.DataFrame, condition: tuple, title: str, stem: str, baseline: str) -> Table | None:
    """Rates × (label–gold agreement, baseline AUROC, γ AUROCs, gold AUROC): mean [95 % interval]."""
    rows = condition_rows(rows, condition)
    if rows.empty:
        return None
    columns = [("agreement", ""), ("gap_auroc", baseline)]
    columns += [("gamma_auroc", label) for label in sorted(set(rows.loc[rows["quantity"] == "gamma_auroc", METHOD]))]
    columns += [("gold_auroc", "")]
    columns = [(quantity, label) for quantity, label in columns
               if ((rows["quantity"] == quantity) & (rows[METHOD] == label)).any()]  # fmt: skip
    names = {"agreement": "labels agreeing with gold", "gold_auroc": "gold reward AUROC"}
    header = ["rate"] + [names.get(quantity, f"{label} AUROC ({'γ' if quantity == 'gamma_auroc' else 'reward gap'})")
                         for quantity, label in columns]  # fmt: skip
    cells = []
    for rate in sorted(set(rows[RATE])):
        line = [percent(rate)]
        for quantity, label in columns:
            found = rows[(rows["quantity"] == quantity) & (rows[METHOD] == label) & np.isclose(rows[RATE], rate)]
            if found.empty:
                line.append(DASH)
                continue
            row = found.iloc[0]
            line.append(f"{format_number(row['mean'])} {format_interval(row['ci_low'], row['ci_high'])}".strip())
        cells.append(line)
    return Table(
        stem=stem,
        caption=(
            f"{title}: the premise check — can the trained models locate the flipped pairs? Flip-detection "
            "AUROC of the final reward gap (and of γ for γ methods; 0.5 = chance, undefined at 0 %), the gold "
            "reward's AUROC, and the share of training labels (after injection) that agree with the gold order; "
            "mean over seeds [95 % interval]."
        ),
        header=header,
        rows=cells,
        notes=[f"Rule: an AUROC of {baseline} below {AUROC_RULE} at the lowest nonzero rate means the models cannot "
               "locate the flips."],  # fmt: skip
        align="l" + "r" * len(columns),
    )
