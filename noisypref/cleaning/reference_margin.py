"""The reference model's log-likelihood ratio: a pair the reference model finds much likelier the other
way round is suspect (the PerpCorrect family: Kong et al., "Perplexity-aware Correction for Robust
Alignment with Noisy Preferences", NeurIPS 2024).

margin = mean log π_ref(chosen | x) − mean log π_ref(rejected | x) per token (``normalise: mean``, the
default), which is minus PerpCorrect's PPLDiff = log PPL(chosen) − log PPL(rejected); or the summed
log-likelihood ratio log π_ref(chosen | x) − log π_ref(rejected | x) (``normalise: sum``), which favours
the shorter response (on the testbed its AUROC is 0.48, the per-token one's 0.79). Suspicion = −margin. PerpCorrect first aligns its
surrogate model on clean validation pairs; this judge uses the run's reference model as it is (no clean
data is assumed), so it can only be as good as the reference model's own preferences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.checks import check_choice, option_field
from noisypref.cleaning.base import JudgeInputs, JudgeOptions, JudgeScores, register_judge
from noisypref.cleaning.estimate import anchor_flip_rate

NORMALISATIONS = ("sum", "mean")


@dataclass(frozen=True)
class ReferenceMarginOptions(JudgeOptions):
    normalise: str = option_field(
        "mean", "'mean': per token (minus PerpCorrect's PPLDiff); 'sum': log-likelihood ratio of the responses"
    )

    def __post_init__(self) -> None:
        check_choice("normalise", self.normalise, NORMALISATIONS)

    @property
    def needs_models(self) -> bool:
        return True


def reference_margins(chosen: np.ndarray, rejected: np.ndarray, chosen_length: np.ndarray,
                      rejected_length: np.ndarray, normalise: str) -> np.ndarray:  # fmt: skip
    """log π_ref(chosen) − log π_ref(rejected), summed or per token."""
    if normalise == "mean":
        return chosen / np.maximum(chosen_length, 1) - rejected / np.maximum(rejected_length, 1)
    return chosen - rejected


@register_judge(
    "reference_margin",
    options=ReferenceMarginOptions,
    description="the reference model's log-likelihood ratio chosen vs rejected; suspicion = minus the ratio",
    source="PerpCorrect (Kong et al., NeurIPS 2024), without its clean-data alignment step",
)
def score_by_reference_model(inputs: JudgeInputs, options: ReferenceMarginOptions) -> JudgeScores:
    logps = inputs.require_models("reference_margin").reference_logps()
    margins = reference_margins(
        np.asarray(logps.chosen, dtype=np.float64), np.asarray(logps.rejected, dtype=np.float64),
        np.asarray(logps.chosen_length, dtype=np.float64), np.asarray(logps.rejected_length, dtype=np.float64),
        options.normalise,
    )  # fmt: skip
    return JudgeScores(-margins, anchor_flip_rate(margins))
