"""Adversarial noise: flips the most confident pairs, those with the largest score gaps.

This is the case where "the ambiguous pairs are the noisy ones" is false, the premise that
margin-based robust methods such as γ-PO rely on; a benchmark must be able to show where a method
breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.noise_injection.base import (
    SCORE_COLUMNS,
    FlipDraw,
    NoiseOptions,
    PreferencePairs,
    register_noise_model,
)
from noisypref.sampling import flip_count, keyed_uniforms, top_k_mask


@dataclass(frozen=True)
class AdversarialOptions(NoiseOptions):
    @property
    def required_columns(self) -> tuple[str, ...]:
        return SCORE_COLUMNS


@register_noise_model(
    "adversarial",
    options=AdversarialOptions,
    description="flips the round(rate*N) pairs with the largest |score gap| (ties broken by seed); needs scores",
)
def draw_adversarial_flips(
    pairs: PreferencePairs, rate: float, seed: int, options: AdversarialOptions
) -> FlipDraw:
    absolute_gaps = np.abs(pairs.score_gaps())
    tie_breaker = keyed_uniforms(pairs.pair_ids, seed, "adversarial")
    return FlipDraw(top_k_mask(flip_count(rate, len(pairs)), absolute_gaps, tie_breaker, pairs.pair_ids))
