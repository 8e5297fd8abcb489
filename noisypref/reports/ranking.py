"""The ranking of a condition's competing methods by robustness AUC, with the breaking point of each.

References are left out; the baseline is listed but has no breaking point (it is what the others break
against). A metric not comparable across methods is not ranked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.findings import AUC, VALUE
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE


def ranking(
    intervals: pd.DataFrame, found: pd.DataFrame, metric: str, condition: tuple, baseline: str,
    declaration: MetricDeclaration, references=frozenset(),
) -> pd.DataFrame:  # fmt: skip
    """Competing methods of one condition (the labels in ``references`` left out) ordered by AUC (best
    first for a declared direction), with the AUC interval, the verdict of the AUC against the baseline
    and the breaking point: the lowest target rate at which the method's whole 95 % interval (its mean,
    with one seed) is worse than the baseline's mean at the lowest rate. The baseline has none."""
    if not declaration.comparable:
        return pd.DataFrame()
    mask = (intervals["metric"] == metric).to_numpy() & ~intervals[METHOD].isin(list(references)).to_numpy()
    for name, value in zip(CONDITION_KEYS, condition):
        mask &= (intervals[name] == value).to_numpy()
    rows = intervals[mask]
    aucs = rows[rows["quantity"] == AUC].copy()
    values = rows[rows["quantity"] == VALUE]
    if aucs.empty:
        return pd.DataFrame()
    ascending = declaration.direction == "lower"
    aucs = aucs.sort_values(["mean", METHOD], ascending=[ascending, True])
    clean = values[values[METHOD] == baseline].sort_values(RATE)
    clean_value = float(clean["mean"].iloc[0]) if not clean.empty else np.nan
    clean_rate = float(clean[RATE].iloc[0]) if not clean.empty else np.nan
    verdicts = {}
    if not found.empty:
        auc_rows = found[(found["metric"] == metric) & (found["quantity"] == AUC)]
        for name, value in zip(CONDITION_KEYS, condition):
            auc_rows = auc_rows[auc_rows[name] == value]
        verdicts = dict(zip(auc_rows[METHOD], auc_rows["verdict"]))
    out = []
    for _, row in aucs.iterrows():
        curve = values[values[METHOD] == row[METHOD]].sort_values(RATE)
        breaking = np.nan
        if declaration.ranked and not np.isnan(clean_value) and row[METHOD] != baseline:
            # The whole interval on the worse side of the clean value (the mean, without an interval).
            sign = declaration.sign()
            far_end = (curve["ci_high"] if sign > 0 else curve["ci_low"]).fillna(curve["mean"])
            worse = far_end * sign < clean_value * sign
            if worse.any():
                breaking = float(curve.loc[worse, RATE].iloc[0])
        out.append({
            METHOD: row[METHOD], "auc": row["mean"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
            "n_seeds": row["n_seeds"], "verdict": "baseline" if row[METHOD] == baseline else verdicts.get(row[METHOD], ""),
            "breaking_rate": breaking, "highest_rate": float(curve[RATE].max()),
            "value_at_highest": float(curve["mean"].iloc[-1]), "clean_value": clean_value, "clean_rate": clean_rate,
        })  # fmt: skip
    return pd.DataFrame(out)
