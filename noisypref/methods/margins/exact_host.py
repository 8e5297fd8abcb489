"""The exact γ-PO margin solver on the host (NumPy, float64), tried first on CPU tensors (`margins.exact`)."""

from __future__ import annotations

import math

import numpy as np

# Iteration limits before the host solver hands the problem to the device solver.
_HOST_OUTER_STEPS = 40
_HOST_INNER_STEPS = 60


def host_exact_log_weights(reward_gap: np.ndarray, gamma0: float, tau: float) -> np.ndarray | None:
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
