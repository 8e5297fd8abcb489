"""Confidence-dependent noise: pairs with small score gaps (ambiguous pairs) flip more."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.checks import check_choice, check_number, option_field
from noisypref.noise_injection.base import (
    MODES,
    SCORE_COLUMNS,
    FlipDraw,
    NoiseOptions,
    PreferencePairs,
    register_noise_model,
)
from noisypref.sampling import keyed_uniforms, logistic, weighted_flips


@dataclass(frozen=True)
class ConfidenceOptions(NoiseOptions):
    temperature: float = option_field(
        1.0, "T in the flip weight sigmoid(-|score_chosen - score_rejected| / T); larger T flattens it"
    )
    mode: str = option_field(
        "exact",
        "'exact': exactly round(rate*N) pairs, drawn in proportion to the weights; 'bernoulli': independently",
    )

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, minimum=0.0, exclusive_minimum=True)
        check_choice("mode", self.mode, MODES)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return SCORE_COLUMNS


def confidence_flip_weights(score_gaps: np.ndarray, temperature: float) -> np.ndarray:
    """Flip weight sigmoid(-|Δs| / T): 1/2 for a tie, towards 0 for a clear preference."""
    return logistic(-np.abs(score_gaps) / temperature)


@register_noise_model(
    "confidence",
    options=ConfidenceOptions,
    description="pairs with small score gaps flip more (weight sigmoid(-|gap|/T)), calibrated to the rate; needs scores",
)
def draw_confidence_flips(
    pairs: PreferencePairs, rate: float, seed: int, options: ConfidenceOptions
) -> FlipDraw:
    weights = confidence_flip_weights(pairs.score_gaps(), options.temperature)
    uniforms = keyed_uniforms(pairs.pair_ids, seed, "confidence")
    is_flipped, flip_probability = weighted_flips(weights, uniforms, rate, options.mode, pairs.pair_ids)
    return FlipDraw(is_flipped, flip_probability)
