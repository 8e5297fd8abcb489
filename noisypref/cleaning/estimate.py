"""A judge's own estimate of the share of mislabelled pairs, from its signed margins.

Every margin judge scores a pair by a margin that changes sign when the pair's label is swapped
(a log-likelihood ratio, a reward gap, a score gap). If the margins of correctly labelled pairs are
distributed as N(μ, σ²) with μ > 0, a mislabelled pair's margin is the negation, N(−μ, σ²), so the
margins of a dataset with a share ε of mislabelled pairs follow the mirrored mixture

    m ~ (1 − ε) · N(μ, σ²) + ε · N(−μ, σ²).

`mirrored_mixture_rate` fits (ε, μ, σ) by expectation–maximisation (Dempster, Laird & Rubin 1977) and
returns ε. It counts every pair the judge's margin puts on the wrong side, natural disagreement
included, which is what a cleaner would remove; it is only as good as the Gaussian shape is, and
means nothing when the margins carry no signal (μ ≈ 0: the estimate is then whatever EM settles on).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

EM_ITERATIONS = 500
EM_TOLERANCE = 1e-10
MAX_RATE = 0.5  # beyond one half the mirror image fits as well: the labels would be mostly wrong


def mirrored_mixture_rate(margins: np.ndarray, initial_rate: float = 0.25) -> float:
    """ε of the mirrored Gaussian mixture fitted to ``margins`` by EM, in [0, 0.5]."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size < 2 or not np.isfinite(margins).all():
        raise ValueError(f"need at least two finite margins to estimate a noise rate, got {margins.size}")
    spread = float(np.std(margins))
    if spread == 0.0:  # every margin equal: no pair is distinguishable from another
        return 0.0 if margins[0] > 0 else MAX_RATE
    rate = float(initial_rate)
    mean = abs(float(np.mean(margins))) / max(1.0 - 2.0 * rate, 1e-3)
    variance = max(float(np.mean(margins**2)) - mean**2, 1e-6 * spread**2)
    for _ in range(EM_ITERATIONS):
        # E step: posterior of "mislabelled"; log-odds of N(−μ, σ²) against N(μ, σ²) is −2μm/σ².
        log_prior_odds = np.log(max(rate, 1e-12)) - np.log(max(1.0 - rate, 1e-12))
        responsibility = expit(log_prior_odds - 2.0 * mean * margins / variance)
        # M step: ε the mean responsibility, μ from the margins with mislabelled ones negated, σ² pooled.
        new_rate = min(float(responsibility.mean()), MAX_RATE)
        signed = margins * (1.0 - 2.0 * responsibility)
        new_mean = max(float(signed.mean()), 0.0)
        new_variance = float(np.mean((1.0 - responsibility) * (margins - new_mean) ** 2
                                     + responsibility * (margins + new_mean) ** 2))  # fmt: skip
        new_variance = max(new_variance, 1e-6 * spread**2)
        converged = abs(new_rate - rate) < EM_TOLERANCE and abs(new_mean - mean) < EM_TOLERANCE * (1 + mean)
        rate, mean, variance = new_rate, new_mean, new_variance
        if converged:
            break
    return float(rate)
