"""Each loss against its formula evaluated independently with the `math` module, in float64."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from noisypref.methods import PairLogps, PreferenceMethod, available_methods, build, hyperparameter_defaults

ALL_METHODS = [
    "dpo", "cdpo", "robust_dpo", "ipo", "hinge", "simpo", "length_dpo",
    "beta_dpo", "dr_dpo", "ropo", "gamma_dpo", "gamma_simpo",
    "gamma_dpo_published", "nca_pair", "exo_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft", "rpo", "combined", "sympo", "alpha_dpo",
]  # fmt: skip
WITHOUT_BETA = {"sft", "combined"}

POLICY_CHOSEN = [-12.0, -30.5, -7.25, -50.0, -3.0]
POLICY_REJECTED = [-14.0, -28.0, -9.5, -41.0, -3.5]
REFERENCE_CHOSEN = [-13.0, -29.0, -8.0, -45.0, -2.0]
REFERENCE_REJECTED = [-13.5, -29.5, -8.5, -44.0, -4.0]
CHOSEN_LENGTH = [10, 25, 6, 40, 3]
REJECTED_LENGTH = [12, 20, 9, 33, 5]


def pair_logps(requires_grad: bool = False) -> PairLogps:
    def tensor(values):
        return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)

    return PairLogps(
        policy_chosen=tensor(POLICY_CHOSEN),
        policy_rejected=tensor(POLICY_REJECTED),
        chosen_length=torch.tensor(CHOSEN_LENGTH, dtype=torch.float64),
        rejected_length=torch.tensor(REJECTED_LENGTH, dtype=torch.float64),
        reference_chosen=tensor(REFERENCE_CHOSEN),
        reference_rejected=tensor(REFERENCE_REJECTED),
    )


def gradcheck_method(
    make_method: Callable[[], PreferenceMethod],
    logps: tuple[list[float], list[float], list[float], list[float]],
    chosen_length: list[int],
    rejected_length: list[int],
) -> bool:
    """``torch.autograd.gradcheck`` of a method's per-pair loss and objective in the four log-probs
    (policy chosen, policy rejected, reference chosen, reference rejected; float64), the lengths fixed.
    ``make_method()`` gives the method at every evaluation of the function."""

    def objective(policy_chosen, policy_rejected, reference_chosen, reference_rejected):
        output = make_method()(
            PairLogps(
                policy_chosen=policy_chosen,
                policy_rejected=policy_rejected,
                chosen_length=torch.tensor(chosen_length, dtype=torch.float64),
                rejected_length=torch.tensor(rejected_length, dtype=torch.float64),
                reference_chosen=reference_chosen,
                reference_rejected=reference_rejected,
            )
        )
        return output.loss, output.objective

    inputs = tuple(torch.tensor(values, dtype=torch.float64, requires_grad=True) for values in logps)
    return torch.autograd.gradcheck(objective, inputs)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def dpo_gap(i: int, beta: float) -> float:
    return beta * ((POLICY_CHOSEN[i] - REFERENCE_CHOSEN[i]) - (POLICY_REJECTED[i] - REFERENCE_REJECTED[i]))


def simpo_gap(i: int, beta: float) -> float:
    return beta * (POLICY_CHOSEN[i] / CHOSEN_LENGTH[i] - POLICY_REJECTED[i] / REJECTED_LENGTH[i])


def expected_losses(name: str, hp: dict) -> list[float]:
    out = []
    for i in range(len(POLICY_CHOSEN)):
        beta = hp["beta"]
        h = dpo_gap(i, beta)
        if name == "dpo":
            out.append(-log_sigmoid(h))
        elif name == "cdpo":
            e = hp["label_smoothing"]
            out.append(-(1 - e) * log_sigmoid(h) - e * log_sigmoid(-h))
        elif name == "robust_dpo":
            e = hp["label_smoothing"]
            out.append((-(1 - e) * log_sigmoid(h) + e * log_sigmoid(-h)) / (1 - 2 * e))
        elif name == "ipo":
            out.append((h / beta - 1 / (2 * beta)) ** 2)
        elif name == "hinge":
            out.append(max(0.0, 1 - h))
        elif name == "simpo":
            out.append(-log_sigmoid(simpo_gap(i, beta) - hp["gamma"]))
        elif name == "length_dpo":
            out.append(-log_sigmoid(h - hp["alpha"] * (CHOSEN_LENGTH[i] - REJECTED_LENGTH[i])))
        elif name == "ropo":
            a = hp["alpha"]
            out.append(4 * a / (1 + a) ** 2 * (-log_sigmoid(h) + a * sigmoid(-h)))
        elif name == "dr_dpo":
            out.append(-log_sigmoid(h))
        else:
            raise AssertionError(name)
    return out


CASES = [
    ("dpo", {"beta": 0.1}),
    ("dpo", {"beta": 0.5}),
    ("cdpo", {"beta": 0.1, "label_smoothing": 0.2}),
    ("robust_dpo", {"beta": 0.1, "label_smoothing": 0.2}),
    ("robust_dpo", {"beta": 0.3, "label_smoothing": 0.45}),
    ("ipo", {"beta": 0.1}),
    ("ipo", {"beta": 0.5}),
    ("hinge", {"beta": 0.4}),
    ("simpo", {"beta": 2.0, "gamma": 1.0}),
    ("simpo", {"beta": 2.5, "gamma": 0.0}),
    ("length_dpo", {"beta": 0.1, "alpha": 0.05}),
    ("ropo", {"beta": 0.1, "alpha": 2.0}),
    ("ropo", {"beta": 0.2, "alpha": 6.0}),
    ("dr_dpo", {"beta": 0.1, "beta_prime": 1.0}),
]


@pytest.mark.parametrize(("name", "hp"), CASES)
def test_loss_matches_formula(name, hp):
    output = build(name, **hp)(pair_logps())
    expected = expected_losses(name, hp)
    assert output.loss.dtype == torch.float64
    assert output.loss.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    if name != "dr_dpo":
        assert output.objective.item() == pytest.approx(sum(expected) / len(expected), rel=1e-12)


def test_simpo_and_length_dpo_margins_and_rewards():
    simpo = build("simpo", beta=2.0, gamma=1.0)(pair_logps())
    assert simpo.chosen_reward.tolist() == pytest.approx(
        [2.0 * c / n for c, n in zip(POLICY_CHOSEN, CHOSEN_LENGTH)]
    )
    assert simpo.target_margin.tolist() == pytest.approx([1.0] * 5)
    length = build("length_dpo", beta=0.1, alpha=0.05)(pair_logps())
    assert length.target_margin.tolist() == pytest.approx(
        [0.05 * (c - r) for c, r in zip(CHOSEN_LENGTH, REJECTED_LENGTH)]
    )
    assert length.reward_gap.tolist() == pytest.approx([dpo_gap(i, 0.1) for i in range(5)])


def test_dr_dpo_objective_is_soft_minimum():
    beta_prime = 0.7
    output = build("dr_dpo", beta=0.1, beta_prime=beta_prime)(pair_logps())
    losses = expected_losses("dr_dpo", {"beta": 0.1})
    expected = -beta_prime * math.log(sum(math.exp(-loss / beta_prime) for loss in losses) / len(losses))
    assert output.objective.item() == pytest.approx(expected, rel=1e-12)
    # a very large β' recovers DPO's mean
    wide = build("dr_dpo", beta=0.1, beta_prime=1e6)(pair_logps())
    assert wide.objective.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_beta_dpo_batch_beta_and_filtering_by_hand():
    # noisypref's options before 0.2 (the published defaults are tested in test_methods_published.py)
    method = build(
        "beta_dpo", beta=0.1, alpha=0.5, keep_fraction=0.8, momentum=0.9, seed=3,
        discrepancy="reward", kept_count="ceil", statistics_start="first_batch",
    )  # fmt: skip
    logps = pair_logps()
    output = method(logps)
    discrepancies = [dpo_gap(i, 0.1) for i in range(5)]
    mean = sum(discrepancies) / 5
    kept = output.diagnostics["kept"].bool().tolist()
    assert sum(kept) == math.ceil(0.8 * 5)
    kept_mean = sum(d for d, k in zip(discrepancies, kept) if k) / sum(kept)
    expected_beta = 0.1 * (1 + 0.5 * (kept_mean - mean))  # first batch: M0 is the batch mean
    assert output.diagnostics["beta"][0].item() == pytest.approx(expected_beta, rel=1e-12)
    beta_b = expected_beta
    per_pair = [-log_sigmoid(beta_b / 0.1 * d) for d in discrepancies]
    assert output.loss.tolist() == pytest.approx(per_pair, rel=1e-12)
    assert output.objective.item() == pytest.approx(
        sum(loss for loss, k in zip(per_pair, kept) if k) / sum(kept), rel=1e-12
    )
    # second batch: momentum update of the running mean
    method(logps)
    assert method.running_mean == pytest.approx(mean, rel=1e-12)  # same batch twice: mean unchanged
    # evaluation neither updates nor filters and uses β0
    before = method.state_dict()
    evaluated = method.eval()(logps)
    assert evaluated.objective.item() == pytest.approx(sum(expected_losses("dpo", {"beta": 0.1})) / 5)
    assert method.running_mean == before["running_mean"]


def test_beta_dpo_state_round_trip_continues_identically():
    first = build("beta_dpo", seed=1)
    logps = pair_logps()
    first(logps)
    state = first.state_dict()
    second = build("beta_dpo", seed=99)
    second.load_state_dict(state)
    assert torch.equal(first(logps).diagnostics["kept"], second(logps).diagnostics["kept"])
    assert first.running_std == second.running_std


@pytest.mark.parametrize(("name", "hp"), CASES)
def test_gradcheck(name, hp):
    method = build(name, **hp)
    logps = (POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED)
    assert gradcheck_method(lambda: method, logps, CHOSEN_LENGTH, REJECTED_LENGTH)


def test_gamma_methods_reduce_to_base_when_tau_is_large():
    logps = pair_logps()
    gamma_dpo = build("gamma_dpo", beta=0.1, gamma0=1.0, tau=1e7)(logps)
    dpo = build("dpo", beta=0.1)(logps)
    assert gamma_dpo.target_margin.abs().max().item() < 1e-6
    assert gamma_dpo.loss.tolist() == pytest.approx(dpo.loss.tolist(), rel=1e-6)
    gamma_simpo = build("gamma_simpo", beta=2.0, gamma0=1.0, tau=1e7)(logps)
    simpo = build("simpo", beta=2.0, gamma=1.0)(logps)
    assert gamma_simpo.loss.tolist() == pytest.approx(simpo.loss.tolist(), rel=1e-6)


def test_gamma_dpo_margins_follow_gaps_and_keep_the_budget():
    output = build("gamma_dpo", beta=0.1, gamma0=2.0, tau=1.0)(pair_logps())
    gamma = output.diagnostics["gamma"]
    assert gamma.mean().item() == pytest.approx(2.0, rel=1e-9)
    assert output.target_margin.tolist() == pytest.approx((gamma - 2.0).tolist())
    order_gap = torch.argsort(output.reward_gap)
    assert torch.all(torch.diff(gamma[order_gap]) > 0)
    h = [dpo_gap(i, 0.1) for i in range(5)]
    expected = [-log_sigmoid(h[i] - (gamma[i].item() - 2.0)) for i in range(5)]
    assert output.loss.tolist() == pytest.approx(expected, rel=1e-12)


def test_margin_estimator_attaches_to_any_gap_method():
    from noisypref.methods import MarginEstimator

    estimator = MarginEstimator(gamma0=0.5, tau=1.0)
    output = build("cdpo", label_smoothing=0.1, margin_estimator=estimator)(pair_logps())
    gamma = output.diagnostics["gamma"]
    assert output.target_margin.tolist() == pytest.approx((gamma - 0.5).tolist())
    h = [dpo_gap(i, 0.1) for i in range(5)]
    z = [h[i] - output.target_margin[i].item() for i in range(5)]
    assert output.loss.tolist() == pytest.approx([-(0.9) * log_sigmoid(v) - 0.1 * log_sigmoid(-v) for v in z])


def test_registry_lists_exactly_the_known_methods():
    assert sorted(ALL_METHODS) == available_methods()
    assert len(available_methods()) >= 22


@pytest.mark.parametrize(
    ("name", "hp", "fragment"),
    [
        ("robust_dpo", {"label_smoothing": 0.5}, "label_smoothing = 0.5"),
        ("robust_dpo", {"label_smoothing": 0.7}, "label_smoothing = 0.7"),
        ("dpo", {"beta": -1.0}, "beta = -1.0"),
        ("dpo", {"beta": 0}, "beta = 0"),
        ("gamma_dpo", {"tau": 0.0}, "tau"),
        ("gamma_dpo", {"tau": -2.0}, "tau"),
        ("gamma_simpo", {"gamma0": -1.0}, "gamma0"),
        ("simpo", {"gamma": float("nan")}, "gamma"),
        ("dpo", {"betta": 0.1}, "'betta'"),
    ],
)
def test_invalid_hyperparameters_name_the_parameter(name, hp, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        build(name, **hp)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match="registered methods: alpha_dpo, aot"):
        build("dpoo")


def test_missing_reference_is_an_error_for_reference_methods():
    logps = PairLogps(
        policy_chosen=torch.tensor([-1.0]),
        policy_rejected=torch.tensor([-2.0]),
        chosen_length=torch.tensor([1.0]),
        rejected_length=torch.tensor([1.0]),
    )
    with pytest.raises(ValueError, match="needs reference log-probs"):
        build("dpo")(logps)
    assert torch.isfinite(build("simpo")(logps).loss).all()


def test_defaults_are_listed_for_every_method():
    for name in ALL_METHODS:
        defaults = hyperparameter_defaults(name)
        assert ("beta" in defaults) == (name not in WITHOUT_BETA)
        build(name, **defaults)


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(ALL_METHODS),
    values=st.lists(
        st.tuples(finite, finite, finite, finite, st.integers(1, 2000), st.integers(1, 2000)),
        min_size=1,
        max_size=12,
    ),
)
def test_no_method_returns_nan_or_inf_on_finite_inputs(name, values):
    columns = list(zip(*values))
    logps = PairLogps(
        policy_chosen=torch.tensor(columns[0], dtype=torch.float32),
        policy_rejected=torch.tensor(columns[1], dtype=torch.float32),
        reference_chosen=torch.tensor(columns[2], dtype=torch.float32),
        reference_rejected=torch.tensor(columns[3], dtype=torch.float32),
        chosen_length=torch.tensor(columns[4], dtype=torch.float32),
        rejected_length=torch.tensor(columns[5], dtype=torch.float32),
    )
    output = build(name)(logps)
    assert torch.isfinite(output.loss).all()
    assert torch.isfinite(output.objective)
    assert torch.isfinite(output.target_margin).all()
