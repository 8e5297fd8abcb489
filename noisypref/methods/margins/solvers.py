"""The γ-PO margin problem and its solvers: Sun et al., "Robust Preference Optimization via Dynamic Target
Margins", 2025.

DESIGN §3.1. For a candidate set of N reward gaps ``g``, the per-pair margins are
``γ_i = γ0·N·p_i`` with

    p* = argmin over the simplex   (1/N) Σ_i −log σ(g_i − γ0·N·p_i)  +  τ Σ_i p_i log(N·p_i),

so the mean margin is exactly γ0. The problem is strictly convex; stationarity is
``γ0·σ(γ_i − g_i) + τ·(1 + log(N·p_i)) = μ`` for every i, with μ fixed by Σ p = 1.

Three solvers:

* ``"published_mirror_descent"``: the published schedule exactly (``get_gamma_dq`` in
  ``scripts/simpo_trainer.py`` and ``scripts/xpo_trainer.py`` of sunjie279/gammaPO): ``iterations``
  passes of exponentiated gradient from the uniform distribution with step ``min(0.5/τ, 1)`` and
  gradient ``τ(1 + log(N(p_i + 1e-10))) + γ0·σ(γ_i − g_i)``; each pass computes γ from p *before*
  updating p, so the returned γ reflects ``iterations − 1`` updates. Use it to reproduce the paper.
* ``"mirror_descent"``: noisypref's variant of that iteration (kept so that studies which name it
  keep their results): the same step in log space without the 1e-10, returning the margins after
  ``iterations`` updates. Both reach the optimum for τ ≳ 3 and stop short of it for small τ and
  widely spread gaps.
* ``"exact"`` (default): solves the stationarity conditions to round-off (`margins.exact`).
"""

from __future__ import annotations

import math

import torch

from noisypref.checks import check_choice, check_integer, check_non_negative, check_positive
from noisypref.methods.margins.exact import exact_log_weights

SOLVERS = ("exact", "mirror_descent", "published_mirror_descent")
# The published code's guard inside the logarithm (get_gamma_dq, ``self.eps``).
_PUBLISHED_EPS = 1e-10


def solve_margins(
    gaps: torch.Tensor,
    gamma0: float,
    tau: float,
    solver: str = "exact",
    iterations: int = 20,
    *,
    return_log_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-pair γ-PO margins for one candidate set of reward gaps (DESIGN §3.1).

    ``gaps`` is a 1-D tensor of N finite reward gaps; the result has its dtype and device, carries
    no gradient and has mean ``gamma0``. The solve runs in float64. ``iterations`` is used by
    ``solver="mirror_descent"`` only. With ``return_log_weights=True`` the result is
    ``(margins, log_weights)`` where ``log_weights = log p``: margins of pairs with a tiny weight
    underflow to 0, their log-weights stay exact (use them to check stationarity).
    """
    check_non_negative("gamma0", gamma0)
    check_positive("tau", tau)
    check_choice("solver", solver, SOLVERS)
    check_integer("iterations", iterations, minimum=1)
    _check_gaps(gaps)
    reward_gap = gaps.detach().to(torch.float64)
    count = reward_gap.numel()
    if gamma0 == 0:
        log_weights = torch.full_like(reward_gap, -math.log(count))
    elif solver == "mirror_descent":
        log_weights = _mirror_descent_log_weights(reward_gap, float(gamma0), float(tau), iterations)
    elif solver == "published_mirror_descent":
        margins = _published_margins(reward_gap, float(gamma0), float(tau), iterations)
        if return_log_weights:
            return margins.to(gaps.dtype), torch.log(margins / (gamma0 * count)).to(gaps.dtype)
        return margins.to(gaps.dtype)
    else:
        log_weights = exact_log_weights(reward_gap, float(gamma0), float(tau))
    margins = (gamma0 * count * torch.exp(log_weights)).to(gaps.dtype)
    if return_log_weights:
        return margins, log_weights.to(gaps.dtype)
    return margins


def margin_objective(
    gaps: torch.Tensor, log_weights: torch.Tensor, gamma0: float, tau: float
) -> torch.Tensor:
    """The γ-PO objective (1/N) Σ −log σ(g_i − γ0·N·p_i) + τ Σ p_i log(N·p_i), in float64."""
    reward_gap = gaps.detach().to(torch.float64)
    log_weights = log_weights.detach().to(torch.float64)
    count = reward_gap.numel()
    weights = torch.exp(log_weights)
    margins = gamma0 * count * weights
    # −log σ(g − γ) = softplus(γ − g); the entropy term uses log p, exact where p underflows.
    loss = torch.nn.functional.softplus(margins - reward_gap).mean()
    return loss + tau * (weights * (math.log(count) + log_weights)).sum()


def _mirror_descent_log_weights(
    reward_gap: torch.Tensor, gamma0: float, tau: float, iterations: int
) -> torch.Tensor:
    """The published solver: exponentiated gradient from uniform, in log space (DESIGN §3.1)."""
    count = reward_gap.numel()
    step = min(0.5 / tau, 1.0)
    log_weights = torch.full_like(reward_gap, -math.log(count))
    for _ in range(iterations):
        margins = gamma0 * count * torch.exp(log_weights)
        gradient = tau * (1 + math.log(count) + log_weights) + gamma0 * torch.sigmoid(margins - reward_gap)
        log_weights = log_weights - step * gradient
        log_weights = log_weights - torch.logsumexp(log_weights, 0)
    return log_weights


def _published_margins(reward_gap: torch.Tensor, gamma0: float, tau: float, iterations: int) -> torch.Tensor:
    """``get_gamma_dq`` of sunjie279/gammaPO (module docstring), vectorised, in float64."""
    count = reward_gap.numel()
    step = min(0.5 / tau, 1.0)
    weights = torch.full_like(reward_gap, 1.0 / count)
    for _ in range(iterations):
        margins = gamma0 * count * weights  # γ at the top of the pass: the one returned
        gradient = tau * (1 + torch.log(count * (weights + _PUBLISHED_EPS))) + gamma0 * torch.sigmoid(
            margins - reward_gap
        )
        weights = weights * torch.exp(-step * gradient)
        weights = weights / weights.sum()
    return margins


def _check_gaps(gaps: torch.Tensor) -> None:
    if not isinstance(gaps, torch.Tensor):
        raise ValueError(f"gaps = {gaps!r} is invalid: expected a non-empty 1-D torch.Tensor")
    if gaps.dim() != 1 or gaps.numel() == 0:
        raise ValueError(
            f"gaps = tensor of shape {tuple(gaps.shape)} is invalid: expected a non-empty 1-D tensor"
        )
    if not gaps.is_floating_point():
        raise ValueError(f"gaps has dtype {gaps.dtype}; expected a floating-point tensor")
    # One device-to-host check, outside every solver loop.
    if not bool(torch.isfinite(gaps).all()):
        bad = gaps[~torch.isfinite(gaps)][0].item()
        raise ValueError(
            f"gaps contains the non-finite value {bad}; expected finite reward gaps (-inf < gap < inf)"
        )
