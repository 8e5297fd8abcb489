"""The small-gap analysis of γ-DPO (docs/methods.md, "γ-DPO when reward gaps are small"), checked against
independent computations: the package's exact γ solver and torch autograd through the two losses.

For reward gaps g_i near 0 the exact margins are linear in the gap, γ_i − γ0 ≈ c·(g_i − ḡ) with
c = γ0²σ′(γ0) / (γ0²σ′(γ0) + τ); each pair's gradient weight is then ∝ 1 − ½(1 − c)·h_i, which is rDPO's
1 − ½(1 − 2ε)·h_i at ε = c/2. The neglected terms are of second order in the gaps, so the checks use
gap scales s = 0.1 and 0.01 and bound the error by its order (s for the slope's relative error, s² for the
weights) with a constant of 1; the measured constants are 0.002–0.013 for the slope and 0.14–0.37 for the
weights, and the errors fall by about the factor their order predicts between the two scales.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noisypref.methods import build
from noisypref.methods.base import PairLogps
from noisypref.methods.margins import solve_margins

# (γ0, τ): the small-gap default's probe setting and the issue's three matched pairs.
SETTINGS = [(1.0, 0.3), (1.0, 1.0), (2.0, 0.3), (4.0, 0.1)]
SCALES = (0.1, 0.01)
BETA = 0.1


def slope_by_hand(gamma0: float, tau: float) -> float:
    """c = γ0²σ′(γ0) / (γ0²σ′(γ0) + τ), σ′(x) = σ(x)(1 − σ(x)), written out without the package."""
    logistic = 1.0 / (1.0 + math.exp(-gamma0))
    curvature = gamma0**2 * logistic * (1.0 - logistic)
    return curvature / (curvature + tau)


def test_the_issue_s_matched_epsilons() -> None:
    # Issue 22: rDPO at ε 0.0822 / 0.2917 / 0.3693 matched γ-DPO at (1, 1) / (2, 0.3) / (4, 0.1); slope 0.40 at (1, 0.3).
    assert [round(slope_by_hand(*setting) / 2, 4) for setting in SETTINGS[1:]] == [0.0822, 0.2917, 0.3693]
    assert round(slope_by_hand(1.0, 0.3), 2) == 0.40


@pytest.mark.parametrize(("gamma0", "tau"), SETTINGS)
def test_exact_margins_are_linear_in_small_gaps_with_slope_c(gamma0: float, tau: float) -> None:
    c = slope_by_hand(gamma0, tau)
    errors = []
    for scale in SCALES:
        gaps = torch.tensor(np.random.default_rng(0).normal(scale=scale, size=256), dtype=torch.float64)
        margins = solve_margins(gaps, gamma0, tau).numpy()
        slope, intercept = np.polyfit(gaps.numpy(), margins, 1)
        errors.append(abs(slope - c))
        assert abs(slope - c) <= scale * c  # relative error of the order of the gap scale
        assert intercept == pytest.approx(gamma0 - slope * gaps.numpy().mean(), abs=1e-9)  # mean γ is γ0
    assert errors[1] < errors[0] / 5  # shrinks with the gap scale (measured: by 15-19 from 0.1 to 0.01)


def per_pair_weights(method_name: str, gaps: torch.Tensor, **hyperparameters: float) -> np.ndarray:
    """−∂(batch loss)/∂h_i by autograd through the method, normalised to mean 1 (Adam's common scale)."""
    chosen = (gaps / BETA).clone().requires_grad_(True)  # h = β·(lw − 0) − β·(0 − 0)
    zeros, ones = torch.zeros_like(gaps), torch.ones_like(gaps)
    method = build(method_name, beta=BETA, **hyperparameters)  # a fresh γ queue: the batch is the candidate set
    output = method(PairLogps(chosen, zeros, ones, ones, reference_chosen=zeros, reference_rejected=zeros))
    output.objective.backward()
    weights = -chosen.grad.numpy() / BETA
    return weights / weights.mean()


@pytest.mark.parametrize(("gamma0", "tau"), SETTINGS)
def test_gamma_dpo_weights_equal_robust_dpo_at_half_c_to_first_order(gamma0: float, tau: float) -> None:
    epsilon = slope_by_hand(gamma0, tau) / 2
    differences = {}
    for scale in SCALES:
        # gaps centred at +scale, as after some training; the centre enters at second order only
        gaps = torch.tensor(np.random.default_rng(1).normal(loc=scale, scale=scale, size=256), dtype=torch.float64)
        gamma_dpo = per_pair_weights("gamma_dpo", gaps, gamma0=gamma0, tau=tau)
        robust_dpo = per_pair_weights("robust_dpo", gaps, label_smoothing=epsilon)
        dpo = per_pair_weights("dpo", gaps)
        differences[scale] = np.abs(gamma_dpo - robust_dpo).max()
        assert differences[scale] <= scale**2  # second order: the first-order terms agree
        # ... while the weights themselves, and their difference from DPO's, are first order
        assert np.abs(gamma_dpo - 1).max() > scale / 10
        assert np.abs(gamma_dpo - dpo).max() > 10 * differences[scale]
    assert differences[0.01] < differences[0.1] / 30  # quadratic: 100x smaller (measured 81-100x)


def test_gamma_carries_no_gradient() -> None:
    """γ is detached: the γ-DPO gradient is that of −log σ(h − m) with m fixed at the solved margins."""
    gaps = torch.tensor(np.random.default_rng(2).normal(loc=0.3, scale=0.5, size=64), dtype=torch.float64)
    weights = per_pair_weights("gamma_dpo", gaps, gamma0=1.0, tau=0.3)
    margins = solve_margins(gaps, 1.0, 0.3) - 1.0
    by_hand = torch.sigmoid(margins - gaps).numpy()  # −d/dh [−log σ(h − m)] = σ(m − h)
    np.testing.assert_allclose(weights, by_hand / by_hand.mean(), rtol=1e-10)
