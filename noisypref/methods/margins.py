"""γ-PO dynamic target margins: Sun et al., "Robust Preference Optimization via Dynamic Target Margins", 2025.

DESIGN §3.1. For a candidate set of N reward gaps ``g``, the per-pair margins are
``γ_i = γ0·N·p_i`` with

    p* = argmin over the simplex   (1/N) Σ_i −log σ(g_i − γ0·N·p_i)  +  τ Σ_i p_i log(N·p_i),

so the mean margin is exactly γ0. The problem is strictly convex; stationarity is
``γ0·σ(γ_i − g_i) + τ·(1 + log(N·p_i)) = μ`` for every i, with μ fixed by Σ p = 1.

Two solvers:

* ``"published_mirror_descent"``: the published schedule exactly (``get_gamma_dq`` in
  ``scripts/simpo_trainer.py`` and ``scripts/xpo_trainer.py`` of sunjie279/gammaPO): ``iterations``
  passes of exponentiated gradient from the uniform distribution with step ``min(0.5/τ, 1)`` and
  gradient ``τ(1 + log(N(p_i + 1e-10))) + γ0·σ(γ_i − g_i)``; each pass computes γ from p *before*
  updating p, so the returned γ reflects ``iterations − 1`` updates. Use it to reproduce the paper.
* ``"mirror_descent"``: noisypref's variant of that iteration (kept so that studies which name it
  keep their results): the same step in log space without the 1e-10, returning the margins after
  ``iterations`` updates. Both reach the optimum for τ ≳ 3 and stop short of it for small τ and
  widely spread gaps.
* ``"exact"`` (default): solves the stationarity conditions to round-off. Write ``x_i = log γ_i``,
  ``κ = γ0/τ`` and the level ``a = μ/τ − 1 + log γ0``; stationarity becomes

      y_i(x_i) := x_i + κ·σ(e^{x_i} − g_i) = a,        mean_i e^{x_i} = γ0.

  Each ``y_i`` is increasing with ``y_i' ≥ 1``, so ``x_i(a)`` is increasing and 1-Lipschitz and
  ``L(a) = log mean_i e^{x_i(a)}`` is increasing with ``L' ≤ 1``. For large κ the curve of a pair
  has two flat stretches (σ ≈ 0 and σ ≈ 1) joined by a step of height κ in ``t = e^x − g`` (the
  water-filling limit ``γ_i → clip(g_i, e^{a−κ}, e^a)``); Newton's method alone cycles there.
  The solver therefore

  1. puts a fixed set of knots on every pair's curve (fixed logits ``t``, which resolve the step,
     and fixed log-margins ``x``, which resolve the bend of pairs with small gaps); for any level
     the two knots around it bracket ``x_i(a)`` tightly in ``x`` on the flat stretches and in ``t``
     on the step (``_knot_bracket``);
  2. scans levels twice — eight logit-spaced over ``[log γ0, log γ0 + κ]`` plus the
     water-filling level, then eight evenly spaced inside the bracket that pass leaves — and
     solves every pair at each by one safeguarded Newton step from its knot bracket. Bounds on
     ``x_i(a)`` (the root lies between x and x − residual since y' ≥ 1) bound ``L(a)``, and
     ``L' ≤ 1`` turns those into a bracket on the level ``a*``; the level whose budget is closest
     to γ0 starts
  3. joint Newton steps on ``(x, a)``. The Jacobian is an arrow (diagonal plus the budget row),
     so a step costs O(N); a level step that leaves the (still shrinking) bracket on ``a*`` is
     replaced by its midpoint, and every pair's step is kept inside its knot bracket at the new
     level. The per-pair step is Newton in ``x`` on the flat stretches and Newton in ``t`` on
     ``t = logit((a − x)/κ)`` on the step, where that form is nearly linear;
  4. normalises ``log p = x − logsumexp(x)``, so Σ p = 1 to round-off.

  On CPU tensors a host solver runs first (``_host_exact_log_weights``: NumPy, nested
  safeguarded Newton with early exits, about 10× fewer array operations); where it has not
  converged within its iteration limits (measured: only at κ = γ0/τ ≥ 2000 on the stress grid)
  the device solver below takes over, so both give the same optimum to round-off.

  The device solver: every loop has a fixed length and no step reads a tensor value on the host, so it runs
  on any device without synchronising (the one host check is the finiteness of the input). The
  counts below were measured on the stress grid of ``tests/test_margins.py`` (τ 1e-3…1e3,
  γ0 0.1…100, normal gaps with spreads 1…1e4, shifted and not, N 256 and 4096, several seeds) and
  on adversarial sets (equal gaps, N = 1 and 2, Cauchy tails, log-spaced ladders, τ down to 1e-4,
  γ0 up to 1e3): every case has a stationarity residual below 1e-10 after five joint steps.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from noisypref.checks import check_choice, check_integer, check_non_negative, check_positive
from noisypref.collectives import all_gather_rows

SOLVERS = ("exact", "mirror_descent", "published_mirror_descent")
# The published code's guard inside the logarithm (get_gamma_dq, ``self.eps``).
_PUBLISHED_EPS = 1e-10

# Knots of the exact solver (step 1): logits t = γ − g, dense where the sigmoid bends, coarse in
# its tails; and log-margins x = log γ for the bend of pairs whose curve starts at σ(−g) > 0.
_LOGIT_KNOT_RUNS = (
    (-40.0, -24.0, 4.0),
    (-24.0, -12.0, 2.0),
    (-12.0, 12.5, 1.0),
    (14.0, 25.0, 2.0),
    (28.0, 41.0, 4.0),
)
_LOG_MARGIN_KNOT_RUN = (-30.0, 12.5, 2.0)
# Step 2: levels per scan pass and Newton steps per level (two steps gain nothing measurable).
_SCAN_LEVELS = 8
_SCAN_NEWTON_STEPS = 1
# Step 3: every measured case converges by the 5th joint step; 7 leave two spare quadratic steps.
_JOINT_NEWTON_STEPS = 7
# The host solver (CPU tensors): iteration limits before it hands the problem to the device solver.
_HOST_OUTER_STEPS = 40
_HOST_INNER_STEPS = 60


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
        log_weights = _exact_log_weights(reward_gap, float(gamma0), float(tau))
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


def _exact_log_weights(reward_gap: torch.Tensor, gamma0: float, tau: float) -> torch.Tensor:
    """log p* to round-off: on CPU tensors the host solver, where it converges; else the device solver."""
    if reward_gap.device.type == "cpu":
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            host = _host_exact_log_weights(reward_gap.numpy(), gamma0, tau)
        if host is not None:
            return torch.from_numpy(host)
    return _device_exact_log_weights(reward_gap, gamma0, tau)


def _device_exact_log_weights(reward_gap: torch.Tensor, gamma0: float, tau: float) -> torch.Tensor:
    """log p* to round-off without host synchronisation; the algorithm is described in the module docstring."""
    count = reward_gap.numel()
    kappa = gamma0 / tau
    log_budget = math.log(gamma0)  # the level a* lies in [log γ0, log γ0 + κ]
    problem = _Problem(
        gap=reward_gap[:, None],
        kappa=kappa,
        knots=_curve_knots(reward_gap, kappa),
        log_total_budget=math.log(count * gamma0),
        # rounding errors of x and of the level, which reach |a| ≤ |log γ0| + κ
        step_tolerance=1e-15 * (1 + abs(log_budget) + 2 * kappa),
        level_tolerance=1e-12 * (1 + abs(log_budget) + kappa),
    )
    level_low = reward_gap.new_full((), log_budget)
    level_high = reward_gap.new_full((), log_budget + kappa)

    # Step 2: logit-spaced levels over the whole range (within e^-2 of both ends) plus the
    # water-filling level, then evenly spaced levels inside the bracket that pass leaves.
    spread = torch.linspace(-1.0, 1.0, _SCAN_LEVELS, dtype=torch.float64, device=reward_gap.device)
    coarse = log_budget + kappa * torch.sigmoid(spread * (math.log1p(kappa) + 2))
    coarse = torch.cat([coarse, _water_filling_level(reward_gap, gamma0, kappa).clamp(level_low, level_high)])
    first = _scan(problem, coarse)
    level_low, level_high = _shrink_level_bracket(coarse, first, level_low, level_high)
    fractions = torch.arange(1, _SCAN_LEVELS + 1, dtype=torch.float64, device=reward_gap.device)
    fine = level_low + (level_high - level_low) * fractions / (_SCAN_LEVELS + 1)
    second = _scan(problem, fine)
    level_low, level_high = _shrink_level_bracket(fine, second, level_low, level_high)
    best = torch.cat([first.budget_gap, second.budget_gap]).abs().argmin().reshape(1)
    level = torch.cat([coarse, fine]).index_select(0, best)
    log_margin, lower, upper = (
        torch.cat([a, b], 1).index_select(1, best)
        for a, b in (
            (first.log_margin, second.log_margin),
            (first.lower, second.lower),
            (first.upper, second.upper),
        )
    )

    # Step 3: joint Newton on (x, a); [lower, upper] brackets x(a) at the current level.
    for _ in range(_JOINT_NEWTON_STEPS):
        point = _curve_at(log_margin, problem)
        residual = point.level - level
        # The scan's bracket on a* keeps shrinking with what each step learns.
        lower, upper = _root_bounds(log_margin, residual, lower, upper)
        budget_gap, budget_low, budget_high = _budget_gaps(log_margin, lower, upper, problem)
        level_low = torch.where(budget_high < 0, torch.maximum(level_low, level - budget_high), level_low)
        level_high = torch.where(budget_low > 0, torch.minimum(level_high, level - budget_low), level_high)
        # Arrow Jacobian: per pair dx_i = (da − r_i)/y_i' and Σ softmax(x)_i·dx_i = −budget_gap.
        weight = torch.softmax(log_margin, 0) / point.slope
        new_level = level + ((weight * residual).sum(0) - budget_gap) / weight.sum(0)
        inside = (new_level >= level_low - problem.level_tolerance) & (
            new_level <= level_high + problem.level_tolerance
        )
        new_level = torch.where(inside, new_level, 0.5 * (level_low + level_high))
        new_level_grid = new_level.expand(count, 1).contiguous()
        lower, upper = _knot_bracket(new_level_grid, problem)
        log_margin, lower, upper = _safeguarded_step(
            log_margin, point, residual - (new_level - level), new_level_grid, lower, upper, problem
        )
        level = new_level

    # Step 4.
    log_margin = log_margin[:, 0]
    return log_margin - torch.logsumexp(log_margin, 0)


def _host_exact_log_weights(reward_gap: np.ndarray, gamma0: float, tau: float) -> np.ndarray | None:
    """log p* on the host (NumPy, float64): nested safeguarded Newton with early exits.

    The outer loop is Newton on the level a for L(a) = log mean_i e^{x_i(a)} − log γ0 (increasing,
    0 < L' ≤ 1), kept inside the shrinking bracket [log γ0, log γ0 + κ] on a*. The inner loop solves
    every pair's y_i(x_i) = a by the safeguarded Newton step of the device solver (Newton in x on
    the flat stretches, in t = e^x − g on the step; bisection of [a − κ, a] when a step leaves it),
    to a tolerance that tightens with the outer residual (inexact Newton); pairs already within it
    keep their value. The first level starts from every pair's best of the water-filling limit and
    one fixed-point step; later levels from the tangent x + Δa/y'. Returns ``None`` where it has
    not converged within its iteration limits; the caller then runs the device solver.
    """
    gap = reward_gap
    count = gap.size
    kappa = gamma0 / tau
    log_budget = math.log(gamma0)
    target = math.log(count * gamma0)
    level_low, level_high = log_budget, log_budget + kappa
    tolerance = 1e-13 * (1 + abs(log_budget) + kappa)
    budget_tolerance = 1e-14 * (1 + abs(target))
    level = min(max(log_budget + kappa * float(np.mean(_logistic(gamma0 - gap))), level_low), level_high)
    water_filling = np.log(np.clip(gap, math.exp(level - kappa), math.exp(min(level, 700.0))))
    candidates = (
        water_filling,
        level - kappa * _logistic(np.exp(water_filling) - gap),
        np.full(count, level),
    )
    residuals = [c + kappa * _logistic(np.exp(c) - gap) - level for c in candidates]
    best = np.argmin(np.abs(np.stack(residuals)), 0)
    log_margin = np.choose(best, candidates)
    inner_tolerance = 1e-3
    # A Newton step below this multiple of y' is round-off of x (|x| ≤ |a| + κ): on a steep stretch
    # the residual cannot go lower.
    round_off_per_slope = 1e-15 * (1 + abs(log_budget) + 2 * kappa)
    for _ in range(_HOST_OUTER_STEPS):
        lower, upper = np.full(count, level - kappa), np.full(count, level)
        last_step = older_step = np.full(count, kappa)
        threshold = max(tolerance, inner_tolerance)
        for _ in range(_HOST_INNER_STEPS):
            margin = np.exp(log_margin)
            logit = margin - gap
            sig = 1 / (1 + np.exp(-logit))
            residual = log_margin + kappa * sig - level
            slope = kappa * margin * sig * (1 - sig) + 1
            unsettled = np.abs(residual) > np.maximum(round_off_per_slope * slope, threshold)
            if not unsettled.any():
                break
            lower = np.where(residual < 0, log_margin, lower)
            upper = np.where(residual > 0, log_margin, upper)
            proposal = log_margin - residual / slope
            steep = slope >= 2
            if steep.any():
                room = level - log_margin
                headroom = kappa - room
                line_steepness = margin * room * headroom / kappa
                logit_gap = logit - np.log(room / headroom)
                newton_in_logit = np.log(margin - logit_gap * line_steepness / (line_steepness + 1))
                proposal = np.where(steep, newton_in_logit, proposal)
            # As in rtsafe (Numerical Recipes §9.4): bisect where the step leaves the bracket or fails to
            # halve the step before last, which stops Newton from bouncing between the two flat stretches.
            step = np.abs(proposal - log_margin)
            newton = (proposal > lower) & (proposal < upper) & (step <= 0.5 * older_step)
            proposal = np.where(newton, proposal, 0.5 * (lower + upper))
            older_step, last_step = last_step, np.where(newton, step, 0.5 * (upper - lower))
            log_margin = np.where(unsettled, proposal, log_margin)
        else:
            return None
        top = log_margin.max()
        weights = np.exp(log_margin - top)
        log_total = top + math.log(weights.sum())
        budget_gap = log_total - target
        settled = bool((np.abs(residual) <= np.maximum(round_off_per_slope * slope, tolerance)).all())
        if settled and abs(budget_gap) <= budget_tolerance:
            return log_margin - log_total
        # Since y' ≥ 1 each root lies between x and x − residual: certified bounds on L(a) move the bracket.
        if _log_sum_exp(np.maximum(log_margin, log_margin - residual)) < target:
            level_low = level
        elif _log_sum_exp(np.minimum(log_margin, log_margin - residual)) > target:
            level_high = level
        derivative = float((weights / slope).sum() / weights.sum())
        new_level = level - budget_gap / derivative
        if not level_low < new_level < level_high:
            new_level = 0.5 * (level_low + level_high)
        if settled and level_high - level_low <= 4e-16 * (1 + abs(level)):
            return log_margin - log_total  # the level cannot move further in float64
        log_margin = log_margin + (new_level - level) / slope
        level = new_level
        inner_tolerance = min(1e-3 * inner_tolerance, 0.01 * abs(budget_gap))
    return None


def _log_sum_exp(values: np.ndarray) -> float:
    top = values.max()
    return float(top + math.log(np.exp(values - top).sum()))


def _logistic(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values))  # the caller ignores the overflow of exp to inf (σ = 0 there)


class _Problem(NamedTuple):
    """What every step of one exact solve shares."""

    gap: torch.Tensor  # the reward gaps as a column (N, 1)
    kappa: float  # γ0/τ
    knots: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # see _curve_knots
    log_total_budget: float  # log(N·γ0): the budget is logsumexp(x) = log(N·γ0)
    step_tolerance: float
    level_tolerance: float


class _Scan(NamedTuple):
    """Every pair solved at K levels: x (N, K), its bracket, and per level the budget gap
    L(a) − log γ0 with certified bounds on it."""

    log_margin: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    budget_gap: torch.Tensor
    budget_low: torch.Tensor
    budget_high: torch.Tensor


def _scan(problem: _Problem, levels: torch.Tensor) -> _Scan:
    """Solve every pair at each level by safeguarded Newton steps from its knot bracket."""
    level_grid = levels.expand(problem.gap.shape[0], -1).contiguous()
    lower, upper = _knot_bracket(level_grid, problem)
    log_margin = 0.5 * (lower + upper)
    for _ in range(_SCAN_NEWTON_STEPS):
        point = _curve_at(log_margin, problem)
        log_margin, lower, upper = _safeguarded_step(
            log_margin, point, point.level - level_grid, level_grid, lower, upper, problem
        )
    residual = _curve_at(log_margin, problem).level - level_grid
    lower, upper = _root_bounds(log_margin, residual, lower, upper)
    return _Scan(log_margin, lower, upper, *_budget_gaps(log_margin, lower, upper, problem))


def _budget_gaps(
    log_margin: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, problem: _Problem
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L(a) − log γ0 at x and at the bracket ends (bounds on it), per column, in one reduction."""
    columns = log_margin.shape[1]
    gaps = torch.logsumexp(torch.cat([log_margin, lower, upper], 1), 0) - problem.log_total_budget
    return gaps[:columns], gaps[columns : 2 * columns], gaps[2 * columns :]


def _shrink_level_bracket(
    levels: torch.Tensor, scan: _Scan, level_low: torch.Tensor, level_high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Since L' ≤ 1, L(a) ≤ −δ < 0 gives a* ≥ a + δ and L(a) ≥ δ > 0 gives a* ≤ a − δ."""
    raised = torch.where(scan.budget_high < 0, levels - scan.budget_high, level_low).amax()
    lowered = torch.where(scan.budget_low > 0, levels - scan.budget_low, level_high).amin()
    return torch.maximum(level_low, raised), torch.minimum(level_high, lowered)


def _root_bounds(
    log_margin: torch.Tensor, residual: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Since y' ≥ 1 the root lies between x and x − residual: tighten the bracket with that."""
    lower = torch.maximum(lower, torch.minimum(log_margin, log_margin - residual))
    upper = torch.minimum(upper, torch.maximum(log_margin, log_margin - residual))
    return lower, upper


def _curve_knots(reward_gap: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots (x, s, y) on every pair's curve s = σ(e^x − g), y = x + κ·s, sorted along it.

    Sentinels x = −∞ (s = σ(−g)) and x = +∞ (s = 1) close both ends, so every finite level has a
    knot on each side. Logit knots with g + t ≤ 0 fall onto the lower sentinel.
    """
    count = reward_gap.numel()
    gap = reward_gap[:, None]
    # Built on the device by arange and fill kernels: no host-to-device copy, which would sync.
    logit_knots = torch.cat([_arange(run, reward_gap) for run in _LOGIT_KNOT_RUNS])
    log_margin_knots = _arange(_LOG_MARGIN_KNOT_RUN, reward_gap)
    ends = torch.cat(
        [reward_gap.new_full((count, 1), -math.inf), reward_gap.new_full((count, 1), math.inf)], 1
    )
    log_margin = torch.cat(
        [ends, torch.log((gap + logit_knots).clamp_min(0)), log_margin_knots.expand(count, -1)], 1
    )
    log_margin = torch.sort(log_margin, 1).values
    sig = torch.sigmoid(torch.exp(log_margin) - gap)
    return log_margin, sig, log_margin + kappa * sig


def _arange(run: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.arange(*run, dtype=torch.float64, device=like.device)


def _knot_bracket(level: torch.Tensor, problem: _Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on x_i(a) for every pair and level (``level`` is (N, K), contiguous).

    Between consecutive knots k, k+1 with y_k ≤ a < y_{k+1}: x_k ≤ x ≤ x_{k+1} and s_k ≤ σ ≤ s_{k+1};
    with x = a − κ·σ the second pair gives a − κ·s_{k+1} ≤ x ≤ a − κ·s_k.
    """
    knot_log_margin, knot_sig, knot_level = problem.knots
    above = torch.searchsorted(knot_level, level, right=True)
    below = above - 1
    lower = torch.maximum(knot_log_margin.gather(1, below), level - problem.kappa * knot_sig.gather(1, above))
    upper = torch.minimum(knot_log_margin.gather(1, above), level - problem.kappa * knot_sig.gather(1, below))
    return lower, upper


class _CurvePoint(NamedTuple):
    """A point x = log γ on a pair's curve y(x) = x + κ·σ(e^x − g)."""

    level: torch.Tensor  # y(x)
    margin: torch.Tensor  # γ = e^x
    logit: torch.Tensor  # t = γ − g
    slope: torch.Tensor  # y'(x) = 1 + κ·γ·σ(t)·(1 − σ(t)) ≥ 1


def _curve_at(log_margin: torch.Tensor, problem: _Problem) -> _CurvePoint:
    margin = torch.exp(log_margin)
    logit = margin - problem.gap
    sig = torch.sigmoid(logit)
    slope = 1 + problem.kappa * margin * (sig - sig * sig)
    return _CurvePoint(log_margin + problem.kappa * sig, margin, logit, slope)


def _safeguarded_step(
    log_margin: torch.Tensor,
    point: _CurvePoint,
    residual: torch.Tensor,
    level: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    problem: _Problem,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Newton step per pair towards y(x) = level, kept inside a bracket of the root.

    ``residual`` is y(x) − level. Since y' ≥ 1 the root lies between x and x − residual; that
    interval tightens the bracket. Where the curve is flat (y' < 2) the step is Newton in x on
    y(x) = a; on the step it is Newton in t = e^x − g on t = logit((a − x)/κ), which is nearly
    linear there. A step that leaves the bracket is replaced by the bracket's midpoint; one that
    leaves it by less than the step tolerance (a rounding error of a converged step) is clamped.
    Returns the new x and the tightened bracket.
    """
    lower, upper = _root_bounds(log_margin, residual, lower, upper)
    newton_in_x = log_margin - residual / point.slope
    # Logit form: f(t) = t − logit(s), s = (a − x)/κ = room/κ; f'(t) = 1 + 1/line_steepness with
    # line_steepness = γ·κ·s·(1 − s) = γ·room·headroom/κ.
    room = level - log_margin
    headroom = problem.kappa - room
    line_steepness = point.margin * room * headroom / problem.kappa
    logit_gap = point.logit - torch.log(room / headroom)
    newton_margin = point.margin - logit_gap * line_steepness / (line_steepness + 1)
    newton_in_logit = torch.log(newton_margin.clamp_min(0))
    proposal = torch.where(point.slope >= 2, newton_in_logit, newton_in_x)
    kept = torch.clamp(proposal, lower, upper)
    step = torch.where((kept - proposal).abs() <= problem.step_tolerance, kept, 0.5 * (lower + upper))
    return step, lower, upper


def _water_filling_level(reward_gap: torch.Tensor, gamma0: float, kappa: float) -> torch.Tensor:
    """The level of the κ → ∞ limit, as a (1,) tensor: mean_i clip(g_i, e^{a−κ}, e^a) = γ0.

    The mean is piecewise linear in e^a with kinks at a = log g_i and log g_i + κ; sorting the
    gaps gives it at every kink, and the crossing segment is solved in closed form.
    """
    count = reward_gap.numel()
    log_budget = math.log(gamma0)
    sorted_gap = torch.sort(reward_gap).values
    prefix_sum = torch.cat([sorted_gap.new_zeros(1), torch.cumsum(sorted_gap, 0)])
    log_gap = torch.log(sorted_gap.clamp_min(0))
    edges = torch.cat(
        [sorted_gap.new_full((1,), log_budget - 1), sorted_gap.new_full((1,), log_budget + kappa + 1)]
    )
    kinks = torch.cat([edges, log_gap.clamp_min(log_budget - 1), (log_gap + kappa).clamp_min(log_budget - 1)])
    kinks = torch.sort(kinks).values

    def counts(level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # gaps below the cap e^a and below the floor e^{a−κ} (a ≤ 709 keeps e^a finite; above it no gap is capped)
        below_cap = torch.searchsorted(sorted_gap, torch.exp(level.clamp(max=709.0)))
        below_floor = torch.searchsorted(sorted_gap, torch.exp(level - kappa))
        return below_cap, below_floor

    below_cap, below_floor = counts(kinks)
    capped = torch.exp(kinks.clamp(max=709.0)) * (count - below_cap)
    mean_margin = (
        capped + prefix_sum[below_cap] - prefix_sum[below_floor] + torch.exp(kinks - kappa) * below_floor
    ) / count
    segment = ((mean_margin <= gamma0).sum() - 1).clamp(0, kinks.numel() - 2).reshape(1)
    inside = 0.5 * (kinks.index_select(0, segment) + kinks.index_select(0, segment + 1))
    below_cap, below_floor = counts(inside)
    uncapped_sum = prefix_sum[below_cap] - prefix_sum[below_floor]
    # e^a·(n_capped + e^{−κ}·n_floored) = N·γ0 − Σ uncapped gaps, solved in log space.
    log_slope = torch.logaddexp(
        torch.log((count - below_cap).double()), torch.log(below_floor.double()) - kappa
    )
    level = torch.log(count * gamma0 - uncapped_sum) - log_slope
    return torch.nan_to_num(level, nan=log_budget, posinf=log_budget + kappa, neginf=log_budget)


class MarginEstimator:
    """γ-PO margins for a training loop: a candidate set from the batch plus a queue of past gaps.

    Calling it with a batch's detached reward gaps returns their margins γ_i (mean γ0 over the
    candidate set, no gradient, the batch's dtype and device). The candidate set is the batch —
    in training mode all-gathered across data-parallel ranks when ``torch.distributed`` runs with
    more than one process, so every rank solves the same problem; in evaluation mode this process's
    batch alone — plus up to ``candidates − batch`` gaps drawn
    without replacement from a FIFO queue of the last ``queue_size`` training gaps. The draw uses a
    CPU generator seeded with ``seed``, identical on every rank, and happens before the batch is
    queued. A batch of ``candidates`` or more gaps is the candidate set on its own. Only training
    batches enter the queue, which starts empty; an evaluation call changes no state (it draws
    from a copy of the generator). ``last_candidate_count`` is the size of the last candidate set.
    """

    def __init__(
        self,
        gamma0: float = 1.0,
        tau: float = 10.0,
        queue_size: int = 2048,
        candidates: int = 256,
        solver: str = "exact",
        iterations: int = 20,
        seed: int = 0,
    ) -> None:
        check_non_negative("gamma0", gamma0)
        check_positive("tau", tau)
        check_integer("queue_size", queue_size, minimum=0)
        check_integer("candidates", candidates, minimum=1)
        check_choice("solver", solver, SOLVERS)
        check_integer("iterations", iterations, minimum=1)
        check_integer("seed", seed, minimum=0)
        self.gamma0 = float(gamma0)
        self.tau = float(tau)
        self.queue_size = queue_size
        self.candidates = candidates
        self.solver = solver
        self.iterations = iterations
        self.seed = seed
        self.training = True
        self.last_candidate_count = 0
        self._queue = torch.zeros(0, dtype=torch.float64)
        self._generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> MarginEstimator:
        """Training mode: the gaps of each call enter the queue."""
        self.training = bool(mode)
        return self

    def eval(self) -> MarginEstimator:
        return self.train(False)

    def __call__(self, batch_gaps: torch.Tensor) -> torch.Tensor:
        if batch_gaps.dim() != 1:
            raise ValueError(
                f"batch_gaps must be 1-D (one gap per pair); got shape {tuple(batch_gaps.shape)}"
            )
        local_gaps = batch_gaps.detach().to(torch.float64)
        # Training steps run on every rank in lockstep; evaluation runs in one process (rank 0) and
        # never waits for the others.
        batch, offset = _all_gather_gaps(local_gaps) if self.training else (local_gaps, 0)
        if not bool(torch.isfinite(batch).all()):
            # A non-finite gap (a diverged step) gets NaN margins and leaves the queue alone: the loss
            # turns NaN and the training loop's nan_policy decides (fail, or skip the step).
            return torch.full_like(batch_gaps, math.nan)
        queue = self._queue.to(local_gaps.device)
        sample_size = min(queue.numel(), max(0, self.candidates - batch.numel()))
        if sample_size > 0:
            generator = self._generator
            if not self.training:  # evaluation leaves the training draws untouched
                generator = torch.Generator().set_state(self._generator.get_state())
            drawn = torch.randperm(queue.numel(), generator=generator)[:sample_size]
            candidate_gaps = torch.cat([batch, queue[drawn.to(queue.device)]])
        else:
            candidate_gaps = batch
        self.last_candidate_count = candidate_gaps.numel()
        margins = solve_margins(candidate_gaps, self.gamma0, self.tau, self.solver, self.iterations)
        if self.training:
            self._queue = torch.cat([queue, batch])[-self.queue_size :] if self.queue_size > 0 else queue
        return margins[offset : offset + local_gaps.numel()].to(batch_gaps.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The queue (oldest first, CPU float64) and the sampling generator's state."""
        return {"queue": self._queue.detach().cpu().clone(), "generator_state": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        queue = torch.as_tensor(state["queue"], dtype=torch.float64).detach().cpu()
        if queue.dim() != 1 or queue.numel() > self.queue_size:
            raise ValueError(
                f"state queue has shape {tuple(queue.shape)}; expected a 1-D tensor of at most "
                f"queue_size = {self.queue_size} gaps"
            )
        self._queue = queue.clone()
        self._generator.set_state(state["generator_state"])

    def __repr__(self) -> str:
        return (
            f"MarginEstimator(gamma0={self.gamma0}, tau={self.tau}, queue_size={self.queue_size}, "
            f"candidates={self.candidates}, solver={self.solver!r}, iterations={self.iterations}, seed={self.seed})"
        )


def _all_gather_gaps(local_gaps: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The gaps of every data-parallel rank in rank order, and where this rank's gaps start.

    Ranks may hold different batch sizes: the sizes are gathered first, every rank pads to the
    largest, and the padding is dropped after the gather.
    """
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return local_gaps, 0
    batch, sizes = all_gather_rows(local_gaps)
    return batch, sum(sizes[: distributed.get_rank()])


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
