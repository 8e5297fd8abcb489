"""A judge's own estimate of the share of mislabelled pairs, from its signed margins.

Every margin judge scores a pair by a margin that changes sign when the pair's label is swapped (a
log-likelihood ratio, a reward gap, a score gap). Among the pairs the judge is most confident about (the
largest |margin|) it is almost always right about the true preference, so the share of those whose margin
is negative — whose label disagrees with the judge — estimates the share of swapped labels. This is the
anchor-point estimator of noisy-label learning (Liu & Tao, "Classification with Noisy Labels by Importance
Reweighting", TPAMI 2016; Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss
Correction Approach", CVPR 2017, eq. 9 and its high-percentile variant), read on the most confident
``ANCHOR_SHARE`` of the pairs.

It assumes flips independent of the judge's confidence (symmetric noise). It counts the judge's own
errors on confident pairs as flips (an overestimate for a weak judge) and misses flips that avoid
confident pairs (an underestimate under the ``confidence`` noise model, which flips ambiguous pairs).
"""

from __future__ import annotations

import numpy as np

ANCHOR_SHARE = 0.1  # the most confident tenth of the pairs: 205 of the testbed's 2,048
MAX_RATE = 0.5  # beyond one half the judge's "confident" side would be the wrong one


def anchor_flip_rate(margins: np.ndarray, anchor_share: float = ANCHOR_SHARE) -> float:
    """Share of negative margins among the ``anchor_share`` of pairs with the largest |margin|, in [0, 0.5]
    (ties in |margin| broken by position, a margin of exactly 0 counted as one half)."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0 or not np.isfinite(margins).all():
        raise ValueError(f"need finite margins to estimate a noise rate, got {margins.size} (or non-finite ones)")
    count = max(1, round(anchor_share * margins.size))
    confident = margins[np.argsort(-np.abs(margins), kind="stable")[:count]]
    disagreeing = float(np.mean((confident < 0) + 0.5 * (confident == 0)))
    return min(disagreeing, MAX_RATE)
