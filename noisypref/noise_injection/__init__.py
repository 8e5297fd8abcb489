"""Controlled label noise for preference datasets.

`inject(dataset, model, rate, seed, **options)` returns `(noisy_dataset, flip_record)`. Noise
models are registered by name; importing this package registers the built-in ones below.
"""

from noisypref.noise_injection import adversarial, annotators, confidence, length, symmetric  # noqa: F401  (registration)
from noisypref.noise_injection.base import (
    NOISE_MODELS,
    FlipDraw,
    NoiseOptions,
    PreferencePairs,
    get_noise_model,
    inject,
    register_noise_model,
)
from noisypref.noise_injection.flip_record import FlipRecord

__all__ = [
    "NOISE_MODELS",
    "FlipDraw",
    "FlipRecord",
    "NoiseOptions",
    "PreferencePairs",
    "get_noise_model",
    "inject",
    "register_noise_model",
]
