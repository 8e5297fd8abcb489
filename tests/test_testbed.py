"""Tests of the synthetic gold-reward testbed (noisypref.benchmark.testbed)."""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2ForCausalLM,
)

from noisypref.benchmark.storage import build_once
from noisypref.benchmark.testbed import (
    GoldReward,
    TestbedConfig,
    build_testbed,
    build_word_tokenizer,
    sample_responses,
)
from noisypref.benchmark.testbed.policy import IGNORE_INDEX, init_tiny_model, sft_batch, tiny_model_config

# Small enough to build in a few seconds, large enough for supervised fine-tuning to learn.
SMALL = dict(
    num_topics=4,
    num_words=16,
    relevant_words_per_topic=4,
    off_topic_words_per_topic=4,
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    sft_steps=300,
    sft_batch_size=32,
    num_train_pairs=256,
    num_heldout_pairs=64,
    num_eval_prompts=32,
)
# Only for tests that need a testbed but not a trained policy.
TINY = {**SMALL, "sft_steps": 20, "num_train_pairs": 64, "num_heldout_pairs": 16}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny models run fastest on one thread; two thrash when another process is busy on a 2-core CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testbed_cache")


@pytest.fixture(scope="module")
def small_testbed(cache_dir: Path):
    return build_testbed(TestbedConfig(**SMALL), cache_dir)


def uniform_random_responses(
    words: list[str], count: int, min_words: int, max_words: int, seed: int
) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(
            words[index] for index in rng.integers(len(words), size=rng.integers(min_words, max_words + 1))
        )
        for _ in range(count)
    ]


# --- gold reward ---------------------------------------------------------------------------------


def test_gold_reward_equals_the_formula_by_hand() -> None:
    config = TestbedConfig()
    gold_reward = GoldReward(config)
    quality, relevance = gold_reward.word_quality, gold_reward.relevance
    for prompt, word_indices in [("topic_2", [0, 1, 1, 5]), ("topic_7", [47, 3, 30]), ("topic_0", [9])]:
        topic = int(prompt.removeprefix("topic_"))
        response = " ".join(f"w{index}" for index in word_indices)
        expected = sum(quality[w] + 1.5 * relevance[topic, w] for w in word_indices) / len(word_indices)
        expected += 0.3 * math.log(len(word_indices))
        assert gold_reward(prompt, response) == pytest.approx(expected, abs=1e-12)
    # A token that is not a word of the language is worth -3; an empty response scores -3.
    expected = (quality[4] + 1.5 * relevance[1, 4] - 3.0) / 2 + 0.3 * math.log(2)
    assert gold_reward("topic_1", "w4 topic_5") == pytest.approx(expected, abs=1e-12)
    assert gold_reward("topic_1", "") == -3.0
    scores = gold_reward.score_many(["topic_2", "topic_0"], ["w0 w1 w1 w5", "w9"])
    np.testing.assert_allclose(scores, [gold_reward("topic_2", "w0 w1 w1 w5"), gold_reward("topic_0", "w9")])


def test_gold_reward_language_has_the_configured_structure() -> None:
    config = TestbedConfig()
    gold_reward = GoldReward(config)
    assert gold_reward.word_quality.shape == (48,)
    assert gold_reward.relevance.shape == (8, 48)
    assert ((gold_reward.relevance == 1).sum(axis=1) == 12).all()
    assert ((gold_reward.relevance == -1).sum(axis=1) == 12).all()
    assert abs(gold_reward.word_quality.mean()) < 0.5 and 0.6 < gold_reward.word_quality.std() < 1.4
    # The relevant sets differ between topics, and the language is a function of the seed.
    assert len({tuple(row) for row in gold_reward.relevance}) == 8
    np.testing.assert_array_equal(GoldReward(TestbedConfig()).relevance, gold_reward.relevance)
    assert not np.array_equal(GoldReward(TestbedConfig(seed=1)).word_quality, gold_reward.word_quality)
    with pytest.raises(ValueError, match="topic_99"):
        gold_reward("topic_99", "w1")


def test_gold_reward_depends_on_the_prompt() -> None:
    gold_reward = GoldReward(TestbedConfig())
    relevant_to_topic_0 = " ".join(f"w{index}" for index in np.flatnonzero(gold_reward.relevance[0] == 1)[:6])
    # Relevant (+1) under topic 0; under any other topic each word is worth 1.5 or 3 less, or the same.
    own_topic = gold_reward("topic_0", relevant_to_topic_0)
    other_topics = [gold_reward(f"topic_{topic}", relevant_to_topic_0) for topic in range(1, 8)]
    assert all(own_topic > score for score in other_topics)
    responses = uniform_random_responses(gold_reward.words, 500, 3, 12, seed=0)
    under_topic_0 = gold_reward.score_many(["topic_0"] * 500, responses)
    under_topic_1 = gold_reward.score_many(["topic_1"] * 500, responses)
    assert np.mean(np.abs(under_topic_0 - under_topic_1)) > 0.3


def test_gold_reward_correlates_positively_with_length() -> None:
    gold_reward = GoldReward(TestbedConfig())
    responses = uniform_random_responses(gold_reward.words, 4000, 1, 12, seed=1)
    lengths = [len(response.split()) for response in responses]
    rewards = gold_reward.score_many(["topic_3"] * len(responses), responses)
    correlation = spearmanr(lengths, rewards).statistic
    # Partly, not wholly: the length term 0.3 log(len) competes with the word mean.
    assert 0.15 < correlation < 0.8


# --- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_round_trips_text_and_saves(tmp_path: Path) -> None:
    tokenizer = build_word_tokenizer(num_topics=8, num_words=48)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == 4 + 8 + 48
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token} == {
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    }
    assert (
        len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id})
        == 4
    )
    text = "topic_3 w12 w5 w33 w47"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    assert tokenizer.decode(ids) == text
    assert (
        tokenizer.decode([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id], skip_special_tokens=True)
        == text
    )
    assert tokenizer("w5   w6", add_special_tokens=False)["input_ids"] == tokenizer.convert_tokens_to_ids(
        ["w5", "w6"]
    )
    assert tokenizer("w99", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, PreTrainedTokenizerFast)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.eos_token_id == tokenizer.eos_token_id and reloaded.pad_token_id == tokenizer.pad_token_id


# --- model, SFT convention, sampling ---------------------------------------------------------------


def test_model_family_is_selectable() -> None:
    tokenizer = build_word_tokenizer(4, 16)
    llama = init_tiny_model(TestbedConfig(**SMALL), tokenizer)
    qwen2 = init_tiny_model(TestbedConfig(**{**SMALL, "model_family": "qwen2"}), tokenizer)
    assert isinstance(llama, LlamaForCausalLM) and isinstance(qwen2, Qwen2ForCausalLM)
    assert llama.config.hidden_size == 32 and llama.config.num_hidden_layers == 2
    assert llama.config.vocab_size == len(tokenizer)


def test_sft_batch_follows_the_tokenisation_convention() -> None:
    bos, eos, pad = 1, 2, 0
    batch = sft_batch([[7], [8, 9]], [[20, 21, 22], [30]], bos, eos, pad)
    ignored = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[bos, 7, 20, 21, 22, eos], [bos, 8, 9, 30, eos, pad]]
    assert batch["labels"].tolist() == [
        [ignored, ignored, 20, 21, 22, eos],
        [ignored, ignored, ignored, 30, eos, ignored],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]


def greedy_decode_without_cache(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Reference: one prompt, no padding, no KV cache, the whole sequence recomputed every step."""
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    new_ids = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            next_id = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if next_id == tokenizer.eos_token_id:
            break
        new_ids.append(next_id)
        ids.append(next_id)
    special_ids = set(tokenizer.all_special_ids)
    return " ".join(tokenizer.convert_ids_to_tokens([index for index in new_ids if index not in special_ids]))


@pytest.mark.parametrize("model_family", ["llama", "qwen2"])
def test_sampling_with_left_padding_and_cache_matches_plain_greedy_decoding(model_family: str) -> None:
    tokenizer = build_word_tokenizer(4, 16)
    model_config = tiny_model_config(TestbedConfig(**{**SMALL, "model_family": model_family}), tokenizer)
    model_config.initializer_range = 0.5  # large random weights: varied, non-degenerate greedy outputs
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config).eval()
    prompts = ["topic_1", "topic_2 w3 w4 w5 w6", "topic_3 w1", "w7 w8 w9"]  # unequal lengths
    sampled = sample_responses(
        model, tokenizer, prompts, temperature=0.0, max_new_tokens=10, seed=0, batch_size=3
    )
    expected = [greedy_decode_without_cache(model, tokenizer, prompt, 10) for prompt in prompts]
    assert [responses[0] for responses in sampled] == expected
    assert len({response for response in expected}) == len(prompts)


def test_sampling_is_deterministic_for_a_seed(small_testbed) -> None:
    model = small_testbed.load_reference_model()
    prompts = small_testbed.eval_prompts[:16]

    def sample(seed: int) -> list[list[str]]:
        return sample_responses(
            model,
            small_testbed.tokenizer,
            prompts,
            num_samples=3,
            max_new_tokens=16,
            seed=seed,
            batch_size=20,
        )

    first = sample(seed=5)
    assert first == sample(seed=5)
    assert first != sample(seed=6)
    assert len(first) == 16 and all(len(responses) == 3 for responses in first)
    assert all(len(response.split()) <= 16 for responses in first for response in responses)
    assert not model.training


def test_sft_reference_policy_beats_random_responses(small_testbed) -> None:
    config = small_testbed.config
    model = small_testbed.load_reference_model()
    prompts = small_testbed.gold_reward.topics * 100
    policy_responses = [
        responses[0]
        for responses in sample_responses(
            model, small_testbed.tokenizer, prompts, max_new_tokens=config.max_new_tokens, seed=11
        )
    ]
    random_responses = uniform_random_responses(
        small_testbed.gold_reward.words,
        len(prompts),
        config.min_response_words,
        config.max_response_words,
        seed=2,
    )
    policy_reward = small_testbed.gold_reward.score_many(prompts, policy_responses).mean()
    random_reward = small_testbed.gold_reward.score_many(prompts, random_responses).mean()
    # Expected gain of the SFT data over uniform words is about 0.75 (half the words relevant, worth +1.5);
    # the standard error of each mean here is about 0.04.
    assert policy_reward > random_reward + 0.35
    lengths = np.array([len(response.split()) for response in policy_responses])
    assert np.mean((lengths >= config.min_response_words) & (lengths <= config.max_response_words)) > 0.85


# --- pairs ---------------------------------------------------------------------------------------


def test_pairs_have_the_preference_schema(small_testbed) -> None:
    for pairs, size in [(small_testbed.train_pairs, 256), (small_testbed.heldout_pairs, 64)]:
        assert pairs.column_names == [
            "pair_id",
            "prompt",
            "chosen",
            "rejected",
            "score_chosen",
            "score_rejected",
        ]
        assert len(pairs) == size
        assert len(set(pairs["pair_id"])) == size
        assert all(
            isinstance(pairs[0][column], str) for column in ["pair_id", "prompt", "chosen", "rejected"]
        )
        assert all(
            chosen != rejected for chosen, rejected in zip(pairs["chosen"], pairs["rejected"], strict=True)
        )
        gold_reward = small_testbed.gold_reward
        np.testing.assert_allclose(
            pairs["score_chosen"], gold_reward.score_many(pairs["prompt"], pairs["chosen"])
        )
        np.testing.assert_allclose(
            pairs["score_rejected"], gold_reward.score_many(pairs["prompt"], pairs["rejected"])
        )
    assert not set(small_testbed.train_pairs["pair_id"]) & set(small_testbed.heldout_pairs["pair_id"])
    assert len(small_testbed.eval_prompts) == 32
    assert set(small_testbed.eval_prompts) <= set(small_testbed.gold_reward.topics)


def test_bradley_terry_labels_are_ambiguous_at_half_temperature(small_testbed) -> None:
    pairs = small_testbed.train_pairs
    agreement = np.mean(np.array(pairs["score_chosen"]) > np.array(pairs["score_rejected"]))
    assert 0.6 < agreement < 0.95
    assert small_testbed.statistics["train_label_agreement_with_gold"] == pytest.approx(agreement)
    # Independent check of the BT probabilities: the mean of σ(|Δ| / T) over the pairs predicts the
    # agreement; with 256 pairs the binomial standard error is about 0.03.
    gaps = np.abs(np.array(pairs["score_chosen"]) - np.array(pairs["score_rejected"]))
    assert agreement == pytest.approx(np.mean(1 / (1 + np.exp(-gaps / 0.5))), abs=0.1)


def test_heldout_pairs_are_gold_ordered(small_testbed) -> None:
    pairs = small_testbed.heldout_pairs
    assert all(
        chosen > rejected
        for chosen, rejected in zip(pairs["score_chosen"], pairs["score_rejected"], strict=True)
    )


def test_bradley_terry_labels_follow_gold_at_tiny_temperature(cache_dir: Path, small_testbed) -> None:
    config = TestbedConfig(**{**SMALL, "bt_temperature": 1e-6})
    assert config.reference_policy_key() == small_testbed.config.reference_policy_key()
    testbed = build_testbed(config, cache_dir)  # reuses the small testbed's reference policy
    assert testbed.reference_model_dir == small_testbed.reference_model_dir
    pairs = testbed.train_pairs
    assert all(
        chosen > rejected
        for chosen, rejected in zip(pairs["score_chosen"], pairs["score_rejected"], strict=True)
    )
    # Changing only the BT temperature relabels the same sampled responses.
    assert {frozenset(pair) for pair in zip(pairs["chosen"], pairs["rejected"], strict=True)} == {
        frozenset(pair)
        for pair in zip(
            small_testbed.train_pairs["chosen"], small_testbed.train_pairs["rejected"], strict=True
        )
    }


# --- cache and determinism -----------------------------------------------------------------------


def test_cache_is_reused(cache_dir: Path, small_testbed) -> None:
    weights = small_testbed.reference_model_dir / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    started = time.perf_counter()
    again = build_testbed(TestbedConfig(**SMALL), cache_dir)
    assert time.perf_counter() - started < 2.0
    assert weights.stat().st_mtime_ns == modified
    assert again.train_pairs.to_dict() == small_testbed.train_pairs.to_dict()
    assert not [path for path in cache_dir.iterdir() if ".tmp-" in path.name]


def test_content_key_names_the_config() -> None:
    key = TestbedConfig().content_key()
    assert len(key) == 64 and int(key, 16) >= 0
    assert TestbedConfig().content_key() == key
    assert TestbedConfig(seed=1).content_key() != key
    assert TestbedConfig(num_train_pairs=100).content_key() != key
    assert TestbedConfig(num_train_pairs=100).reference_policy_key() == TestbedConfig().reference_policy_key()
    assert TestbedConfig(sft_steps=100).reference_policy_key() != TestbedConfig().reference_policy_key()


def test_two_builds_of_one_config_are_identical(tmp_path: Path) -> None:
    config = TestbedConfig(**TINY)
    first = build_testbed(config, tmp_path / "first")
    second = build_testbed(config, tmp_path / "second")
    assert first.train_pairs.to_dict() == second.train_pairs.to_dict()
    assert first.heldout_pairs.to_dict() == second.heldout_pairs.to_dict()
    assert first.eval_prompts == second.eval_prompts
    first_weights = first.load_reference_model().state_dict()
    second_weights = second.load_reference_model().state_dict()
    assert all(torch.equal(first_weights[name], second_weights[name]) for name in first_weights)


def _build_slowly(target: str, log: str) -> None:
    def build(staging: Path) -> None:
        with open(log, "a") as log_file:
            log_file.write("built\n")
        time.sleep(0.5)
        (staging / "done").write_text("yes")

    build_once(Path(target), build)


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    target, log = tmp_path / "cache" / "stage", tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")  # the workers only touch files
    workers = [context.Process(target=_build_slowly, args=(str(target), str(log))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert log.read_text() == "built\n"
    assert (target / "done").read_text() == "yes"
    assert sorted(path.name for path in target.parent.iterdir()) == ["stage", "stage.lock"]


# --- config --------------------------------------------------------------------------------------


def test_default_config_is_the_design_probe() -> None:
    config = TestbedConfig()
    assert (config.num_topics, config.num_words, config.min_response_words, config.max_response_words) == (
        8,
        48,
        3,
        12,
    )
    assert (config.relevance_weight, config.length_weight, config.sft_relevant_word_share) == (1.5, 0.3, 0.5)
    assert (config.model_family, config.num_layers, config.hidden_size, config.num_attention_heads) == (
        "llama",
        2,
        64,
        4,
    )
    assert (config.sft_steps, config.sft_batch_size, config.num_train_pairs, config.bt_temperature) == (
        400,
        64,
        2048,
        0.5,
    )


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("num_topics", 0, ">= 1"),
        ("num_words", 2.5, "an integer"),
        ("sft_steps", True, "an integer"),
        ("bt_temperature", 0.0, "> 0"),
        ("bt_temperature", float("nan"), "finite"),
        ("max_response_words", 2, "min_response_words"),
        ("model_family", "gpt2", "llama"),
        ("hidden_size", 66, "multiple of num_attention_heads"),
        ("off_topic_words_per_topic", 40, "num_words - relevant_words_per_topic"),
        ("sft_relevant_word_share", 1.5, ">= 0 and <= 1"),
        ("max_new_tokens", 12, "room for the eos token"),
    ],
)
def test_config_validation_names_the_field(field: str, value, allowed: str) -> None:
    with pytest.raises(ValueError) as error:
        TestbedConfig(**{field: value})
    message = str(error.value)
    assert f"testbed.{field} = {value!r} is invalid" in message
    assert allowed in message


def test_config_from_dict() -> None:
    config = TestbedConfig.from_dict({"num_topics": 5, "bt_temperature": 1, "model_family": "qwen2"})
    assert config.num_topics == 5 and config.model_family == "qwen2"
    assert config.bt_temperature == 1.0 and isinstance(config.bt_temperature, float)
    assert TestbedConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="'num_topcs'"):
        TestbedConfig.from_dict({"num_topcs": 5})
