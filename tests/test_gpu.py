"""Checks that need a CUDA device (``pytest -m gpu``; scripts/gpu_check.sh runs them): the engine's bf16
autocast step, packed against padded log-probs (SDPA, flex attention, FlashAttention-2 when flash-attn is
installed), a resumed run with dropout, and a whole run with LoRA and a live reference on the GPU.
Skipped on a machine without CUDA.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import noisypref.benchmark.engine.checkpoint as checkpoint_module
from noisypref.benchmark.config.run_config import default_run_config
from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine.batches import sequence_batch
from noisypref.benchmark.engine.logps import SequenceLogps, autocast_for
from noisypref.benchmark.engine.models import load_causal_lm
from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.engine.train import train
from noisypref.benchmark.run.execute import execute_run
from noisypref.benchmark.testbed import TestbedConfig, build_testbed
from noisypref.methods import build

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)"),
]

SMALL_TESTBED = {"num_train_pairs": 256, "num_heldout_pairs": 64, "num_eval_prompts": 32, "sft_steps": 50}


def small_qwen2(vocab_size: int = 512, seed: int = 0) -> Qwen2ForCausalLM:
    """A random Qwen2-shaped model big enough for real attention kernels (4 layers, width 256, GQA)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(config).cuda().eval()


def random_sequences(count: int, seed: int = 0, vocab_size: int = 512) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 60, (count, 2), generator=generator)
    prompts = [torch.randint(1, vocab_size, (int(n),), generator=generator).tolist() for n in lengths[:, 0]]
    responses = [torch.randint(1, vocab_size, (int(n),), generator=generator).tolist() for n in lengths[:, 1]]
    return prompts, responses


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_packed_and_padded_log_probs_agree_on_cuda(autocast):
    model = small_qwen2()
    logps_model = SequenceLogps(model)
    assert logps_model.supports_packing  # SDPA on CUDA keeps packed sequences apart
    prompts, responses = random_sequences(24)
    precision = autocast_for(torch.device("cuda")) if autocast else contextlib.nullcontext()
    with torch.no_grad(), precision:
        packed = logps_model(sequence_batch(prompts, responses, 0, pack=True).to("cuda"))
        padded = logps_model(sequence_batch(prompts, responses, 0, pack=False).to("cuda"))
    # Summed log-probs of 3-60 tokens of a random model: about -6 per token.
    tolerance = 0.02 * padded.abs().max().item() if autocast else 1e-3 * padded.abs().max().item()
    assert torch.isfinite(packed).all()
    torch.testing.assert_close(packed, padded, atol=tolerance, rtol=0)


def test_flex_attention_on_packed_rows_matches_sdpa_on_padded_rows_with_gradients():
    sdpa = small_qwen2()
    flex = Qwen2ForCausalLM._from_config(sdpa.config, attn_implementation="flex_attention").cuda()
    flex.load_state_dict(sdpa.state_dict())
    prompts, responses = random_sequences(24)
    results = []
    for model, pack in ((flex, True), (sdpa, False)):
        logps_model = SequenceLogps(model)
        assert logps_model.supports_packing
        logps = logps_model(sequence_batch(prompts, responses, 0, pack=pack).to("cuda"))
        logps.sum().backward()
        results.append((logps.detach(), [parameter.grad.clone() for parameter in model.parameters()]))
    (flex_logps, flex_gradients), (sdpa_logps, sdpa_gradients) = results
    torch.testing.assert_close(flex_logps, sdpa_logps, atol=1e-3 * sdpa_logps.abs().max().item(), rtol=0)
    for flex_gradient, sdpa_gradient in zip(flex_gradients, sdpa_gradients, strict=True):
        scale = sdpa_gradient.abs().max().item()
        torch.testing.assert_close(flex_gradient, sdpa_gradient, atol=1e-3 * max(scale, 1e-6), rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs the flash-attn package")
def test_flash_attention_2_on_packed_rows_matches_sdpa_on_padded_rows():
    """Several packed rows: the engine passes their segments, which transformers infers for one row only."""
    sdpa = small_qwen2()
    flash = Qwen2ForCausalLM._from_config(sdpa.config, attn_implementation="flash_attention_2").cuda().eval()
    flash.load_state_dict(sdpa.state_dict())
    prompts, responses = random_sequences(48)
    flash_logps = SequenceLogps(flash)
    assert flash_logps.supports_packing
    packed = sequence_batch(prompts, responses, 0, pack=True)
    assert packed.input_ids.shape[0] > 1
    with torch.no_grad(), autocast_for(torch.device("cuda")):
        got = flash_logps(packed.to("cuda"))
        expected = SequenceLogps(sdpa)(sequence_batch(prompts, responses, 0, pack=False).to("cuda"))
    # bf16 autocast on both sides; a sequence attending to another one would be off by whole nats
    torch.testing.assert_close(got, expected, atol=0.02 * expected.abs().max().item(), rtol=0)


def test_a_resumed_run_with_dropout_on_cuda_continues_like_the_uninterrupted_one(
    tmp_path, monkeypatch, engine_cache_dir
):
    """The checkpoint keeps the CUDA generator: attention dropout draws the same masks after a resume.
    The control restores only the CPU generator and ends measurably elsewhere."""
    testbed = build_testbed(TestbedConfig.from_dict(SMALL_TESTBED), engine_cache_dir)  # built once a session

    class Interrupted(Exception):
        pass

    def stop_at_step_4(record: dict) -> None:
        if record["step"] == 4:
            raise Interrupted

    def run(name: str, callbacks=()) -> list[torch.Tensor]:
        policy, tokenizer = load_causal_lm(testbed.reference_model_dir, dtype="float32", device="cuda")
        for module in policy.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.3
        pairs = tokenize_pairs(testbed.train_pairs, tokenizer, max_length=32, max_prompt_length=8)
        reference = reference_logps(
            policy, pairs, model_identity="gpu-test", cache_dir=None, pad_token_id=tokenizer.pad_token_id
        )
        settings = TrainingSettings(steps=6, batch_size=32, max_length=32, max_prompt_length=8, log_every=1,
                                    learning_rate=1e-3, checkpoint_every=3)  # fmt: skip
        train(policy, build("dpo"), pairs, settings, reference=reference, pad_token_id=tokenizer.pad_token_id,
              seed=0, device="cuda", checkpoint_dir=tmp_path / name, callbacks=callbacks)  # fmt: skip
        return [parameter.detach().clone() for parameter in policy.parameters()]

    def largest_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
        return max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))

    straight = run("straight")
    with pytest.raises(Interrupted):
        run("resumed", [stop_at_step_4])
    resumed = run("resumed")
    with pytest.raises(Interrupted):
        run("control", [stop_at_step_4])
    restore = checkpoint_module.restore_rng_states
    monkeypatch.setattr(
        checkpoint_module, "restore_rng_states", lambda state: restore({"torch_rng": state["torch_rng"]})
    )
    control = run("control")
    assert largest_difference(straight, control) > 1e-6  # other dropout masks after step 3
    assert largest_difference(straight, resumed) < 0.01 * largest_difference(straight, control)


def test_a_bf16_autocast_training_step_is_finite_and_updates_float32_weights(engine_cache_dir):
    testbed = build_testbed(TestbedConfig.from_dict(SMALL_TESTBED), engine_cache_dir)
    policy, tokenizer = load_causal_lm(testbed.reference_model_dir, dtype="float32", device="cuda")
    pairs = tokenize_pairs(testbed.train_pairs, tokenizer, max_length=32, max_prompt_length=8)
    reference = reference_logps(
        policy, pairs, model_identity="gpu-test", cache_dir=None, pad_token_id=tokenizer.pad_token_id
    )
    autocast_dtypes = []
    policy.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: autocast_dtypes.append(output.dtype)
    )
    before = [parameter.detach().clone() for parameter in policy.parameters()]
    result = train(
        policy,
        build("gamma_dpo", tau=1.0),
        pairs,
        TrainingSettings(steps=3, batch_size=32, max_length=32, max_prompt_length=8, log_every=1),
        reference=reference,
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cuda",
    )
    assert result.skipped_steps == 0 and torch.isfinite(torch.tensor(result.final_metrics["loss"]))
    assert autocast_dtypes and set(autocast_dtypes) == {torch.bfloat16}
    assert all(parameter.dtype == torch.float32 for parameter in policy.parameters())
    assert any(not torch.equal(old, new) for old, new in zip(before, policy.parameters(), strict=True))


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="LoRA needs peft")
def test_a_run_with_lora_and_a_live_reference_on_cuda_matches_the_cached_reference(tmp_path, engine_cache_dir):
    """The live reference (the policy with its adapters off) runs in other batches than the cached one,
    so under bf16 autocast their log-probs differ by bf16 rounding, about 0.05 nats a sequence: β = 0.1
    turns that into reward-gap noise of about 0.006. At the learning rate 1e-3 the gaps after 5 steps
    were that small (median |gap| 0.007), so accuracies moved by 1-2 of 64 pairs; at 1e-2 (median 0.05)
    they did not move (measured on the CPU with bf16 autocast in the live reference only, float32
    weights, 3 seeds: held-out accuracy 0.016-0.031 apart at 1e-3 and 0 at 1e-2; train accuracy 0.012
    and 0.004; AUROC 0.004 and 0.002; final loss 1e-4 and below). Hence float32 weights and adapters
    (dtype auto would make them bf16, which rounds away small updates) and 1e-2."""
    base = default_run_config()
    sections = dict(
        dataset={**base["dataset"], "testbed": TestbedConfig.from_dict(SMALL_TESTBED).to_dict()},
        noise={"model": "symmetric", "rate": 0.2, "options": {"mode": "exact"}},
        method={
            "label": "gamma_dpo",
            "name": "gamma_dpo",
            "hyperparameters": {"beta": 0.1, "gamma0": 1.0, "tau": 1.0},
        },
        training={**base["training"], "steps": 5, "batch_size": 32, "max_length": 32, "max_prompt_length": 8,
                  "learning_rate": 1e-2},
        evaluation={**base["evaluation"], "gold_reward": False},  # sampling would amplify bf16 noise
    )  # fmt: skip
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}
    model = {**base["model"], "lora": lora, "dtype": "float32"}
    results = {
        reference: execute_run(
            default_run_config(**sections, model={**model, "reference": reference}),
            tmp_path / reference,
            engine_cache_dir,
            device="cuda",
        )
        for reference in ("cached", "live")
    }
    for name, value in results["cached"]["metrics"].items():
        # bf16 autocast: the live reference runs in other batches than the cached one.
        assert results["live"]["metrics"][name] == pytest.approx(value, abs=0.05), name
