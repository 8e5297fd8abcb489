"""Tests of the evaluation metrics against independent computations."""

from __future__ import annotations

import itertools
import logging
import math
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from noisypref.benchmark.config.sections import EvaluationSettings
from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.evaluation.alpaca_eval import NothingToFit, length_controlled_minimal_winrate
from noisypref.benchmark.evaluation.metrics import (
    KLNotFinite,
    auroc,
    average_ranks,
    gold_label_metrics,
    k3_kl_estimate,
    kl_estimate,
    method_outputs,
    noise_detection,
    preference_accuracy,
    win_rate,
)
from noisypref.benchmark.testbed import build_word_tokenizer
from noisypref.methods import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Pure metrics


def test_average_ranks_share_ties() -> None:
    np.testing.assert_array_equal(
        average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0]
    )


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_the_mann_whitney_statistic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = rng.integers(0, 12, size=300) + 2.0 * labels  # integers: many ties
    u_statistic = mannwhitneyu(scores[labels], scores[~labels], alternative="two-sided").statistic
    assert auroc(scores, labels) == pytest.approx(u_statistic / (labels.sum() * (~labels).sum()), abs=1e-12)


def test_auroc_by_hand() -> None:
    # positives {3, 1}, negatives {2, 1}: pairs (3>2) 1, (3>1) 1, (1<2) 0, (1=1) ½  ->  2.5 / 4
    assert auroc(np.array([3.0, 1.0, 2.0, 1.0]), np.array([True, True, False, False])) == 0.625
    assert auroc(np.array([1.0, 2.0]), np.array([True, True])) != auroc(
        np.array([1.0, 2.0]), np.array([True, True])
    )


def test_noise_detection_flags_low_gaps_and_low_gammas() -> None:
    is_flipped = np.array([True, False, True, False, False])
    outputs = {
        "reward_gap": np.array([-1.0, 2.0, -0.5, 0.3, 1.0]),
        "gamma": np.array([0.1, 2.0, 3.0, 0.5, 1.0]),
    }
    metrics = noise_detection(outputs, is_flipped)
    assert metrics["noise_detection_auroc"] == 1.0  # every flipped pair has a lower gap than every clean one
    assert metrics["noise_detection_auroc_gamma"] == pytest.approx(
        3 / 6
    )  # γ 0.1 beats 3 clean, 3.0 beats none
    assert noise_detection(outputs, np.zeros(5, dtype=bool)) == {}


def test_gold_label_metrics_by_hand() -> None:
    # Noisy gold gaps: pairs 0 and 2 were flipped (their gaps turned negative, pair 2 only just).
    gold_gap = np.array([-1.0, 0.5, -0.1, 2.0, -0.2, 0.0])
    is_flipped = np.array([True, False, True, False, False, False])
    metrics = gold_label_metrics(gold_gap, is_flipped)
    assert metrics["label_gold_agreement"] == pytest.approx(2.5 / 6)  # 0.5 and 2.0 agree, the tie counts ½
    # Brute force over the 2 x 4 (flipped, clean) pairs: score −gap, flipped pairs 1.0 and 0.1 against clean
    # −0.5, −2.0, 0.2, −0.0: 1.0 beats all 4, 0.1 beats 3 (not 0.2) -> 7 / 8.
    assert metrics["noise_detection_auroc_gold"] == pytest.approx(7 / 8)
    assert gold_label_metrics(gold_gap, np.zeros(6, dtype=bool)) == {"label_gold_agreement": pytest.approx(2.5 / 6)}


@pytest.mark.parametrize("seed", range(3))
def test_gold_detection_auroc_equals_a_brute_force_pair_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    is_flipped = rng.random(60) < 0.3
    gold_gap = np.round(rng.normal(size=60), 1) * np.where(is_flipped, -1, 1) + 0.3  # rounded: ties
    flipped_scores, clean_scores = -gold_gap[is_flipped], -gold_gap[~is_flipped]
    wins = sum(1.0 if f > c else 0.5 if f == c else 0.0 for f in flipped_scores for c in clean_scores)
    metrics = gold_label_metrics(gold_gap, is_flipped)
    assert metrics["noise_detection_auroc_gold"] == pytest.approx(wins / (len(flipped_scores) * len(clean_scores)))
    assert metrics["label_gold_agreement"] == pytest.approx(
        (sum(gap > 0 for gap in gold_gap) + 0.5 * sum(gap == 0 for gap in gold_gap)) / 60
    )


def test_preference_accuracy_and_win_rate_count_ties_half() -> None:
    assert preference_accuracy(
        np.array([1.0, 0.0, 2.0, 5.0]), np.array([0.5, 0.0, 3.0, 1.0])
    ) == pytest.approx(2.5 / 4)
    assert win_rate(np.array([1.0, 1.0, 0.2]), np.array([1.0, 0.0, 0.3])) == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError):
        win_rate(np.array([1.0]), np.array([1.0, 2.0]))


def test_length_controlled_win_rate_removes_a_length_effect() -> None:
    rng = np.random.default_rng(0)
    reference_lengths = rng.integers(10, 60, size=400).astype(float)
    # Equal lengths: nothing to fit (missing); lengths unrelated to wins: the raw win rate.
    wins = (rng.random(400) < 0.7).astype(float)
    with pytest.raises(NothingToFit, match="do not vary"):
        length_controlled_minimal_winrate(wins, reference_lengths - reference_lengths)
    assert length_controlled_minimal_winrate(wins, rng.normal(0, 5, size=400)) == pytest.approx(wins.mean(), abs=0.03)
    # Wins explained by length only: the longer the policy's response, the likelier it wins.
    policy_lengths = reference_lengths + rng.normal(15, 20, size=400)
    win_probability = 1 / (1 + np.exp(-(policy_lengths - reference_lengths) / 10))
    wins_by_length = (rng.random(400) < win_probability).astype(float)
    raw = wins_by_length.mean()
    controlled = length_controlled_minimal_winrate(wins_by_length, reference_lengths - policy_lengths)
    assert raw > 0.65
    assert abs(controlled - 0.5) < abs(raw - 0.5) / 2


def test_evaluation_config_names_the_field_of_a_bad_value() -> None:
    with pytest.raises(ValueError, match=r"evaluation\.num_eval_prompts = 0"):
        EvaluationSettings(num_eval_prompts=0)
    with pytest.raises(ValueError, match=r"evaluation\.temperature"):
        EvaluationSettings(temperature=-1.0)


def hand_k3_mean(log_ratios) -> float:
    """mean of (r − 1) − log r, r = e^{log r}, in Python floats (double precision)."""
    return sum(math.expm1(float(x)) - float(x) for x in log_ratios) / len(log_ratios)


def test_k3_kl_estimate_is_computed_in_float64_where_float32_overflows() -> None:
    log_ratios = np.array([100.0, 0.5, -0.3, -2.0], dtype=np.float32)  # r = e^100 overflows float32
    with np.errstate(over="ignore"):
        assert np.isinf(np.expm1(log_ratios[0]))
    expected = hand_k3_mean(log_ratios)
    assert math.isfinite(expected)
    assert k3_kl_estimate(log_ratios) == pytest.approx(expected, rel=1e-12)
    small = [1e-9, -2e-9, 3e-9]  # expm1: the terms are ≈ x²/2, not lost to cancellation
    assert k3_kl_estimate(small) == pytest.approx(sum(x * x / 2 for x in small) / 3, rel=1e-6)


def test_k3_kl_estimate_warns_when_one_sample_dominates(caplog) -> None:
    caplog.set_level(logging.WARNING)
    dominated = [3.0, 0.1, -0.1, 0.05]  # terms 16.09, 0.0052, 0.0048, 0.0013
    assert k3_kl_estimate(dominated) == pytest.approx(hand_k3_mean(dominated), rel=1e-12)
    share = (math.expm1(3.0) - 3.0) / (4 * hand_k3_mean(dominated))
    assert share > 0.99 and f"{100 * share:.0f} %" in caplog.text and "one of 4 samples" in caplog.text
    caplog.clear()
    balanced = [0.1, -0.1, 0.12, -0.09]  # the largest term, 0.0075, is 33 % of the sum
    assert k3_kl_estimate(balanced) == pytest.approx(hand_k3_mean(balanced), rel=1e-12)
    assert "kl_estimate" not in caplog.text


def test_a_kl_estimate_that_is_not_finite_is_missing_with_its_reason(monkeypatch, caplog) -> None:
    from noisypref.benchmark.evaluation import metrics as evaluate

    with pytest.raises(KLNotFinite, match=r"1 with log r .* overflows float64 \(largest 800"):
        k3_kl_estimate([800.0, 0.1])  # e^800 > the largest float64 (e^709.78)
    with pytest.raises(KLNotFinite, match="1 whose log r is not finite"):
        k3_kl_estimate([float("nan"), 0.1])

    # Through the gold-reward metrics of a run: two sampled responses, log r = 800 and 0.1.
    class StubTokenizer:
        bos_token_id, pad_token_id, eos_token_id = None, 0, 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1] for _ in texts]}

    log_probs = {"policy": torch.tensor([-805.0, -1.0]), "reference": torch.tensor([-5.0, -0.9])}
    monkeypatch.setattr(evaluate, "sample_responses", lambda model, tokenizer, prompts, **options: [["a"]] * len(prompts))
    monkeypatch.setattr(evaluate, "sample_response_ids", lambda model, tokenizer, prompts, **options: [[2]] * len(prompts))
    monkeypatch.setattr(evaluate, "summed_response_logps", lambda model, *args, **options: log_probs[model].clone())
    gold_reward = SimpleNamespace(score_many=lambda prompts, responses: np.arange(len(responses), dtype=float))
    settings = SimpleNamespace(samples_per_prompt=1, temperature=1.0, max_new_tokens=4, kl_samples=1)
    caplog.set_level(logging.WARNING)
    missing: dict[str, str] = {}
    metrics = evaluate.gold_reward_metrics(
        "policy", "reference", StubTokenizer(), ["p0", "p1"], gold_reward, settings, seed=0, missing=missing
    )
    assert "kl_estimate" not in metrics and metrics["gold_win_rate"] == 0.5
    assert "overflows float64" in missing["kl_estimate"] and "kl_estimate is missing" in caplog.text
    # A finite pair of log ratios gives the hand-computed estimate.
    log_probs["policy"] = torch.tensor([-105.0, -1.0])  # log r = 100 and 0.1
    metrics = evaluate.gold_reward_metrics("policy", "reference", StubTokenizer(), ["p0", "p1"], gold_reward, settings, seed=0)
    assert metrics["kl_estimate"] == pytest.approx(hand_k3_mean([100.0, 0.1]), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Metrics of a model


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_config):
    """``tiny_llama(vocab_size, seed, *, bos, eos, pad, sharpness=1.0)``: a random one-layer Llama whose
    output weights are scaled by ``sharpness`` (sharper next-token distributions)."""

    def build(vocab_size: int, seed: int, *, bos: int | None, eos: int, pad: int, sharpness: float = 1.0):
        config = tiny_llama_config(
            vocab_size, max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(sharpness)
        return model

    return build


def plain_logp(model, token_ids: list[int], prompt_length: int) -> float:
    with torch.no_grad():
        log_probs = model(torch.tensor([token_ids])).logits.log_softmax(-1)[0]
    return sum(
        float(log_probs[position - 1, token_ids[position]])
        for position in range(prompt_length, len(token_ids))
    )


def test_heldout_accuracy_uses_the_methods_own_rewards(tiny_llama) -> None:
    tokenizer = build_word_tokenizer(num_topics=2, num_words=6)
    model = tiny_llama(
        len(tokenizer),
        0,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        sharpness=4.0,
    )
    pairs = datasets.Dataset.from_dict(
        {
            "pair_id": [f"p{index}" for index in range(6)],
            "prompt": ["topic_0", "topic_1", "topic_0", "topic_1", "topic_0", "topic_1"],
            "chosen": ["w1 w2 w3", "w4", "w0 w0", "w5 w1 w2 w3", "w2", "w3 w3"],
            "rejected": ["w1", "w4 w5 w0", "w3 w4", "w0", "w2 w2 w2 w2", "w1"],
        }
    )
    tokens = tokenize_pairs(pairs, tokenizer, max_length=32, max_prompt_length=8)
    vocabulary = tokenizer.get_vocab()

    def sequence(prompt: str, response: str) -> tuple[list[int], int]:
        prompt_ids = [tokenizer.bos_token_id, vocabulary[prompt]]
        return prompt_ids + [vocabulary[word] for word in response.split()] + [tokenizer.eos_token_id], len(
            prompt_ids
        )

    beta = 2.0
    chosen_reward, rejected_reward = [], []
    for row in pairs:
        for response, rewards in ((row["chosen"], chosen_reward), (row["rejected"], rejected_reward)):
            token_ids, prompt_length = sequence(row["prompt"], response)
            rewards.append(
                beta * plain_logp(model, token_ids, prompt_length) / (len(token_ids) - prompt_length)
            )
    expected = np.mean(np.array(chosen_reward) > np.array(rejected_reward))

    outputs = method_outputs(model, build("simpo", beta=beta), tokens, None, tokenizer.pad_token_id)
    np.testing.assert_allclose(outputs["chosen_reward"], chosen_reward, rtol=1e-5)
    assert preference_accuracy(outputs["chosen_reward"], outputs["rejected_reward"]) == expected
    assert 0 < expected < 1

    # DPO's implicit reward of the reference policy itself is 0 for every response: all ties, accuracy ½.
    reference = reference_logps(
        model, tokens, model_identity="m", cache_dir=None, pad_token_id=tokenizer.pad_token_id
    )
    dpo = method_outputs(model, build("dpo", beta=0.1), tokens, reference, tokenizer.pad_token_id)
    assert preference_accuracy(dpo["chosen_reward"], dpo["rejected_reward"]) == 0.5


def enumerable_kl_setup(tiny_llama):
    """Two tiny models over 3 words and eos whose responses (at most 3 tokens) can all be listed:
    (policy, reference, tokenizer, max_new_tokens, probability of each response under the policy,
    its log π − log π_ref)."""
    # No bos, eos doubles as padding: every sampled token sequence decodes and re-tokenises exactly.
    vocabulary = {"<eos>": 0, "topic_0": 1, "w0": 2, "w1": 3}
    word_level = Tokenizer(models.WordLevel(vocabulary, unk_token="<eos>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="<eos>", pad_token="<eos>")
    policy = tiny_llama(4, seed=1, bos=None, eos=0, pad=0, sharpness=6.0)
    reference = tiny_llama(4, seed=2, bos=None, eos=0, pad=0, sharpness=6.0)
    max_new_tokens = 3

    # Every response the sampler can produce: k < 3 tokens then eos, or 3 tokens cut off without eos.
    responses = [
        list(tokens) + [0] for k in range(max_new_tokens) for tokens in itertools.product([1, 2, 3], repeat=k)
    ]
    responses += [list(tokens) for tokens in itertools.product([1, 2, 3], repeat=max_new_tokens)]
    prompt = [vocabulary["topic_0"]]
    policy_logps = np.array([plain_logp(policy, prompt + response, 1) for response in responses])
    reference_logps_ = np.array([plain_logp(reference, prompt + response, 1) for response in responses])
    probabilities = np.exp(policy_logps)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    return policy, reference, tokenizer, max_new_tokens, probabilities, policy_logps - reference_logps_


def test_kl_estimate_matches_the_exact_kl_of_an_enumerable_model(tiny_llama) -> None:
    policy, reference, tokenizer, max_new_tokens, probabilities, log_ratio = enumerable_kl_setup(tiny_llama)
    exact_kl = float(np.sum(probabilities * log_ratio))
    # the estimator's terms, k3 = (r − 1) − log r with r = π_ref/π: their mean under π is the KL
    k3 = np.expm1(-log_ratio) + log_ratio
    assert float(np.sum(probabilities * k3)) == pytest.approx(exact_kl, abs=1e-6) and (k3 >= 0).all()
    standard_deviation = math.sqrt(float(np.sum(probabilities * (k3 - exact_kl) ** 2)))

    samples = 3000
    estimate = kl_estimate(
        policy,
        reference,
        tokenizer,
        ["topic_0"] * samples,
        num_samples=1,
        max_new_tokens=max_new_tokens,
        seed=0,
    )
    assert exact_kl > 0.05
    assert estimate == pytest.approx(exact_kl, abs=4 * standard_deviation / math.sqrt(samples))


def test_kl_estimate_is_never_negative_even_from_one_sample(tiny_llama) -> None:
    # A sample whose log π − log π_ref is negative made the plain mean negative; k3 is ≥ 0 per sample.
    policy, reference, tokenizer, max_new_tokens, probabilities, log_ratio = enumerable_kl_setup(tiny_llama)
    negative_share = float(probabilities[log_ratio < 0].sum())
    assert negative_share > 0.2  # the plain estimate from one sample is negative this often
    estimates = [
        kl_estimate(policy, reference, tokenizer, ["topic_0"], num_samples=1, max_new_tokens=max_new_tokens, seed=seed)
        for seed in range(30)
    ]
    assert min(estimates) >= 0.0
    # each one-sample estimate is the k3 of one response the policy can produce
    k3 = np.expm1(-log_ratio) + log_ratio
    assert all(np.isclose(k3, estimate, atol=1e-5).any() for estimate in estimates)
