"""Issue 14's engine savings keep the numbers: packed rows padded to a multiple of 16 positions, fused
AdamW on the CPU, and the reference policy's gold-reward samples kept across runs of a process."""

from __future__ import annotations

import pytest
import torch

import noisypref.benchmark.engine.batches as batches_module
import noisypref.benchmark.engine.train as train_module
import noisypref.benchmark.run.evaluate as run_module
from noisypref.benchmark.config.run_config import default_run_config, parse_run_config
from noisypref.benchmark.config.sections import EvaluationSettings
from noisypref.benchmark.engine.batches import pair_batch, sequence_batch
from noisypref.benchmark.engine.logps import SequenceLogps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.evaluation.metrics import gold_reward_metrics
from noisypref.benchmark.testbed import GoldReward, TestbedConfig, build_word_tokenizer, sample_responses
from tests.test_train import build_tiny_llama as tiny_llama
from tests.test_train import plain_sequence_logp, random_pairs, train_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(num_topics=3, num_words=10)


@pytest.mark.parametrize("lengths", [[3, 4], [15], [16], [9, 8, 17]])
def test_packed_rows_are_a_multiple_of_16_wide_and_unpacked_rows_as_wide_as_the_longest(lengths) -> None:
    prompts = [[1] for _ in lengths]
    responses = [[2] * (length - 1) for length in lengths]
    packed = sequence_batch(prompts, responses, pad_token_id=0, pack=True)
    padded = sequence_batch(prompts, responses, pad_token_id=0, pack=False)
    longest = max(lengths)
    assert packed.input_ids.shape[1] == 16 * -(-longest // 16)
    assert padded.input_ids.shape[1] == longest
    # every token of every sequence is laid out once, the rest is padding outside every sequence
    assert int((packed.sequence_index >= 0).sum()) == sum(lengths)
    assert int(packed.response_mask.sum()) == sum(length - 1 for length in lengths)


def test_log_probs_of_wide_packed_rows_equal_a_plain_per_sequence_computation(tokenizer) -> None:
    model = tiny_llama(tokenizer)
    pairs = random_pairs(10, seed=3)
    tokens = tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=32)
    batch = pair_batch(tokens, list(range(len(pairs))), tokenizer.pad_token_id, pack=True)
    assert batch.input_ids.shape[1] % 16 == 0
    with torch.no_grad():
        logps = SequenceLogps(model)(batch)
    expected = [plain_sequence_logp(model, tokenizer, row["prompt"], row["chosen"]) for row in pairs] + [
        plain_sequence_logp(model, tokenizer, row["prompt"], row["rejected"]) for row in pairs
    ]
    torch.testing.assert_close(logps, torch.tensor(expected), atol=1e-4, rtol=1e-5)


def test_training_with_width_16_and_fused_adamw_matches_the_plain_engine(tokenizer, tmp_path, monkeypatch):
    """Against the engine with both savings off (rows as wide as their longest sequence, AdamW's
    per-parameter loop): the same losses and weights up to float round-off."""
    saved_model, _, saved_records = train_tiny(tokenizer, tmp_path, "saved")
    monkeypatch.setattr(batches_module, "PACKED_WIDTH_MULTIPLE", 1)
    monkeypatch.setattr(train_module, "FUSED_ADAMW_ON_CPU", False)
    plain_model, _, plain_records = train_tiny(tokenizer, tmp_path, "plain")
    for saved, plain in zip(saved_records, plain_records, strict=True):
        assert saved["loss"] == pytest.approx(plain["loss"], rel=1e-4, abs=1e-5)
    for saved, plain in zip(saved_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(saved, plain, atol=1e-4, rtol=1e-4)


def test_the_cpu_optimizer_is_fused_adamw(tokenizer, tmp_path, monkeypatch) -> None:
    created = []
    original = torch.optim.AdamW

    def recording_adamw(*args, **kwargs):
        created.append(kwargs.get("fused"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)
    train_tiny(tokenizer, tmp_path, "fused", config={"steps": 1})
    monkeypatch.setattr(train_module, "FUSED_ADAMW_ON_CPU", False)
    train_tiny(tokenizer, tmp_path, "loop", config={"steps": 1})
    assert created == [True, None]


def test_kept_reference_samples_are_those_a_fresh_sampling_draws(tokenizer, tmp_path, monkeypatch) -> None:
    model = tiny_llama(tokenizer)
    model.save_pretrained(tmp_path / "reference")
    prompts = ["topic_0", "topic_1 topic_2", "topic_2"]
    loads = []

    def load_reference():
        loads.append(1)
        return model

    monkeypatch.setattr(run_module, "_reference_samples", {})
    evaluation = {
        **default_run_config()["evaluation"],
        "num_eval_prompts": len(prompts),
        "samples_per_prompt": 2,
        "kl_samples": 0,
    }
    config = parse_run_config(default_run_config(evaluation=evaluation, seed=7))
    location = str(tmp_path / "reference")
    device = torch.device("cpu")
    first = run_module.cached_reference_samples(config, location, prompts, device, load_reference, tokenizer)
    second = run_module.cached_reference_samples(config, location, prompts, device, load_reference, tokenizer)
    fresh = sample_responses(
        model, tokenizer, prompts, num_samples=2, temperature=1.0, max_new_tokens=16, seed=7
    )
    assert first == second == [response for responses in fresh for response in responses]
    assert len(loads) == 1  # the second call sampled nothing

    other_seed = parse_run_config(default_run_config(evaluation=evaluation, seed=8))
    run_module.cached_reference_samples(other_seed, location, prompts, device, load_reference, tokenizer)
    assert len(loads) == 2

    monkeypatch.setattr(run_module, "REFERENCE_SAMPLES_KEPT", 0)
    monkeypatch.setattr(run_module, "_reference_samples", {})
    run_module.cached_reference_samples(config, location, prompts, device, load_reference, tokenizer)
    run_module.cached_reference_samples(config, location, prompts, device, load_reference, tokenizer)
    assert len(loads) == 4 and run_module._reference_samples == {}


def test_gold_metrics_from_kept_reference_samples_equal_those_sampled_in_the_call(tokenizer) -> None:
    policy, reference = tiny_llama(tokenizer, seed=1), tiny_llama(tokenizer, seed=2)
    gold_reward = GoldReward(
        TestbedConfig(num_topics=3, num_words=10, relevant_words_per_topic=3, off_topic_words_per_topic=3)
    )
    prompts = [f"topic_{index % 3}" for index in range(24)]
    config = EvaluationSettings(num_eval_prompts=len(prompts), kl_samples=0)
    sampled_here = gold_reward_metrics(policy, reference, tokenizer, prompts, gold_reward, config, seed=3)
    responses = [
        samples[0] for samples in sample_responses(reference, tokenizer, prompts, max_new_tokens=16, seed=3)
    ]
    kept = gold_reward_metrics(
        policy, None, tokenizer, prompts, gold_reward, config, seed=3, reference_responses=responses
    )
    assert kept == sampled_here
    assert "kl_estimate" not in kept
