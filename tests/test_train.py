"""Tests of the training engine: tokenisation, per-pair log-probs, the reference cache, the loop."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_llama_config_of
from transformers import AutoModelForCausalLM

from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine.batches import pair_batch, sequence_batch
from noisypref.benchmark.engine.logps import SequenceLogps
from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.engine.train import NonFiniteLossError, PairOrder, train
from noisypref.benchmark.storage import cached_torch_file
from noisypref.benchmark.testbed import build_word_tokenizer
from noisypref.methods import build
from noisypref.noise_injection import inject

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = 10


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(num_topics=3, num_words=WORDS)


def build_tiny_llama(tokenizer, seed: int = 0):
    """The tests' random two-layer Llama on the tokenizer's ids (a plain function: test_distributed's
    worker processes import it)."""
    config = tiny_llama_config_of(tokenizer=tokenizer, num_hidden_layers=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    """``tiny_llama(seed=0)``: ``build_tiny_llama`` on the module's tokenizer."""
    return lambda seed=0: build_tiny_llama(tokenizer, seed)


def random_pairs(count: int, seed: int = 0) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(seed)

    def response() -> str:
        length = int(torch.randint(1, 7, (1,), generator=generator))
        return " ".join(f"w{int(index)}" for index in torch.randint(WORDS, (length,), generator=generator))

    rows = {"pair_id": [], "prompt": [], "chosen": [], "rejected": []}
    for index in range(count):
        chosen, rejected = response(), response()
        while rejected == chosen:
            rejected = response()
        rows["pair_id"].append(f"pair-{index:03d}")
        rows["prompt"].append(
            " ".join(
                f"topic_{int(topic)}" for topic in torch.randint(3, (1 + index % 3,), generator=generator)
            )
        )
        rows["chosen"].append(chosen)
        rows["rejected"].append(rejected)
    return datasets.Dataset.from_dict(rows)


def plain_sequence_logp(model, tokenizer, prompt: str, response: str) -> float:
    """Independent reference: one sequence at a time, full logits, log-softmax, sum over response + eos."""
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        log_probs = model(input_ids).logits.log_softmax(-1)[0]
    return sum(float(log_probs[len(prompt_ids) + k - 1, token]) for k, token in enumerate(response_ids))


# ---------------------------------------------------------------------------------------------
# Tokenisation


def test_plain_text_layout_is_bos_prompt_response_eos(tokenizer) -> None:
    pairs = datasets.Dataset.from_dict(
        {"pair_id": ["p"], "prompt": ["topic_1 topic_2"], "chosen": ["w3 w4"], "rejected": ["w0"]}
    )
    tokens = tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=32)
    vocabulary = tokenizer.get_vocab()
    assert tokens.prompt_ids[0] == [tokenizer.bos_token_id, vocabulary["topic_1"], vocabulary["topic_2"]]
    chosen, rejected = tokens.chosen_and_rejected(0)
    assert chosen == [vocabulary["w3"], vocabulary["w4"], tokenizer.eos_token_id]
    assert rejected == [vocabulary["w0"], tokenizer.eos_token_id]

    batch = pair_batch(tokens, [0], tokenizer.pad_token_id, pack=False)
    # Row 0 is the chosen sequence: the prompt (bos, two topics) is masked, response and eos are not.
    assert batch.input_ids[0].tolist() == tokens.prompt_ids[0] + chosen
    assert batch.response_mask[0].tolist() == [False, False, False, True, True, True]
    assert batch.response_mask[1].tolist() == [False, False, False, True, True, False]
    assert batch.response_lengths.tolist() == [3, 2]


def test_truncation_keeps_bos_and_the_end_of_the_prompt_and_the_start_of_the_response(tokenizer) -> None:
    pairs = datasets.Dataset.from_dict(
        {
            "pair_id": ["p"],
            "prompt": ["topic_0 topic_1 topic_2 topic_0 topic_1"],
            "chosen": ["w1 w2 w3 w4 w5"],
            "rejected": ["w6"],
        }
    )
    tokens = tokenize_pairs(pairs, tokenizer, max_length=6, max_prompt_length=3)
    vocabulary = tokenizer.get_vocab()
    assert tokens.prompt_ids[0] == [tokenizer.bos_token_id, vocabulary["topic_0"], vocabulary["topic_1"]]
    chosen, rejected = tokens.chosen_and_rejected(0)
    assert chosen == [vocabulary["w1"], vocabulary["w2"], vocabulary["w3"]]  # cut from the right, eos lost
    assert rejected == [vocabulary["w6"], tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="max_length"):
        tokenize_pairs(pairs, tokenizer, max_length=3, max_prompt_length=3)


def test_chat_template_responses_are_what_the_template_adds_after_the_prompt() -> None:
    tokenizer = build_word_tokenizer(num_topics=3, num_words=WORDS)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}{{ message['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}topic_0 {% endif %}"
    )
    pairs = datasets.Dataset.from_dict(
        {
            "pair_id": ["p"],
            "prompt": [[{"role": "user", "content": "topic_1"}]],
            "chosen": [[{"role": "assistant", "content": "topic_0 w2 w3"}]],
            "rejected": [[{"role": "assistant", "content": "topic_0 w4"}]],
        }
    )
    tokens = tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=32)
    vocabulary = tokenizer.get_vocab()
    assert tokens.prompt_ids[0] == [tokenizer.bos_token_id, vocabulary["topic_1"], vocabulary["topic_0"]]
    chosen, rejected = tokens.chosen_and_rejected(0)
    assert chosen == [vocabulary["w2"], vocabulary["w3"]]
    assert rejected == [vocabulary["w4"]]


def test_flipped_pairs_share_token_ids_and_content_key(tokenizer) -> None:
    clean = random_pairs(40)
    noisy, flips = inject(clean, "symmetric", 0.5, seed=3)
    clean_tokens = tokenize_pairs(clean, tokenizer, max_length=64, max_prompt_length=32)
    noisy_tokens = tokenize_pairs(noisy, tokenizer, max_length=64, max_prompt_length=32)
    assert noisy_tokens.content_key == clean_tokens.content_key
    assert noisy_tokens.response_a_ids == clean_tokens.response_a_ids
    is_flipped = torch.tensor(flips.table["is_flipped"].to_numpy())
    assert is_flipped.any()
    assert torch.equal(noisy_tokens.chosen_is_a, clean_tokens.chosen_is_a ^ is_flipped)


# ---------------------------------------------------------------------------------------------
# Per-pair log-probs


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("chunk_tokens", [4096, 5])
def test_sequence_logps_equal_a_plain_per_sequence_computation(
    tokenizer, tiny_llama, pack: bool, chunk_tokens: int
) -> None:
    model = tiny_llama()
    pairs = random_pairs(12)
    tokens = tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=32)
    logps_model = SequenceLogps(model, chunk_tokens=chunk_tokens)
    assert logps_model.supports_packing
    batch = pair_batch(tokens, list(range(len(pairs))), tokenizer.pad_token_id, pack=pack)
    if pack:
        assert batch.input_ids.shape[0] < 2 * len(pairs)  # some sequences share a row
    with torch.no_grad():
        logps = logps_model(batch)
    expected_chosen = [plain_sequence_logp(model, tokenizer, row["prompt"], row["chosen"]) for row in pairs]
    expected_rejected = [
        plain_sequence_logp(model, tokenizer, row["prompt"], row["rejected"]) for row in pairs
    ]
    torch.testing.assert_close(logps, torch.tensor(expected_chosen + expected_rejected), atol=1e-4, rtol=1e-5)


def test_packed_gradients_equal_padded_gradients(tokenizer, tiny_llama) -> None:
    model = tiny_llama()
    tokens = tokenize_pairs(random_pairs(8), tokenizer, max_length=64, max_prompt_length=32)
    logps_model = SequenceLogps(model, chunk_tokens=7)
    gradients = []
    for pack in (True, False):
        model.zero_grad()
        logps_model(pair_batch(tokens, list(range(8)), tokenizer.pad_token_id, pack=pack)).sum().backward()
        gradients.append([parameter.grad.clone() for parameter in model.parameters()])
    for packed, padded in zip(*gradients, strict=True):
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_a_model_that_ignores_packing_falls_back_to_padding(tokenizer, tiny_llama) -> None:
    model = tiny_llama()
    original_forward = model.model.forward

    def forward_without_position_ids(*args, **kwargs):
        kwargs.pop("position_ids", None)  # as a model without packed-sequence support would behave
        return original_forward(*args, **kwargs)

    model.model.forward = forward_without_position_ids
    assert not SequenceLogps(model).supports_packing


def test_sequences_without_a_prompt_token_are_rejected() -> None:
    with pytest.raises(ValueError, match="no prompt token"):
        sequence_batch([[]], [[1, 2]], pad_token_id=0)


# ---------------------------------------------------------------------------------------------
# Reference cache


def test_reference_cache_is_hit_and_a_flipped_dataset_reads_swapped_values(
    tokenizer, tiny_llama, tmp_path, caplog
) -> None:
    model = tiny_llama()
    forward_calls = []
    model.base_model.register_forward_hook(lambda module, inputs, output: forward_calls.append(1))
    clean = random_pairs(20)
    options = dict(max_length=64, max_prompt_length=32, cache_dir=tmp_path)
    clean_tokens = tokenize_pairs(clean, tokenizer, **options)

    first = reference_logps(model, clean_tokens, model_identity="tiny", cache_dir=tmp_path, pad_token_id=0)
    calls_to_build = len(forward_calls)
    expected_chosen = [plain_sequence_logp(model, tokenizer, row["prompt"], row["chosen"]) for row in clean]
    forward_calls.clear()

    indices = torch.arange(len(clean))
    with caplog.at_level(logging.INFO, logger="noisypref.benchmark.storage"):
        again = reference_logps(
            model, clean_tokens, model_identity="tiny", cache_dir=tmp_path, pad_token_id=0
        )
        noisy, flips = inject(clean, "symmetric", 0.4, seed=1)
        noisy_tokens = tokenize_pairs(noisy, tokenizer, **options)
        flipped = reference_logps(
            model, noisy_tokens, model_identity="tiny", cache_dir=tmp_path, pad_token_id=0
        )
    assert calls_to_build > 0 and forward_calls == []  # the model never ran again
    assert "cache hit" in caplog.text

    chosen, rejected = first.chosen_and_rejected(clean_tokens, indices)
    torch.testing.assert_close(chosen, torch.tensor(expected_chosen), atol=1e-4, rtol=1e-5)
    assert torch.equal(again.chosen_and_rejected(clean_tokens, indices)[0], chosen)
    noisy_chosen, noisy_rejected = flipped.chosen_and_rejected(noisy_tokens, indices)
    is_flipped = torch.tensor(flips.table["is_flipped"].to_numpy())
    assert 0 < is_flipped.sum() < len(clean)
    assert torch.equal(noisy_chosen, torch.where(is_flipped, rejected, chosen))
    assert torch.equal(noisy_rejected, torch.where(is_flipped, chosen, rejected))

    other_model = reference_logps(
        model, clean_tokens, model_identity="another", cache_dir=tmp_path, pad_token_id=0
    )
    assert len(forward_calls) > 0  # a different model identity is a different cache entry
    assert torch.equal(other_model.logp_a, first.logp_a)


def _build_with_marker(path: str, marker: str) -> None:
    def build() -> dict:
        with open(marker, "a") as file:
            file.write("built\n")
        time.sleep(0.3)
        return {"value": torch.tensor([1.0])}

    cached_torch_file(Path(path), build, "test value")


def test_concurrent_processes_build_a_cached_file_once(tmp_path) -> None:
    marker = tmp_path / "builds.txt"
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_build_with_marker, args=(str(tmp_path / "value.pt"), str(marker)))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert marker.read_text() == "built\n"
    assert torch.load(tmp_path / "value.pt")["value"].tolist() == [1.0]


# ---------------------------------------------------------------------------------------------
# The loop


def train_tiny(tokenizer, tmp_path: Path, name: str, *, method=None, seed: int = 0, **overrides):
    pairs = random_pairs(48)
    tokens = tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=32)
    model = build_tiny_llama(tokenizer)
    reference = reference_logps(model, tokens, model_identity="tiny", cache_dir=None, pad_token_id=0)
    settings = dict(steps=12, batch_size=8, learning_rate=1e-2, log_every=1)
    settings.update(overrides.pop("config", {}))
    metrics_path = tmp_path / f"{name}.jsonl"
    result = train(
        model,
        method or build("dpo", beta=0.5),
        tokens,
        TrainingSettings(**settings),
        reference=reference,
        pad_token_id=0,
        seed=seed,
        metrics_path=metrics_path,
        device="cpu",
        **overrides,
    )
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    return model, result, records


def without_timing(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "pairs_per_second"} for record in records]


def test_training_is_deterministic_on_cpu_for_a_seed(tokenizer, tmp_path) -> None:
    model_a, _, records_a = train_tiny(tokenizer, tmp_path, "a", seed=5)
    model_b, _, records_b = train_tiny(tokenizer, tmp_path, "b", seed=5)
    _, _, records_c = train_tiny(tokenizer, tmp_path, "c", seed=6)
    assert without_timing(records_a) == without_timing(records_b)
    for parameter_a, parameter_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(parameter_a, parameter_b)
    assert without_timing(records_a) != without_timing(records_c)
    assert [record["step"] for record in records_a] == list(range(1, 13))
    expected_keys = {
        "step",
        "loss",
        "reward_gap_mean",
        "reward_gap_std",
        "train_accuracy",
        "target_margin_mean",
        "target_margin_std",
        "learning_rate",
        "grad_norm",
        "pairs_per_second",
    }
    assert expected_keys <= set(records_a[0])
    assert records_a[-1]["loss"] < records_a[0]["loss"]


def test_learning_rate_follows_warmup_then_cosine(tokenizer, tmp_path) -> None:
    peak, steps = 1e-2, 20  # warm-up ceil(0.1 * 20) = 2 steps
    _, _, records = train_tiny(tokenizer, tmp_path, "schedule", config=dict(steps=steps, learning_rate=peak))
    rates = {record["step"]: record["learning_rate"] for record in records}
    assert rates[1] == pytest.approx(peak / 3)
    assert rates[2] == pytest.approx(2 * peak / 3)
    assert rates[3] == pytest.approx(peak)
    assert rates[11] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 8 / 18)))
    assert rates[20] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 17 / 18)))


def test_gradient_accumulation_gives_the_full_batch_update(tokenizer, tmp_path) -> None:
    model_full, _, records_full = train_tiny(tokenizer, tmp_path, "full", config=dict(steps=4))
    model_accumulated, _, records_accumulated = train_tiny(
        tokenizer, tmp_path, "accumulated", config=dict(steps=4, gradient_accumulation=4)
    )
    # The gradient norm is scale-sensitive (Adam's update is not): the accumulated gradient is the mean.
    assert records_accumulated[0]["grad_norm"] == pytest.approx(records_full[0]["grad_norm"], rel=1e-4)
    for full, accumulated in zip(model_full.parameters(), model_accumulated.parameters(), strict=True):
        torch.testing.assert_close(full, accumulated, atol=1e-4, rtol=1e-3)
    assert records_full[-1]["reward_gap_mean"] == pytest.approx(
        records_accumulated[-1]["reward_gap_mean"], abs=1e-4
    )


class NaNAtCall:
    """Wraps a method; from its ``at``-th call on, the policy log-probs are NaN."""

    def __init__(self, method, at: int) -> None:
        self.method, self.at, self.calls = method, at, 0
        self.name, self.requires_reference = method.name, method.requires_reference

    def __call__(self, logps):
        self.calls += 1
        if self.calls >= self.at:
            logps = dataclasses.replace(logps, policy_chosen=logps.policy_chosen * float("nan"))
        return self.method(logps)

    def optional_fields(self):
        return self.method.optional_fields()

    def train(self, mode: bool = True):
        return self.method.train(mode)

    def eval(self):
        return self.method.eval()

    def state_dict(self):
        return self.method.state_dict()

    def load_state_dict(self, state):
        self.method.load_state_dict(state)


def test_a_non_finite_loss_raises_at_its_step(tokenizer, tmp_path) -> None:
    with pytest.raises(NonFiniteLossError) as raised:
        train_tiny(tokenizer, tmp_path, "nan", method=NaNAtCall(build("dpo", beta=0.5), at=5))
    assert raised.value.step == 5
    assert raised.value.method == "dpo"
    assert raised.value.last_finite_metrics["step"] == 4
    assert "step 5" in str(raised.value)

    model, result, records = train_tiny(
        tokenizer,
        tmp_path,
        "skip",
        method=NaNAtCall(build("dpo", beta=0.5), at=11),
        config=dict(nan_policy="skip"),
    )
    assert result.skipped_steps == 2
    assert [record["step"] for record in records] == list(range(1, 11))
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_a_gamma_method_skips_a_non_finite_step_too(tokenizer, tmp_path) -> None:
    method = NaNAtCall(build("gamma_dpo", beta=0.5, tau=1.0), at=11)
    model, result, records = train_tiny(tokenizer, tmp_path, "gamma-skip", method=method, config=dict(nan_policy="skip"))
    assert result.skipped_steps == 2
    assert [record["step"] for record in records] == list(range(1, 11))
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    with pytest.raises(NonFiniteLossError) as raised:
        train_tiny(tokenizer, tmp_path, "gamma-fail", method=NaNAtCall(build("gamma_dpo", beta=0.5, tau=1.0), at=5))
    assert raised.value.step == 5


def test_a_resumed_run_continues_identically(tokenizer, tmp_path) -> None:
    class Interrupted(Exception):
        pass

    def stop_at_step_7(record: dict) -> None:
        if record["step"] == 7:
            raise Interrupted

    def beta_dpo():
        return build("beta_dpo", beta=0.5, seed=2)  # stateful: running statistics and a sampler

    model_straight, _, records_straight = train_tiny(tokenizer, tmp_path, "straight", method=beta_dpo())
    checkpoint_dir = tmp_path / "checkpoints"
    with pytest.raises(Interrupted):
        train_tiny(
            tokenizer,
            tmp_path,
            "resumed",
            method=beta_dpo(),
            config=dict(checkpoint_every=5),
            checkpoint_dir=checkpoint_dir,
            callbacks=[stop_at_step_7],
        )
    assert (checkpoint_dir / "checkpoint.pt").exists()
    model_resumed, _, records_resumed = train_tiny(
        tokenizer,
        tmp_path,
        "resumed",
        method=beta_dpo(),
        config=dict(checkpoint_every=5),
        checkpoint_dir=checkpoint_dir,
    )
    assert without_timing(records_resumed) == without_timing(records_straight)
    for straight, resumed in zip(model_straight.parameters(), model_resumed.parameters(), strict=True):
        assert torch.equal(straight, resumed)


def test_pair_order_is_a_function_of_seed_and_step() -> None:
    order = PairOrder(num_pairs=10, batch_size=4, seed=0)
    epoch = torch.cat([order.step_pairs(step) for step in range(1, 6)])  # 20 draws: two epochs
    assert sorted(epoch[:10].tolist()) == list(range(10)) and sorted(epoch[10:].tolist()) == list(range(10))
    assert torch.equal(PairOrder(10, 4, 0).step_pairs(3), order.step_pairs(3))
    assert not torch.equal(PairOrder(10, 4, 1).step_pairs(1), order.step_pairs(1))


def test_training_config_names_the_field_of_a_bad_value() -> None:
    with pytest.raises(ValueError, match=r"training\.learning_rate = -1"):
        TrainingSettings(learning_rate=-1)
    with pytest.raises(ValueError, match=r"training\.batch_size"):
        TrainingSettings(batch_size=10, gradient_accumulation=3)
    with pytest.raises(ValueError, match=r"training\.nan_policy"):
        TrainingSettings(nan_policy="ignore")
    with pytest.raises(ValueError, match="unknown key"):
        TrainingSettings.from_dict({"step": 3})
