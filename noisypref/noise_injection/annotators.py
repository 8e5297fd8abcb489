"""A panel of simulated annotators votes on every pair; the majority decides the label.

Annotator j agrees with the dataset's label with probability a_ij: a fixed accuracy, or the
Bradley–Terry probability sigmoid((score_chosen - score_rejected) / T) on the scores. A pair flips
when the majority prefers the rejected response; a tied vote (even panel) is settled by a keyed coin.
The realised rate is whatever the vote gives. With neither an accuracy nor a temperature given,
all annotators share one accuracy, solved so that the expected rate equals the target rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from noisypref.checks import check_integer, check_number, option_field
from noisypref.noise_injection.base import (
    SCORE_COLUMNS,
    FlipDraw,
    NoiseOptions,
    PreferencePairs,
    register_noise_model,
)
from noisypref.noise_injection.flip_record import FlipRecord
from noisypref.sampling import CALIBRATION_ITERATIONS, keyed_uniforms, logistic

logger = logging.getLogger(__name__)

DEFAULT_PANEL_SIZE = 3


@dataclass(frozen=True)
class AnnotatorsOptions(NoiseOptions):
    panel_size: int | None = option_field(
        None, "number of annotators k; default: one per given accuracy, else 3"
    )
    accuracy: float | tuple[float, ...] | None = option_field(
        None,
        "each annotator's probability of agreeing with the label: one value, or k values; "
        "default: one shared accuracy solved so the expected flip rate equals the rate",
    )
    temperature: float | None = option_field(
        None,
        "if set, annotators agree with probability sigmoid((score_chosen - score_rejected) / T); needs scores",
    )

    def __post_init__(self) -> None:
        if self.panel_size is None:
            given_accuracies = (
                len(self.accuracy) if isinstance(self.accuracy, (list, tuple)) else DEFAULT_PANEL_SIZE
            )
            object.__setattr__(self, "panel_size", given_accuracies)
        check_integer("panel_size", self.panel_size, minimum=1)
        if self.accuracy is not None and self.temperature is not None:
            raise ValueError("give annotators either an accuracy or a temperature, not both")
        if isinstance(self.accuracy, (list, tuple)):
            if len(self.accuracy) != self.panel_size:
                raise ValueError(
                    f"option accuracy has {len(self.accuracy)} values but panel_size is {self.panel_size}; "
                    "give one value or one per annotator"
                )
            object.__setattr__(
                self,
                "accuracy",
                tuple(check_number("accuracy", value, minimum=0.0, maximum=1.0) for value in self.accuracy),
            )
        elif self.accuracy is not None:
            object.__setattr__(
                self, "accuracy", check_number("accuracy", self.accuracy, minimum=0.0, maximum=1.0)
            )
        if self.temperature is not None:
            check_number("temperature", self.temperature, minimum=0.0, exclusive_minimum=True)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return SCORE_COLUMNS if self.temperature is not None else ()

    def rate_gap_reason(self, record: FlipRecord) -> str:
        expected = float(record.table["flip_probability"].mean())
        if self.accuracy is not None:
            given = f"accuracy {list(self.accuracy) if isinstance(self.accuracy, tuple) else self.accuracy}"
        elif self.temperature is not None:
            given = f"Bradley-Terry agreement at temperature {self.temperature} on this data's scores"
        else:
            return f"the vote of {self.panel_size} annotators is random; its expected rate here is {expected:.4f}"
        return (
            f"the majority vote of {self.panel_size} annotator(s) with {given} sets the flip rate, not the "
            f"target (its expected rate is {expected:.4f}); leave accuracy and temperature unset to have "
            "one shared accuracy solved for the target rate"
        )


def majority_error_probability(wrong_probabilities: np.ndarray) -> np.ndarray:
    """P(the majority votes for the rejected response) + 1/2 P(tie), per pair, for independent
    annotators with the given per-(pair, annotator) probabilities of voting wrong (shape N x k).
    The number of wrong votes is Poisson-binomial; its distribution is built one annotator at a time."""
    num_pairs, panel_size = wrong_probabilities.shape
    wrong_vote_distribution = np.zeros((num_pairs, panel_size + 1))
    wrong_vote_distribution[:, 0] = 1.0
    for annotator in range(panel_size):
        wrong = wrong_probabilities[:, annotator : annotator + 1]
        shifted = np.zeros_like(wrong_vote_distribution)
        shifted[:, 1:] = wrong_vote_distribution[:, :-1]
        wrong_vote_distribution = (1.0 - wrong) * wrong_vote_distribution + wrong * shifted
    wrong_votes = np.arange(panel_size + 1)
    majority_wrong = wrong_vote_distribution[:, 2 * wrong_votes > panel_size].sum(axis=1)
    tie = wrong_vote_distribution[:, 2 * wrong_votes == panel_size].sum(axis=1)
    return majority_wrong + 0.5 * tie


def shared_accuracy_for_rate(rate: float, panel_size: int) -> float:
    """The accuracy a at which a panel of k independent annotators of accuracy a has a majority
    error (ties counted 1/2) equal to `rate`, by bisection (the error falls as a rises)."""

    def panel_error(accuracy: float) -> float:
        return majority_error_probability(np.full((1, panel_size), 1.0 - accuracy))[0]

    low, high = 0.0, 1.0
    for _ in range(CALIBRATION_ITERATIONS):
        middle = 0.5 * (low + high)
        if panel_error(middle) > rate:
            low = middle
        else:
            high = middle
    return high


@register_noise_model(
    "annotators",
    options=AnnotatorsOptions,
    description="a panel of k simulated annotators (given accuracies, or Bradley-Terry on the scores) votes",
)
def draw_annotator_flips(
    pairs: PreferencePairs, rate: float, seed: int, options: AnnotatorsOptions
) -> FlipDraw:
    num_pairs, panel_size = len(pairs), options.panel_size
    if options.temperature is not None:
        agree_probability = np.repeat(
            logistic(pairs.score_gaps() / options.temperature)[:, None], panel_size, axis=1
        )
    else:
        accuracy = (
            shared_accuracy_for_rate(rate, panel_size) if options.accuracy is None else options.accuracy
        )
        agree_probability = np.broadcast_to(np.asarray(accuracy, dtype=np.float64), (num_pairs, panel_size))
    if options.accuracy is not None or options.temperature is not None:
        logger.info("annotators: the vote, not the target rate %s, sets the flip rate", rate)
    votes_against = np.zeros(num_pairs, dtype=np.int64)
    for annotator in range(panel_size):
        uniforms = keyed_uniforms(pairs.pair_ids, seed, f"annotators/{annotator}")
        votes_against += uniforms >= agree_probability[:, annotator]
    tie_coin = keyed_uniforms(pairs.pair_ids, seed, "annotators/tie")
    is_flipped = (2 * votes_against > panel_size) | ((2 * votes_against == panel_size) & (tie_coin < 0.5))
    return FlipDraw(is_flipped, majority_error_probability(1.0 - agree_probability))
