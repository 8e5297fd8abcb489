"""Properties of every registered noise model, and each model against hand-computed references.

The property tests are parametrised over `NOISE_MODEL_VARIANTS`, which holds every registered
model with its default options (plus a few option variants), so a newly registered model is
tested by them without writing a new test.
"""

from __future__ import annotations

import math
import warnings

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom, norm, spearmanr

from noisypref.noise_injection import NOISE_MODELS, get_noise_model, inject

NOISE_MODEL_VARIANTS = [(name, {}) for name in sorted(NOISE_MODELS)] + [
    ("symmetric", {"mode": "bernoulli"}),
    ("confidence", {"mode": "bernoulli", "temperature": 0.5}),
    ("length", {"mode": "bernoulli", "strength": 3.0}),
    ("annotators", {"accuracy": [0.9, 0.7, 0.6, 0.8]}),
    ("annotators", {"temperature": 2.0, "panel_size": 2}),
]
EXACT_COUNT_VARIANTS = [
    ("symmetric", {}),
    ("confidence", {}),
    ("length", {}),
    ("adversarial", {}),
]

PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

WORDS = st.lists(st.sampled_from(["yes", "no", "maybe", "a", "longer-word"]), max_size=8).map(" ".join)
SCORES = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False).map(lambda score: round(score, 1))


def variant_id(variant: tuple[str, dict]) -> str:
    name, options = variant
    return name + "".join(f"-{key}={value}" for key, value in options.items())


@st.composite
def preference_rows(draw: st.DrawFn, min_size: int = 1, max_size: int = 25) -> list[dict]:
    """Rows of a preference dataset: plain-text or conversational, with scores and an extra column."""
    size = draw(st.integers(min_size, max_size))
    pair_ids = draw(
        st.lists(st.text("abcxyz0123-#é", min_size=1, max_size=6), min_size=size, max_size=size, unique=True)
    )
    conversational = draw(st.booleans())

    def response() -> object:
        text = draw(WORDS)
        return [{"role": "assistant", "content": text}] if conversational else text

    return [
        {
            "pair_id": pair_id,
            "prompt": [{"role": "user", "content": draw(WORDS)}] if conversational else draw(WORDS),
            "chosen": response(),
            "rejected": response(),
            "score_chosen": draw(SCORES),
            "score_rejected": draw(SCORES),
            "source": draw(st.sampled_from(["train", "extra"])),
        }
        for pair_id in pair_ids
    ]


def quiet_inject(dataset: datasets.Dataset, model: str, rate: float, seed: int, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rates above 0.5 warn by design
        return inject(dataset, model, rate, seed, **options)


def flips_by_pair(record) -> dict[str, bool]:
    return dict(zip(record.table["pair_id"], record.table["is_flipped"], strict=True))


@pytest.fixture(autouse=True, scope="module")
def no_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def test_every_registered_model_is_covered_by_the_property_tests():
    assert {name for name, _ in NOISE_MODEL_VARIANTS} == set(NOISE_MODELS)


# ---------------------------------------------------------------------------------------------
# Properties every model must have


@pytest.mark.parametrize("variant", NOISE_MODEL_VARIANTS, ids=variant_id)
@PROPERTY_SETTINGS
@given(rows=preference_rows(), rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**32), data=st.data())
def test_same_inputs_give_the_same_flips_whatever_the_row_order(variant, rows, rate, seed, data):
    model, options = variant
    dataset = datasets.Dataset.from_list(rows)
    _, record = quiet_inject(dataset, model, rate, seed, **options)
    _, record_again = quiet_inject(dataset, model, rate, seed, **options)
    assert record.table.equals(record_again.table)

    permutation = data.draw(st.permutations(range(len(rows))))
    _, shuffled_record = quiet_inject(dataset.select(permutation), model, rate, seed, **options)
    assert flips_by_pair(shuffled_record) == flips_by_pair(record)
    probabilities = dict(zip(record.table["pair_id"], record.table["flip_probability"], strict=True))
    for pair_id, probability in zip(
        shuffled_record.table["pair_id"], shuffled_record.table["flip_probability"], strict=True
    ):
        assert probability == probabilities[pair_id] or (
            math.isnan(probability) and math.isnan(probabilities[pair_id])
        )


@pytest.mark.parametrize("variant", NOISE_MODEL_VARIANTS, ids=variant_id)
@PROPERTY_SETTINGS
@given(
    rows=preference_rows(),
    rates=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
    seed=st.integers(0, 100),
)
def test_pairs_flipped_at_a_lower_rate_are_flipped_at_a_higher_rate(variant, rows, rates, seed):
    model, options = variant
    lower_rate, higher_rate = sorted(rates)
    dataset = datasets.Dataset.from_list(rows)
    _, lower = quiet_inject(dataset, model, lower_rate, seed, **options)
    _, higher = quiet_inject(dataset, model, higher_rate, seed, **options)
    assert lower.flipped_pair_ids() <= higher.flipped_pair_ids()


@pytest.mark.parametrize("variant", NOISE_MODEL_VARIANTS, ids=variant_id)
@PROPERTY_SETTINGS
@given(rows=preference_rows(), rate=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_only_the_labels_of_flipped_pairs_change(variant, rows, rate, seed):
    model, options = variant
    dataset = datasets.Dataset.from_list(rows)
    noisy, record = quiet_inject(dataset, model, rate, seed, **options)

    assert noisy.column_names == dataset.column_names
    assert noisy.features == dataset.features
    noisy_rows = noisy.to_list()
    assert len(noisy_rows) == len(rows)
    assert list(record.table["pair_id"]) == [row["pair_id"] for row in rows]
    for original, changed, is_flipped in zip(rows, noisy_rows, record.table["is_flipped"], strict=True):
        expected = dict(original)
        if is_flipped:
            expected["chosen"], expected["rejected"] = original["rejected"], original["chosen"]
            expected["score_chosen"], expected["score_rejected"] = (
                original["score_rejected"],
                original["score_chosen"],
            )
        assert changed == expected
    assert sorted(
        map(repr, ((row["prompt"], sorted(map(repr, (row["chosen"], row["rejected"])))) for row in rows))
    ) == (
        sorted(
            map(
                repr,
                ((row["prompt"], sorted(map(repr, (row["chosen"], row["rejected"])))) for row in noisy_rows),
            )
        )
    )
    assert record.realised_rate == pytest.approx(sum(record.table["is_flipped"]) / len(rows))


@pytest.mark.parametrize("variant", EXACT_COUNT_VARIANTS, ids=variant_id)
@PROPERTY_SETTINGS
@given(rows=preference_rows(), rate=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_exact_mode_flips_exactly_round_rate_times_n_pairs(variant, rows, rate, seed):
    model, options = variant
    _, record = quiet_inject(datasets.Dataset.from_list(rows), model, rate, seed, **options)
    assert record.num_flipped == round(rate * len(rows))


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, nothing changed


def plain_rows(size: int = 6) -> list[dict]:
    return [
        {
            "pair_id": f"pair-{index}",
            "prompt": f"question {index}",
            "chosen": "good " * (index + 1),
            "rejected": "bad " * (size - index),
            "score_chosen": float(index),
            "score_rejected": 0.0,
        }
        for index in range(size)
    ]


@pytest.mark.parametrize(
    ("rows", "model", "rate", "options", "message"),
    [
        (plain_rows(), "symmetric", -0.1, {}, r"flip rate -0\.1 .*\[0, 1\]"),
        (plain_rows(), "symmetric", 1.5, {}, r"flip rate 1\.5 .*\[0, 1\]"),
        (plain_rows(), "symmetric", float("nan"), {}, r"flip rate nan"),
        (plain_rows(), "symmetric", "0.2", {}, r"flip rate '0\.2'"),
        (plain_rows(), "gaussian", 0.2, {}, r"unknown noise model 'gaussian'.*symmetric"),
        (plain_rows(), "symmetric", 0.2, {"temperature": 1.0}, r"no option 'temperature'.*mode"),
        (plain_rows(), "symmetric", 0.2, {"mode": "sometimes"}, r"mode='sometimes'.*'exact', 'bernoulli'"),
        (plain_rows(), "confidence", 0.2, {"temperature": 0.0}, r"temperature=0\.0.*> 0"),
        (
            plain_rows(),
            "annotators",
            0.2,
            {"accuracy": 0.9, "temperature": 1.0},
            r"either an accuracy or a temperature",
        ),
        (
            plain_rows(),
            "annotators",
            0.2,
            {"accuracy": [0.9, 0.8], "panel_size": 3},
            r"2 values but panel_size is 3",
        ),
        (plain_rows(), "annotators", 0.2, {"panel_size": 0}, r"panel_size=0 must be an integer >= 1"),
        (plain_rows(), "annotators", 0.2, {"accuracy": 1.2}, r"accuracy=1\.2.*<= 1"),
        (
            [{k: v for k, v in row.items() if k != "rejected"} for row in plain_rows()],
            "symmetric",
            0.2,
            {},
            "rejected",
        ),
        (
            [{k: v for k, v in row.items() if not k.startswith("score")} for row in plain_rows()],
            "confidence",
            0.2,
            {},
            r"'confidence' needs the column\(s\) score_chosen, score_rejected",
        ),
        (
            [{k: v for k, v in row.items() if not k.startswith("score")} for row in plain_rows()],
            "adversarial",
            0.2,
            {},
            r"score_chosen, score_rejected",
        ),
        (
            [{**row, "score_chosen": None if i == 2 else 1.0} for i, row in enumerate(plain_rows())],
            "confidence",
            0.2,
            {},
            r"rows 2",
        ),
        (
            [{**row, "pair_id": "same"} for row in plain_rows()],
            "symmetric",
            0.2,
            {},
            r"more than once \('same'\)",
        ),
        (
            [{**row, "pair_id": None if i == 3 else row["pair_id"]} for i, row in enumerate(plain_rows())],
            "symmetric",
            0.2,
            {},
            r"no pair_id \(rows 3\)",
        ),
        (
            [{**row, "pair_id": i} for i, row in enumerate(plain_rows())],
            "symmetric",
            0.2,
            {},
            r"pair_id must be strings",
        ),
    ],
)
def test_bad_input_raises_a_clear_error_and_changes_nothing(rows, model, rate, options, message):
    dataset = datasets.Dataset.from_list(rows)
    before = dataset.to_list()
    with pytest.raises(ValueError, match=message):
        inject(dataset, model, rate, 0, **options)
    assert dataset.to_list() == before


def test_an_empty_dataset_is_refused():
    empty = datasets.Dataset.from_dict({"pair_id": [], "prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match="empty"):
        inject(empty, "symmetric", 0.2, 0)


def test_a_rate_above_one_half_is_allowed_with_a_warning():
    with pytest.warns(UserWarning, match=r"above 0\.5"):
        _, record = inject(datasets.Dataset.from_list(plain_rows(10)), "symmetric", 0.7, 0)
    assert record.num_flipped == 7


def test_pairs_whose_chosen_equals_rejected_are_counted_and_kept():
    rows = plain_rows(8)
    for row in rows[:3]:
        row["rejected"] = row["chosen"]
    noisy, record = quiet_inject(datasets.Dataset.from_list(rows), "symmetric", 1.0, 0)
    assert record.identical_pairs == 3
    assert record.summary()["identical_pairs"] == 3
    assert len(noisy) == 8 and record.num_flipped == 8


# ---------------------------------------------------------------------------------------------
# Each model against independent reference values


def gap_rows(score_gaps: np.ndarray) -> list[dict]:
    return [
        {
            "pair_id": f"p{index}",
            "prompt": "q",
            "chosen": "a",
            "rejected": "b",
            "score_chosen": float(gap),
            "score_rejected": 0.0,
        }
        for index, gap in enumerate(score_gaps)
    ]


def length_rows(words_chosen: list[int], words_rejected: list[int]) -> list[dict]:
    return [
        {"pair_id": f"p{index}", "prompt": "q", "chosen": "w " * chosen, "rejected": "w " * rejected}
        for index, (chosen, rejected) in enumerate(zip(words_chosen, words_rejected, strict=True))
    ]


def pooled_flip_count(
    dataset: datasets.Dataset, model: str, rate: float, seeds: range, **options
) -> tuple[int, np.ndarray]:
    """Total flips over the seeds, and how often each pair flipped."""
    per_pair = np.zeros(len(dataset))
    for seed in seeds:
        _, record = quiet_inject(dataset, model, rate, seed, **options)
        per_pair += record.table["is_flipped"].to_numpy()
    return int(per_pair.sum()), per_pair


def test_symmetric_bernoulli_rate_lies_in_the_binomial_interval_over_many_seeds():
    dataset = datasets.Dataset.from_list(plain_rows(100))
    seeds = range(200)
    total, _ = pooled_flip_count(dataset, "symmetric", 0.3, seeds, mode="bernoulli")
    low, high = binom.interval(0.999, 100 * len(seeds), 0.3)
    assert low <= total <= high
    counts = {
        quiet_inject(dataset, "symmetric", 0.3, seed, mode="bernoulli")[1].num_flipped for seed in range(10)
    }
    assert len(counts) > 1  # bernoulli counts vary by seed, unlike exact mode


def test_symmetric_exact_records_the_inclusion_probability_k_over_n():
    _, record = inject(datasets.Dataset.from_list(plain_rows(8)), "symmetric", 0.3, 0)
    assert record.num_flipped == 2  # round(2.4)
    np.testing.assert_allclose(record.table["flip_probability"], 2 / 8)


def test_confidence_bernoulli_probabilities_match_the_calibrated_sigmoid_weights():
    score_gaps = np.linspace(-4.0, 4.0, 41)
    temperature, rate = 0.7, 0.25
    _, record = inject(
        datasets.Dataset.from_list(gap_rows(score_gaps)),
        "confidence",
        rate,
        0,
        mode="bernoulli",
        temperature=temperature,
    )
    weights = 1.0 / (1.0 + np.exp(np.abs(score_gaps) / temperature))
    scale = brentq(lambda c: np.minimum(1.0, c * weights).mean() - rate, 0.0, 1.0 / weights.min())
    np.testing.assert_allclose(record.table["flip_probability"], np.minimum(1.0, scale * weights), rtol=1e-9)


def test_confidence_bernoulli_rate_is_calibrated_over_many_seeds():
    score_gaps = np.linspace(0.0, 5.0, 100)
    dataset = datasets.Dataset.from_list(gap_rows(score_gaps))
    _, record = inject(dataset, "confidence", 0.2, 0, mode="bernoulli")
    probabilities = record.table["flip_probability"].to_numpy()
    seeds = range(100)
    total, _ = pooled_flip_count(dataset, "confidence", 0.2, seeds, mode="bernoulli")
    mean = len(seeds) * probabilities.sum()
    spread = norm.ppf(0.9995) * math.sqrt(len(seeds) * (probabilities * (1 - probabilities)).sum())
    assert mean == pytest.approx(0.2 * len(seeds) * len(score_gaps))
    assert mean - spread <= total <= mean + spread


def test_confidence_flips_small_score_gaps_more():
    score_gaps = np.linspace(0.0, 6.0, 120)
    _, per_pair = pooled_flip_count(
        datasets.Dataset.from_list(gap_rows(score_gaps)), "confidence", 0.2, range(60)
    )
    correlation, p_value = spearmanr(expit(-score_gaps), per_pair)
    assert correlation > 0.8 and p_value < 1e-10
    assert per_pair[:20].mean() > 5 * per_pair[-20:].mean()


def test_length_flips_more_where_the_rejected_response_is_longer():
    generator = np.random.default_rng(0)
    words_chosen = generator.integers(1, 60, size=150).tolist()
    words_rejected = generator.integers(1, 60, size=150).tolist()
    dataset = datasets.Dataset.from_list(length_rows(words_chosen, words_rejected))
    _, per_pair = pooled_flip_count(dataset, "length", 0.3, range(60))
    log_length_ratio = np.log(np.add(words_rejected, 1) / np.add(words_chosen, 1))
    correlation, p_value = spearmanr(log_length_ratio, per_pair)
    assert correlation > 0.7 and p_value < 1e-10


def test_length_bernoulli_probabilities_follow_the_length_bradley_terry_weights():
    words_chosen, words_rejected = [1, 3, 9, 4, 20, 2], [9, 3, 1, 8, 2, 30]
    strength = 2.0
    dataset = datasets.Dataset.from_list(length_rows(words_chosen, words_rejected))
    _, record = inject(dataset, "length", 0.3, 0, mode="bernoulli", strength=strength)
    longer_rejected = np.power(np.add(words_rejected, 1.0), strength)
    weights = longer_rejected / (longer_rejected + np.power(np.add(words_chosen, 1.0), strength))
    probabilities = record.table["flip_probability"].to_numpy()
    np.testing.assert_allclose(probabilities / probabilities.max(), weights / weights.max(), rtol=1e-9)
    assert probabilities.mean() == pytest.approx(0.3)


def test_length_counts_the_words_of_assistant_messages():
    rows = [
        {
            "pair_id": "only",
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "one two three"}],
            "rejected": [
                {"role": "system", "content": "ignored " * 50},
                {"role": "assistant", "content": "one"},
            ],
        },
        {
            "pair_id": "other",
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "x"}],
        },
    ]
    _, record = inject(datasets.Dataset.from_list(rows), "length", 0.5, 0, mode="bernoulli", strength=1.0)
    weight_only = 2.0 / (2.0 + 4.0)  # words + 1: rejected 2, chosen 4
    weight_other = 0.5
    probabilities = record.table["flip_probability"].to_numpy()
    assert probabilities[0] / probabilities[1] == pytest.approx(weight_only / weight_other)


def test_adversarial_flips_the_pairs_with_the_largest_absolute_score_gaps():
    score_gaps = np.array([0.1, -3.0, 2.0, 0.5, -0.2, 4.0, 1.0, -1.5])
    _, record = inject(datasets.Dataset.from_list(gap_rows(score_gaps)), "adversarial", 0.375, 7)
    assert record.flipped_pair_ids() == {"p1", "p2", "p5"}  # |gaps| 3.0, 2.0, 4.0


def test_adversarial_breaks_ties_by_seed():
    dataset = datasets.Dataset.from_list(gap_rows(np.ones(20)))
    flipped_sets = {
        frozenset(quiet_inject(dataset, "adversarial", 0.25, seed)[1].flipped_pair_ids()) for seed in range(5)
    }
    assert len(flipped_sets) > 1
    assert all(len(flipped) == 5 for flipped in flipped_sets)


def test_annotators_with_fixed_accuracy_flip_at_the_majority_error_rate():
    accuracy = 0.8
    majority_error = (1 - accuracy) ** 3 + 3 * (1 - accuracy) ** 2 * accuracy  # 0.104
    dataset = datasets.Dataset.from_list(plain_rows(100))
    _, record = inject(dataset, "annotators", 0.2, 0, accuracy=accuracy)
    np.testing.assert_allclose(record.table["flip_probability"], majority_error)
    seeds = range(100)
    total, _ = pooled_flip_count(dataset, "annotators", 0.2, seeds, accuracy=accuracy)
    low, high = binom.interval(0.999, 100 * len(seeds), majority_error)
    assert low <= total <= high


def test_annotators_break_ties_by_a_fair_coin():
    _, record = inject(
        datasets.Dataset.from_list(plain_rows(10)), "annotators", 0.2, 0, panel_size=2, accuracy=0.5
    )
    # P(both wrong) + 1/2 P(one wrong) = 1/4 + 1/2 * 1/2
    np.testing.assert_allclose(record.table["flip_probability"], 0.5)


def test_annotators_default_accuracy_is_calibrated_to_the_rate():
    _, record = inject(datasets.Dataset.from_list(plain_rows(10)), "annotators", 0.15, 0, panel_size=5)
    np.testing.assert_allclose(record.table["flip_probability"], 0.15, atol=1e-12)


def test_annotators_with_a_temperature_vote_by_bradley_terry_on_the_scores():
    score_gaps = np.array([-2.0, 0.0, 1.0, 3.0])
    _, record = inject(
        datasets.Dataset.from_list(gap_rows(score_gaps)), "annotators", 0.2, 0, panel_size=1, temperature=2.0
    )
    np.testing.assert_allclose(record.table["flip_probability"], 1.0 / (1.0 + np.exp(score_gaps / 2.0)))


def test_flip_record_csv_holds_pair_ids_flags_and_probabilities(tmp_path):
    _, record = inject(datasets.Dataset.from_list(plain_rows(4)), "symmetric", 0.5, 3)
    record.to_csv(tmp_path / "flips.csv")
    lines = (tmp_path / "flips.csv").read_text().splitlines()
    assert lines[0] == "pair_id,is_flipped,flip_probability"
    assert [line.split(",")[0] for line in lines[1:]] == [f"pair-{index}" for index in range(4)]
    assert sum(line.split(",")[1] == "True" for line in lines[1:]) == 2


def test_the_registry_describes_each_model_and_its_options():
    for name, noise_model in NOISE_MODELS.items():
        assert get_noise_model(name) is noise_model
        assert noise_model.description
        assert all(help_text for _, _, help_text in noise_model.option_help())
