"""The exact γ-PO margin solver (`solvers.solve_margins`, ``solver="exact"``, the default).

It solves the stationarity conditions of the γ-PO problem (`margins.solvers`) to round-off. Write
``x_i = log γ_i``, ``κ = γ0/τ`` and the level ``a = μ/τ − 1 + log γ0``; stationarity becomes

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

On CPU tensors a host solver runs first (`margins.exact_host`: NumPy, nested safeguarded Newton with
early exits, about 10× fewer array operations); where it has not converged within its iteration limits
(measured: only at κ = γ0/τ ≥ 2000 on the stress grid) the device solver below takes over, so both
give the same optimum to round-off.

The device solver: every loop has a fixed length and no step reads a tensor value on the host, so it runs
on any device without synchronising (the one host check is the finiteness of the input). The
counts below were measured on the stress grid of ``tests/test_margins.py`` (τ 1e-3…1e3,
γ0 0.1…100, normal gaps with spreads 1…1e4, shifted and not, N 256 and 4096, several seeds) and
on adversarial sets (equal gaps, N = 1 and 2, Cauchy tails, log-spaced ladders, τ down to 1e-4,
γ0 up to 1e3): every case has a stationarity residual below 1e-10 after five joint steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from noisypref.methods.margins.exact_host import host_exact_log_weights

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


def exact_log_weights(reward_gap: torch.Tensor, gamma0: float, tau: float) -> torch.Tensor:
    """log p* to round-off: on CPU tensors the host solver, where it converges; else the device solver."""
    if reward_gap.device.type == "cpu":
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            host = host_exact_log_weights(reward_gap.numpy(), gamma0, tau)
        if host is not None:
            return torch.from_numpy(host)
    return device_exact_log_weights(reward_gap, gamma0, tau)


def device_exact_log_weights(reward_gap: torch.Tensor, gamma0: float, tau: float) -> torch.Tensor:
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
