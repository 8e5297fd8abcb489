"""A dataset's own scores: the pairs whose rejected response scored higher than the chosen one are suspect.

`inject` swaps ``score_chosen`` / ``score_rejected`` together with the labels, so on a flipped pair the
score gap changes sign. Where the labels were made from these same scores (UltraFeedback binarized:
chosen = the best-rated response; the testbed: the gold reward, labelled by Bradley–Terry on it), this
judge therefore reads the original preference back, and it detects flips as well as the scores decided
the labels: a judge with knowledge no real cleaner has. It is a fair judge only where the scores come from
another source than the labels. Under the ``confidence`` and ``adversarial`` noise models the flips
themselves were chosen from the score gaps (docs/cleaning.md).

A study refuses this judge on the testbed (its scores are the gold reward), and a run warns
(`warn_if_scores_reveal_labels`) when the scores agree with the labels before injection on at least
``REVEALING_AGREEMENT`` of the pairs: then the judge reads the injected flips back from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np

from noisypref.checks import option_field
from noisypref.cleaning.base import JudgeInputs, JudgeOptions, JudgeScores, register_judge
from noisypref.cleaning.estimate import anchor_flip_rate

logger = logging.getLogger(__name__)

SCORE_MARGIN_JUDGE = "score_margin"
# Scores that order this share of the labels as the labels do reveal the flips injected afterwards.
REVEALING_AGREEMENT = 0.99


@dataclass(frozen=True)
class ScoreMarginOptions(JudgeOptions):
    chosen_column: str = option_field("score_chosen", "the column holding the chosen response's score")
    rejected_column: str = option_field("score_rejected", "the column holding the rejected response's score")

    def __post_init__(self) -> None:
        for option in ("chosen_column", "rejected_column"):
            value = getattr(self, option)
            if not isinstance(value, str) or not value:
                raise ValueError(f"option {option}={value!r} must be a column name")

    @property
    def required_columns(self) -> tuple[str, ...]:
        return (self.chosen_column, self.rejected_column)


@register_judge(
    SCORE_MARGIN_JUDGE,
    options=ScoreMarginOptions,
    description="the dataset's score gap score_chosen - score_rejected; suspicion = minus the gap "
    "(reads the original preference back where the labels were made from the same scores)",
    source="the dataset's annotations (PrefCleanBench's heuristic family)",
)
def score_by_dataset_scores(inputs: JudgeInputs, options: ScoreMarginOptions) -> JudgeScores:
    chosen = np.asarray(inputs.pairs.column(options.chosen_column), dtype=np.float64)
    rejected = np.asarray(inputs.pairs.column(options.rejected_column), dtype=np.float64)
    margins = chosen - rejected
    if not np.isfinite(margins).all():
        rows = np.flatnonzero(~np.isfinite(margins))[:5].tolist()
        raise ValueError(
            f"judge 'score_margin' needs a finite {options.chosen_column} and {options.rejected_column} on every "
            f"pair; {int((~np.isfinite(margins)).sum())} row(s) have none (rows {rows})"
        )
    return JudgeScores(-margins, anchor_flip_rate(margins))


def score_label_agreement(pairs: datasets.Dataset, options: ScoreMarginOptions) -> float | None:
    """Share of ``pairs`` whose chosen response scores above the rejected one (ties count one half); None
    where a score column is missing or no pair has finite scores."""
    if any(column not in pairs.column_names for column in options.required_columns):
        return None
    margins = np.asarray(pairs[options.chosen_column], dtype=np.float64) - np.asarray(
        pairs[options.rejected_column], dtype=np.float64
    )
    margins = margins[np.isfinite(margins)]
    if margins.size == 0:
        return None
    return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


def warn_if_scores_reveal_labels(pairs: datasets.Dataset, options: ScoreMarginOptions) -> float | None:
    """Warn when the score columns agree with the labels of ``pairs`` (taken before noise injection) on at
    least ``REVEALING_AGREEMENT`` of them: the judge then detects the injected flips from the scores, a
    knowledge no real cleaner has. Returns the agreement (None: not measurable)."""
    agreement = score_label_agreement(pairs, options)
    if agreement is not None and agreement >= REVEALING_AGREEMENT:
        logger.warning(
            "judge %r: %s - %s agrees with the labels on %.1f %% of the %d pairs before noise injection (at least "
            "%.0f %%): the scores made the labels, so the judge reads the injected flips back from them. The report "
            "still ranks this run as a cleaner: read its results as a reference, not a cleaner's (docs/cleaning.md)",
            SCORE_MARGIN_JUDGE, options.chosen_column, options.rejected_column, 100 * agreement, len(pairs),
            100 * REVEALING_AGREEMENT,
        )  # fmt: skip
    return agreement
