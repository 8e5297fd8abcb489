"""How well a cleaning judge found the injected flips, and the noise its cleaned data still holds.

Evaluation reads the flip record (DESIGN.md §1), so it can score a judge exactly — what no cleaning
benchmark on real data can (PrefCleanBench, NeurIPS 2025, has no ground truth). Per run with a
``cleaning`` section: precision, recall and F1 of the flagged pairs against the flipped ones at the
judge's budget, the AUROC of its scores, the share of mislabelled pairs left in the cleaned data, and the
pairs left.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.evaluation.metrics import auroc
from noisypref.cleaning import CleaningRecord
from noisypref.noise_injection import FlipRecord

declare("cleaning_precision", "cleaning precision", "higher", bounds=(0.0, 1.0), diagnostic=True,
        description="share of the pairs the cleaning judge flagged that were flipped (undefined when it flagged none)")
declare("cleaning_recall", "cleaning recall", "higher", bounds=(0.0, 1.0), diagnostic=True,
        description="share of the flipped pairs the cleaning judge flagged, at its budget (undefined without flips)")
declare("cleaning_f1", "cleaning F1", "higher", bounds=(0.0, 1.0), diagnostic=True,
        description="harmonic mean of the cleaning judge's precision and recall")
declare("cleaning_auroc", "cleaning AUROC", "higher", bounds=(0.0, 1.0), diagnostic=True,
        description="AUROC of the cleaning judge's scores for telling flipped from clean training pairs")
declare("cleaning_noise_left", "noise rate after cleaning", "lower", bounds=(0.0, 1.0), diagnostic=True,
        description="share of the trained pairs whose label disagrees with the label before injection, after cleaning")
declare("cleaning_pairs_left", "pairs left after cleaning", "none", bounds=(0.0, None), diagnostic=True,
        description="training pairs the cleaned dataset holds")
declare("cleaning_estimated_rate", "the judge's estimated noise rate", "none", bounds=(0.0, 1.0), diagnostic=True,
        description="the cleaning judge's own estimate of the share of mislabelled pairs (its 'estimated' budget)")


def _flags_by_record(record: CleaningRecord, flips: FlipRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_flipped, flagged, score) of the record's pairs, matched by pair_id."""
    flipped_by_id = dict(zip(flips.table["pair_id"], flips.table["is_flipped"].astype(bool), strict=True))
    missing = [pair_id for pair_id in record.table["pair_id"] if pair_id not in flipped_by_id]
    if missing:
        raise ValueError(f"the cleaning record holds {len(missing)} pair(s) the flip record lacks (e.g. {missing[0]!r})")
    is_flipped = np.array([flipped_by_id[pair_id] for pair_id in record.table["pair_id"]], dtype=bool)
    return is_flipped, record.table["flagged"].to_numpy(dtype=bool), record.table["score"].to_numpy(dtype=np.float64)


def cleaning_quality(record: CleaningRecord, flips: FlipRecord) -> dict[str, float]:
    """The judge's detection quality and what its cleaning left; an undefined metric is left out
    (precision when nothing is flagged, recall and AUROC without flips or without clean pairs)."""
    is_flipped, flagged, score = _flags_by_record(record, flips)
    true_positives = int((is_flipped & flagged).sum())
    metrics: dict[str, float] = {"cleaning_estimated_rate": float(record.estimated_rate)}
    precision = true_positives / flagged.sum() if flagged.any() else None
    recall = true_positives / is_flipped.sum() if is_flipped.any() else None
    if precision is not None:
        metrics["cleaning_precision"] = float(precision)
    if recall is not None:
        metrics["cleaning_recall"] = float(recall)
    if precision is not None and recall is not None:
        metrics["cleaning_f1"] = 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))
    if is_flipped.any() and not is_flipped.all():
        metrics["cleaning_auroc"] = auroc(score, is_flipped)
    is_noisy_after = _noisy_after_cleaning(is_flipped, flagged, record.treatment)
    kept = ~flagged if record.treatment == "remove" else np.ones(len(flagged), dtype=bool)
    metrics["cleaning_pairs_left"] = float(kept.sum())
    if kept.any():
        metrics["cleaning_noise_left"] = float(is_noisy_after[kept].mean())
    return metrics


def _noisy_after_cleaning(is_flipped: np.ndarray, flagged: np.ndarray, treatment: str) -> np.ndarray:
    """Whether each pair's label, after the treatment, disagrees with its label before injection."""
    return is_flipped ^ flagged if treatment == "flip" else is_flipped


def training_flips(flips: FlipRecord, cleaning: CleaningRecord | None) -> FlipRecord:
    """The flip record of the pairs a run trains on: after ``remove`` the kept pairs only; after ``flip``
    every pair, marked flipped where its label now disagrees with the label before injection. The
    injected record itself where there is no cleaning."""
    if cleaning is None:
        return flips
    is_flipped, flagged, _ = _flags_by_record(cleaning, flips)
    probability = dict(zip(flips.table["pair_id"], flips.table["flip_probability"], strict=True))
    kept = ~flagged if cleaning.treatment == "remove" else np.ones(len(flagged), dtype=bool)
    pair_ids = cleaning.table["pair_id"].to_numpy()[kept]
    table = pd.DataFrame({
        "pair_id": pair_ids,
        "is_flipped": _noisy_after_cleaning(is_flipped, flagged, cleaning.treatment)[kept],
        "flip_probability": [probability[pair_id] for pair_id in pair_ids],
    })  # fmt: skip
    return dataclasses.replace(flips, table=table.reset_index(drop=True))
