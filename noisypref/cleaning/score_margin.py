"""A dataset's own scores: the pairs whose rejected response scored higher than the chosen one are suspect.

`inject` swaps ``score_chosen`` / ``score_rejected`` together with the labels, so on a flipped pair the
score gap changes sign. Where the labels were made from these same scores (UltraFeedback binarized:
chosen = the best-rated response; the testbed: the gold reward, labelled by Bradley–Terry on it), this
judge therefore reads the original preference back, and it detects flips as well as the scores decided
the labels: a judge with knowledge no real cleaner has. It is a fair judge only where the scores come from
another source than the labels. Under the ``confidence`` and ``adversarial`` noise models the flips
themselves were chosen from the score gaps (docs/cleaning.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.checks import option_field
from noisypref.cleaning.base import JudgeInputs, JudgeOptions, JudgeScores, register_judge
from noisypref.cleaning.estimate import anchor_flip_rate


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
    "score_margin",
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
