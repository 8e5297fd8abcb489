"""The exact solver's two paths: the host path (CPU tensors) and the sync-free device path.

test_margins.py checks stationarity of ``solve_margins`` (the host path on CPU); here both paths are
solved independently on the same problems and must agree, and the device path, which the host path
hands extreme problems to, stays stationary on its own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noisypref.methods.margins import solve_margins
from noisypref.methods.margins.exact import device_exact_log_weights
from noisypref.methods.margins.exact_host import host_exact_log_weights


def stationarity_residual(gaps: torch.Tensor, log_weights: torch.Tensor, gamma0: float, tau: float) -> float:
    """max_i |ψ_i − μ|/(τ + γ0), ψ_i = γ0·σ(γ_i − g_i) + τ(1 + log N p_i) (DESIGN §3.1), μ the midpoint."""
    count = gaps.numel()
    margins = gamma0 * count * torch.exp(log_weights)
    psi = gamma0 * torch.sigmoid(margins - gaps) + tau * (1 + math.log(count) + log_weights)
    return float((psi.max() - psi.min()) / 2 / (tau + gamma0))


def normal(count: int, spread: float, shift: float, seed: int = 0) -> torch.Tensor:
    return (
        torch.randn(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
        + shift
    )


@pytest.mark.parametrize("spread", [1.0, 5.0, 100.0])
@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_host_and_device_paths_agree(spread, shift):
    gaps = normal(256, spread, shift)
    for tau in (0.1, 0.3, 1.0, 3.0, 10.0, 20.0):
        for gamma0 in (0.5, 1.0, 4.0):
            with np.errstate(all="ignore"):
                host = host_exact_log_weights(gaps.numpy(), gamma0, tau)
            assert host is not None, f"the host path did not converge at tau={tau}, gamma0={gamma0}"
            device = device_exact_log_weights(gaps, gamma0, tau)
            assert stationarity_residual(gaps, torch.from_numpy(host), gamma0, tau) < 1e-10
            assert stationarity_residual(gaps, device, gamma0, tau) < 1e-10
            host_margins = gamma0 * 256 * np.exp(host)
            device_margins = gamma0 * 256 * torch.exp(device).numpy()
            assert np.abs(host_margins - device_margins).max() < 1e-8 * (1 + gamma0)


@pytest.mark.parametrize(("gamma0", "tau"), [(20.0, 1e-3), (100.0, 1e-2)])
def test_extreme_problems_fall_back_to_the_device_path_and_stay_stationary(gamma0, tau):
    gaps = normal(256, 1.0, 0.0)
    with np.errstate(all="ignore"):
        assert host_exact_log_weights(gaps.numpy(), gamma0, tau) is None  # κ = γ0/τ ≥ 2000: handed over
    margins, log_weights = solve_margins(gaps, gamma0, tau, return_log_weights=True)
    assert stationarity_residual(gaps, log_weights, gamma0, tau) < 1e-6
    assert margins.mean().item() == pytest.approx(gamma0, rel=1e-12)
