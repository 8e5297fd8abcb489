"""γ-PO margins (noisypref.methods.margins, DESIGN §3.1) against references computed here.

The stationarity residual and the objective are evaluated from their formulas in this file, the
optimum is checked against scipy's SLSQP, and the queue against hand-written FIFO contents.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit, log_expit, xlogy

from noisypref.methods.margins import MarginEstimator, solve_margins


def normal_gaps(count: int, spread: float, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, generator=generator, dtype=torch.float64) * spread + shift


def stationarity_residual(gaps: torch.Tensor, log_weights: torch.Tensor, gamma0: float, tau: float) -> float:
    """max_i |ψ_i − μ| / (τ + γ0) with ψ_i = γ0·σ(γ_i − g_i) + τ·(1 + log(N·p_i)) (DESIGN §3.1).

    μ is the midpoint of the ψ_i, the multiplier that minimises the largest deviation.
    """
    g = gaps.double().numpy()
    log_p = log_weights.double().numpy()
    count = g.size
    margin = gamma0 * count * np.exp(log_p)
    psi = gamma0 * expit(margin - g) + tau * (1 + math.log(count) + log_p)
    return float((psi.max() - psi.min()) / 2 / (tau + gamma0))


def objective(gaps: torch.Tensor, margins: torch.Tensor, gamma0: float, tau: float) -> float:
    """(1/N) Σ −log σ(g_i − γ_i) + τ Σ p_i log(N·p_i), p_i = γ_i/(γ0·N) (DESIGN §3.1)."""
    g = gaps.double().numpy()
    margin = margins.double().numpy()
    count = g.size
    p = margin / (gamma0 * count)
    return float(-log_expit(g - margin).mean() + tau * xlogy(p, count * p).sum())


# --- the optimum ----------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["exact", "mirror_descent"])
@pytest.mark.parametrize(("gamma0", "tau"), [(1.0, 10.0), (4.0, 1.0), (0.1, 0.01), (20.0, 3.0)])
def test_mean_margin_is_gamma0(solver, gamma0, tau):
    gaps = normal_gaps(256, 3.0, 1.0)
    margins = solve_margins(gaps, gamma0, tau, solver)
    assert margins.mean().item() == pytest.approx(gamma0, rel=1e-12)


@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0, 10.0])
def test_margins_increase_with_the_gap(tau):
    gaps = torch.sort(normal_gaps(256, 5.0)).values
    margins = solve_margins(gaps, 4.0, tau)
    assert torch.all(torch.diff(margins) >= -1e-12 * margins.abs().max())
    assert margins[-1] > margins[0]


def test_large_tau_gives_the_constant_margin():
    gaps = normal_gaps(256, 10.0)
    for solver in ("exact", "mirror_descent"):
        margins = solve_margins(gaps, 2.0, 1e6, solver)
        torch.testing.assert_close(margins, torch.full_like(margins, 2.0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("tau", [3.0, 10.0, 20.0])
def test_exact_and_published_iteration_agree_where_it_converges(tau):
    # Gaps N(0, 2²), γ0 = 1: the 20 published steps contract by about 2^-20 here.
    gaps = normal_gaps(256, 2.0)
    exact = solve_margins(gaps, 1.0, tau)
    published = solve_margins(gaps, 1.0, tau, "mirror_descent", iterations=20)
    assert (exact - published).abs().max().item() < 1e-4


def test_exact_beats_the_published_iteration_at_small_tau():
    # DESIGN §3.1 reports objective 4.06 (published) against 3.58 (exact) at τ = 1 with widely spread
    # gaps; here γ0 = 4 and gaps N(1, 5²) give a gap of the same size.
    gaps = normal_gaps(256, 5.0, 1.0)
    exact = solve_margins(gaps, 4.0, 1.0)
    published = solve_margins(gaps, 4.0, 1.0, "mirror_descent", iterations=20)
    exact_objective = objective(gaps, exact, 4.0, 1.0)
    published_objective = objective(gaps, published, 4.0, 1.0)
    assert published_objective - exact_objective > 0.3
    assert (exact - published).abs().max().item() > 5.0


def slsqp_margins(gaps: torch.Tensor, gamma0: float, tau: float) -> tuple[np.ndarray, float]:
    """The optimum by scipy's SLSQP over the margins m = γ0·N·p: Σ m = N·γ0, m ≥ 0."""
    g = gaps.numpy()
    count = g.size

    def fun(m):
        p = m / (gamma0 * count)
        return -log_expit(g - m).mean() + tau * xlogy(p, count * p).sum()

    def jac(m):
        p = np.maximum(m / (gamma0 * count), 1e-300)
        return expit(m - g) / count + tau * (1 + np.log(count * p)) / (gamma0 * count)

    result = minimize(
        fun,
        np.full(count, gamma0),
        jac=jac,
        method="SLSQP",
        bounds=[(0.0, None)] * count,
        constraints=[
            {"type": "eq", "fun": lambda m: m.sum() - count * gamma0, "jac": lambda m: np.ones(count)}
        ],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert result.success, result.message
    return result.x, float(result.fun)


@pytest.mark.parametrize(("gamma0", "tau", "spread"), [(2.0, 0.5, 3.0), (1.0, 3.0, 1.0), (4.0, 0.2, 5.0)])
def test_exact_optimum_matches_scipy_slsqp(gamma0, tau, spread):
    gaps = normal_gaps(16, spread, 0.5, seed=3)
    reference_margins, reference_objective = slsqp_margins(gaps, gamma0, tau)
    margins = solve_margins(gaps, gamma0, tau)
    assert objective(gaps, margins, gamma0, tau) == pytest.approx(reference_objective, abs=1e-9)
    np.testing.assert_allclose(margins.numpy(), reference_margins, atol=2e-6)


def test_exact_optimum_is_no_worse_than_slsqp_where_slsqp_struggles():
    # κ = γ0/τ = 80: some margins are ~1e-21 and SLSQP stops about 4e-10 above the optimum.
    gaps = normal_gaps(16, 10.0, 0.5, seed=3)
    _, reference_objective = slsqp_margins(gaps, 4.0, 0.05)
    exact_objective = objective(gaps, solve_margins(gaps, 4.0, 0.05), 4.0, 0.05)
    assert reference_objective - 1e-8 <= exact_objective <= reference_objective + 1e-12


# --- accuracy on the stress grid ------------------------------------------------------------

STRESS_TAUS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3)
STRESS_GAMMA0S = (0.1, 1.0, 4.0, 20.0, 100.0)


@pytest.mark.parametrize("count", [256, 4096])
@pytest.mark.parametrize("spread", [1.0, 10.0, 100.0, 1e4])
@pytest.mark.parametrize("shift", [0.0, 2.0, -2.0])
def test_exact_solver_is_stationary_on_the_stress_grid(count, spread, shift):
    gaps = normal_gaps(count, spread, shift * spread, seed=count)
    worst = 0.0
    for tau in STRESS_TAUS:
        for gamma0 in STRESS_GAMMA0S:
            margins, log_weights = solve_margins(gaps, gamma0, tau, return_log_weights=True)
            assert torch.isfinite(margins).all() and torch.isfinite(log_weights).all()
            assert torch.exp(log_weights).sum().item() == pytest.approx(1.0, abs=1e-13)
            worst = max(worst, stationarity_residual(gaps, log_weights, gamma0, tau))
    assert worst < 1e-6


def awkward_gap_sets() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)

    def normal(count: int) -> torch.Tensor:
        return torch.randn(count, generator=generator, dtype=torch.float64)

    ladder = torch.logspace(-6, 4, 256, dtype=torch.float64)
    return {
        "one pair": torch.tensor([3.0], dtype=torch.float64),
        "two pairs far apart": torch.tensor([-1.0, 1e4], dtype=torch.float64),
        "all equal": torch.full((256,), 5.0, dtype=torch.float64),
        "all zero": torch.zeros(256, dtype=torch.float64),
        "spread 1e-8": 1e-8 * normal(256),
        "one outlier": torch.cat([normal(255), torch.tensor([1e4], dtype=torch.float64)]),
        "two clusters": torch.cat([normal(128) - 50, normal(128) + 50]),
        "integers with ties": torch.randint(-3, 4, (256,), generator=generator).double(),
        "Cauchy tails": (
            10 * torch.tan(math.pi * (torch.rand(1024, generator=generator, dtype=torch.float64) - 0.5))
        ).clamp(-1e4, 1e4),
        "log ladder": ladder,
        "negative log ladder": -ladder,
        "around 1e6": 1e6 + 1e5 * normal(256),
    }


@pytest.mark.parametrize("name", list(awkward_gap_sets()))
def test_exact_solver_is_stationary_on_awkward_gap_sets(name):
    gaps = awkward_gap_sets()[name]
    worst = 0.0
    for tau in (1e-4, 1e-3, 0.03, 1.0, 30.0, 1e3):
        for gamma0 in (0.1, 1.0, 4.0, 100.0, 1000.0):
            margins, log_weights = solve_margins(gaps, gamma0, tau, return_log_weights=True)
            assert torch.isfinite(margins).all() and torch.isfinite(log_weights).all()
            assert margins.mean().item() == pytest.approx(gamma0, rel=1e-12)
            worst = max(worst, stationarity_residual(gaps, log_weights, gamma0, tau))
    assert worst < 1e-6


@pytest.mark.parametrize("gamma0", [0.1, 4.0, 100.0])
@pytest.mark.parametrize("tau", [1e-3, 1e3])
def test_extreme_gaps_and_temperatures_stay_finite(gamma0, tau):
    gaps = torch.tensor([-1e4, -1e4, -5e3, -1.0, 0.0, 1e-3, 2.0, 50.0, 5e3, 1e4, 1e4], dtype=torch.float64)
    for solver in ("exact", "mirror_descent"):
        margins, log_weights = solve_margins(gaps, gamma0, tau, solver, return_log_weights=True)
        assert torch.isfinite(margins).all() and (margins >= 0).all()
        assert torch.isfinite(log_weights).all()
        assert margins.mean().item() == pytest.approx(gamma0, rel=1e-12)
    _, exact_log_weights = solve_margins(gaps, gamma0, tau, return_log_weights=True)
    assert stationarity_residual(gaps, exact_log_weights, gamma0, tau) < 1e-6


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False), min_size=1, max_size=64),
    gamma0=st.one_of(st.just(0.0), st.floats(1e-6, 50.0)),
    log10_tau=st.floats(-3.0, 3.0),
)
def test_margins_are_finite_nonnegative_with_mean_gamma0(gaps, gamma0, log10_tau):
    tau = 10.0**log10_tau
    gaps = torch.tensor(gaps, dtype=torch.float64)
    margins, log_weights = solve_margins(gaps, gamma0, tau, return_log_weights=True)
    assert torch.isfinite(margins).all() and (margins >= 0).all()
    assert margins.mean().item() == pytest.approx(gamma0, rel=1e-12, abs=1e-300)
    if gamma0 > 0:
        assert stationarity_residual(gaps, log_weights, gamma0, tau) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_exact_solver_runs_on_cuda_without_host_synchronisation():
    from noisypref.methods.margins.exact import exact_log_weights  # the solver without the input check

    gaps = normal_gaps(256, 10.0)
    cuda_gaps = gaps.cuda()
    exact_log_weights(cuda_gaps, 4.0, 0.1)  # warm-up: allocator and kernels
    torch.cuda.set_sync_debug_mode("error")
    try:
        log_weights = exact_log_weights(cuda_gaps, 4.0, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert log_weights.device.type == "cuda"
    assert stationarity_residual(gaps, log_weights.cpu(), 4.0, 0.1) < 1e-6
    cpu_margins = solve_margins(gaps, 4.0, 0.1)
    torch.testing.assert_close(solve_margins(cuda_gaps, 4.0, 0.1).cpu(), cpu_margins, rtol=1e-8, atol=1e-9)


def test_zero_budget_gives_zero_margins():
    margins = solve_margins(normal_gaps(32, 3.0), 0.0, 1.0)
    assert torch.equal(margins, torch.zeros(32, dtype=torch.float64))


def test_dtype_and_gradient():
    gaps = normal_gaps(64, 3.0).float().requires_grad_()
    margins = solve_margins(gaps, 1.0, 1.0)
    assert margins.dtype == torch.float32 and not margins.requires_grad
    reference = solve_margins(gaps.detach().double(), 1.0, 1.0)
    torch.testing.assert_close(margins.double(), reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"gamma0": -1.0}, "gamma0"),
        ({"gamma0": math.inf}, "gamma0"),
        ({"tau": 0.0}, "tau"),
        ({"tau": math.nan}, "tau"),
        ({"solver": "newton"}, "solver"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"gaps": torch.zeros(0)}, "gaps"),
        ({"gaps": torch.zeros(2, 2)}, "gaps"),
        ({"gaps": torch.tensor([0.0, math.nan])}, "gaps"),
        ({"gaps": torch.tensor([0.0, -math.inf])}, "gaps"),
    ],
)
def test_solve_margins_validates_its_arguments(arguments, name):
    call = {"gaps": torch.zeros(4), "gamma0": 1.0, "tau": 1.0, **arguments}
    with pytest.raises(ValueError, match=name):
        solve_margins(**call)


# --- the estimator and its queue --------------------------------------------------------------


def queue_of(estimator: MarginEstimator) -> list[float]:
    return estimator.state_dict()["queue"].tolist()


def test_queue_starts_empty_is_fifo_and_capped():
    estimator = MarginEstimator(queue_size=5, candidates=64)
    assert queue_of(estimator) == []
    estimator(torch.tensor([1.0, 2.0, 3.0]))
    assert queue_of(estimator) == [1.0, 2.0, 3.0]
    estimator(torch.tensor([4.0, 5.0, 6.0]))
    estimator(torch.tensor([7.0]))
    assert queue_of(estimator) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_evaluation_does_not_enqueue():
    estimator = MarginEstimator(queue_size=8)
    estimator(torch.tensor([1.0, 2.0]))
    estimator.eval()
    assert not estimator.training
    estimator(torch.tensor([3.0, 4.0]))
    assert queue_of(estimator) == [1.0, 2.0]
    estimator.train()
    estimator(torch.tensor([5.0]))
    assert queue_of(estimator) == [1.0, 2.0, 5.0]


def test_evaluation_changes_no_state():
    with_eval = MarginEstimator(queue_size=10, candidates=6, seed=2)
    without_eval = MarginEstimator(queue_size=10, candidates=6, seed=2)
    for estimator in (with_eval, without_eval):
        estimator(normal_gaps(5, 2.0, seed=0))
    state = with_eval.state_dict()
    with_eval.eval()(normal_gaps(3, 2.0, seed=1))
    assert torch.equal(with_eval.state_dict()["queue"], state["queue"])
    assert torch.equal(with_eval.state_dict()["generator_state"], state["generator_state"])
    with_eval.train()
    batch = normal_gaps(3, 2.0, seed=2)
    assert torch.equal(with_eval(batch), without_eval(batch))


def test_candidate_count_never_exceeds_candidates():
    estimator = MarginEstimator(queue_size=100, candidates=8)
    for step in range(6):
        queued = len(queue_of(estimator))
        estimator(normal_gaps(3, 2.0, seed=step))
        assert estimator.last_candidate_count == min(8, 3 + queued)
    estimator(normal_gaps(20, 2.0, seed=99))
    assert estimator.last_candidate_count == 20  # a batch larger than K is the candidate set


def test_candidate_set_is_batch_plus_queue_sample():
    batch_size, queue_size = 4, 6
    estimator = MarginEstimator(
        gamma0=2.0, tau=0.5, queue_size=queue_size, candidates=batch_size + queue_size
    )
    history = normal_gaps(queue_size, 3.0, seed=1)
    estimator(history)
    batch = normal_gaps(batch_size, 3.0, seed=2)
    margins = estimator(batch)
    # K = batch + Q takes the whole queue; the problem does not depend on the order of the gaps.
    expected = solve_margins(torch.cat([batch, history]), 2.0, 0.5)[:batch_size]
    torch.testing.assert_close(margins, expected, rtol=1e-12, atol=1e-12)
    large_batch = normal_gaps(16, 3.0, seed=3)
    torch.testing.assert_close(estimator(large_batch), solve_margins(large_batch, 2.0, 0.5), rtol=0, atol=0)


def test_state_dict_round_trip_continues_identically():
    estimator = MarginEstimator(gamma0=1.5, tau=2.0, queue_size=32, candidates=12, seed=7)
    for step in range(4):
        estimator(normal_gaps(5, 3.0, seed=step))
    state = estimator.state_dict()
    assert state["queue"].device.type == "cpu" and state["queue"].numel() == 20
    resumed = MarginEstimator(gamma0=1.5, tau=2.0, queue_size=32, candidates=12, seed=123)
    resumed.load_state_dict(state)
    for step in range(4, 8):
        batch = normal_gaps(5, 3.0, seed=step)
        assert torch.equal(estimator(batch), resumed(batch))
    assert queue_of(estimator) == queue_of(resumed)


def test_estimator_returns_detached_margins_of_the_batch_dtype():
    estimator = MarginEstimator(gamma0=1.0, tau=1.0)
    gaps = normal_gaps(10, 2.0).float().requires_grad_()
    margins = estimator(gaps)
    assert margins.dtype == torch.float32 and margins.shape == (10,) and not margins.requires_grad
    assert margins.double().mean().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"gamma0": -0.5}, "gamma0"),
        ({"tau": -1.0}, "tau"),
        ({"queue_size": -1}, "queue_size"),
        ({"queue_size": 2.0}, "queue_size"),
        ({"candidates": 0}, "candidates"),
        ({"solver": "bisection"}, "solver"),
        ({"iterations": 0}, "iterations"),
        ({"seed": -3}, "seed"),
    ],
)
def test_estimator_validates_its_arguments(arguments, name):
    with pytest.raises(ValueError, match=name):
        MarginEstimator(**arguments)


def test_load_state_dict_rejects_a_queue_longer_than_queue_size():
    state = MarginEstimator().state_dict()
    state["queue"] = torch.zeros(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="queue_size"):
        MarginEstimator(queue_size=4).load_state_dict(state)


def test_a_non_finite_gap_gives_nan_margins_and_leaves_the_queue_alone():
    estimator = MarginEstimator(queue_size=8, candidates=6, seed=1)
    estimator(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    before = estimator.state_dict()
    margins = estimator(torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64))
    assert margins.shape == (3,) and torch.isnan(margins).all()
    after = estimator.state_dict()
    assert torch.equal(after["queue"], before["queue"])
    assert torch.equal(after["generator_state"], before["generator_state"])
