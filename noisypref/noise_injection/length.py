"""Length-biased noise: a verbosity-biased annotator who prefers the longer response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from noisypref.checks import check_choice, check_number, option_field
from noisypref.noise_injection.base import (
    MODES,
    FlipDraw,
    NoiseOptions,
    PreferencePairs,
    register_noise_model,
)
from noisypref.sampling import keyed_uniforms, logistic, weighted_flips


@dataclass(frozen=True)
class LengthOptions(NoiseOptions):
    strength: float = option_field(
        1.0,
        "s in the flip weight sigmoid(s * log((words_rejected + 1) / (words_chosen + 1))); 0 = no length bias",
    )
    mode: str = option_field(
        "exact",
        "'exact': exactly round(rate*N) pairs, drawn in proportion to the weights; 'bernoulli': independently",
    )

    def __post_init__(self) -> None:
        check_number("strength", self.strength, minimum=0.0)
        check_choice("mode", self.mode, MODES)


def response_word_count(response: Any) -> int:
    """Whitespace-separated words of a response: the text itself, or the content of the assistant
    messages of a message list."""
    if isinstance(response, str):
        return len(response.split())
    return sum(
        len(str(message.get("content") or "").split())
        for message in response
        if message.get("role") == "assistant"
    )


def length_flip_weights(words_chosen: np.ndarray, words_rejected: np.ndarray, strength: float) -> np.ndarray:
    """sigmoid(s * log((words_rejected + 1) / (words_chosen + 1))) = (w_r + 1)^s / ((w_r + 1)^s + (w_c + 1)^s):
    a Bradley–Terry annotator whose only criterion is length; above 1/2 where rejected is longer."""
    return logistic(strength * (np.log1p(words_rejected) - np.log1p(words_chosen)))


@register_noise_model(
    "length",
    options=LengthOptions,
    description="a verbosity-biased annotator: flips more where the rejected response is longer, calibrated to the rate",
)
def draw_length_flips(pairs: PreferencePairs, rate: float, seed: int, options: LengthOptions) -> FlipDraw:
    words_chosen = np.array(
        [response_word_count(response) for response in pairs.column("chosen")], dtype=np.float64
    )
    words_rejected = np.array(
        [response_word_count(response) for response in pairs.column("rejected")], dtype=np.float64
    )
    weights = length_flip_weights(words_chosen, words_rejected, options.strength)
    uniforms = keyed_uniforms(pairs.pair_ids, seed, "length")
    is_flipped, flip_probability = weighted_flips(weights, uniforms, rate, options.mode, pairs.pair_ids)
    return FlipDraw(is_flipped, flip_probability)
