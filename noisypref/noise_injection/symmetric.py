"""Symmetric noise: every pair is equally likely to flip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.checks import check_choice, option_field
from noisypref.noise_injection.base import (
    MODES,
    FlipDraw,
    NoiseOptions,
    PreferencePairs,
    register_noise_model,
)
from noisypref.sampling import flip_count, keyed_uniforms, top_k_mask


@dataclass(frozen=True)
class SymmetricOptions(NoiseOptions):
    mode: str = option_field(
        "exact",
        "'exact': exactly round(rate*N) pairs, uniformly; 'bernoulli': each pair independently with probability rate",
    )

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)


@register_noise_model(
    "symmetric",
    options=SymmetricOptions,
    description="every pair equally likely to flip (uniform label noise)",
)
def draw_symmetric_flips(
    pairs: PreferencePairs, rate: float, seed: int, options: SymmetricOptions
) -> FlipDraw:
    uniforms = keyed_uniforms(pairs.pair_ids, seed, "symmetric")
    num_pairs = len(pairs)
    if options.mode == "exact":
        num_flipped = flip_count(rate, num_pairs)
        # The pairs with the smallest draws: a uniformly random subset of size k, so each pair's
        # inclusion probability is k / N.
        is_flipped = top_k_mask(num_flipped, -uniforms, np.zeros(num_pairs), pairs.pair_ids)
        return FlipDraw(is_flipped, np.full(num_pairs, num_flipped / num_pairs))
    return FlipDraw(uniforms < rate, np.full(num_pairs, rate))
