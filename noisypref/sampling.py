"""Keyed random draws and calibrated selection: the noise models, the cleaning judges, the data loaders'
held-out split and the study preflight draw through them.

Every random number is a hash of (stream, seed, pair_id), never a position in a generator's
sequence: the same pair gets the same draw whatever the row order, on any machine, and a model
that uses one fixed draw per pair at every rate flips nested sets (the pairs flipped at a lower
rate are among those flipped at a higher one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

UNIFORM_BITS = 52  # (n + 0.5) / 2**52 is exact in float64 for every n < 2**52, and lies in (0, 1)

CALIBRATION_ITERATIONS = 200


def keyed_uniforms(pair_ids: Sequence[str], seed: int, stream: str) -> np.ndarray:
    """One uniform draw in the open interval (0, 1) per pair, a hash of (stream, seed, pair_id).

    `stream` names the use (a noise model, an annotator), so different uses draw independently.
    """
    draws = np.empty(len(pair_ids), dtype=np.float64)
    prefix = f"{stream}|{seed}|"
    for position, pair_id in enumerate(pair_ids):
        digest = hashlib.blake2b(f"{prefix}{pair_id}".encode(), digest_size=8).digest()
        draws[position] = int.from_bytes(digest, "big") >> (64 - UNIFORM_BITS)
    return (draws + 0.5) / 2.0**UNIFORM_BITS


def logistic(values: np.ndarray) -> np.ndarray:
    """sigmoid(x) = 1 / (1 + exp(-x)), computed without overflow."""
    return np.exp(-np.logaddexp(0.0, -values))


def flip_count(rate: float, num_pairs: int) -> int:
    """The number of pairs an exact-mode model flips: Python's round(rate * N) (ties to even)."""
    return round(rate * num_pairs)


def top_k_mask(k: int, priority: np.ndarray, tie_breaker: np.ndarray, pair_ids: Sequence[str]) -> np.ndarray:
    """Mark the k pairs with the largest `priority`; ties go to the larger `tie_breaker`, then the
    smaller pair_id, so the choice never depends on row order."""
    pair_id_rank = np.argsort(np.argsort(np.asarray(pair_ids, dtype=str), kind="stable"), kind="stable")
    # np.lexsort sorts by its last key first.
    order = np.lexsort((pair_id_rank, -tie_breaker, -priority))
    selected = np.zeros(len(priority), dtype=bool)
    selected[order[:k]] = True
    return selected


def calibrated_probabilities(weights: np.ndarray, rate: float) -> np.ndarray:
    """Per-pair flip probabilities p_i = min(1, w_i / t) with the threshold t chosen so that
    mean(p) = rate.

    p_i grows with the rate for every pair, so Bernoulli flips `u_i < p_i` with fixed draws u_i
    are nested across rates.
    """
    if rate <= 0.0:
        return np.zeros_like(weights)
    if rate >= 1.0:
        return np.ones_like(weights)
    # Sums run over the sorted weights, so the threshold, to the last bit, does not depend on row order.
    sorted_weights = np.sort(weights)
    positive = sorted_weights[sorted_weights > 0]
    if len(positive) < rate * len(weights):
        raise ValueError(
            f"cannot reach flip rate {rate}: only {len(positive)} of {len(weights)} pairs have a "
            "non-zero flip weight (their weights underflowed); use a larger temperature or a smaller strength"
        )
    # mean(p) falls as t rises. At t = min positive weight every positive-weight pair has p = 1
    # (mean >= rate); at t = sum(w) / (rate * N), mean(p) <= mean(w / t) = rate.
    low = positive[0]
    with np.errstate(over="ignore"):
        high = max(low, sorted_weights.sum() / (rate * len(weights)))
    if not np.isfinite(high):  # a rate so small that every probability rounds to 0
        return np.zeros_like(weights)
    for _ in range(CALIBRATION_ITERATIONS):
        threshold = 0.5 * (low + high)
        if np.minimum(1.0, sorted_weights / threshold).mean() > rate:
            low = threshold
        else:
            high = threshold
    return np.minimum(1.0, weights / high)


def weighted_flips(
    weights: np.ndarray, uniforms: np.ndarray, rate: float, mode: str, pair_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip pairs in proportion to `weights` at an overall `rate`.

    `exact`: exactly round(rate * N) pairs, drawn without replacement with probability proportional
    to the weights, by the Efraimidis–Spirakis keys u_i^(1 / w_i) (Efraimidis & Spirakis 2006,
    "Weighted random sampling with a reservoir", algorithm A): the top-k keys. The keys do not
    depend on the rate, so the sets are nested. No closed-form per-pair probability: None.

    `bernoulli`: each pair independently with p_i = min(1, w_i / t), mean(p) = rate; returns p.
    """
    if mode == "exact":
        with np.errstate(divide="ignore"):
            sampling_keys = np.log(uniforms) / weights  # log of u^(1/w); w = 0 gives -inf, never drawn first
        selected = top_k_mask(flip_count(rate, len(weights)), sampling_keys, uniforms, pair_ids)
        return selected, None
    flip_probability = calibrated_probabilities(weights, rate)
    return uniforms < flip_probability, flip_probability
