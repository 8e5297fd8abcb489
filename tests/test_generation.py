"""Tests of batched, resumable generation (noisypref.benchmark.evaluation.generation)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from noisypref.benchmark.config.benchmarks import GenerationSettings, published_settings
from noisypref.benchmark.evaluation import generation
from noisypref.benchmark.evaluation.generation import generate_responses
from noisypref.benchmark.testbed import build_word_tokenizer

# The word tokenizer splits on whitespace, so the template puts spaces between its pieces.
CHAT_TEMPLATE = "{{ bos_token }} {% for message in messages %}{{ message['content'] }} {% endfor %}"
PROMPTS = ["topic_0", "topic_1 w3 w4 w5 w6", "topic_2 w1", "topic_3 w2 w2 w2", "topic_0 w9 w8 w7 w6 w5 w4"]
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, tiny_llama_config):
    """A random-initialised two-layer Llama and the testbed's word tokenizer with a chat template,
    round-tripped through save_pretrained / from_pretrained."""
    folder = tmp_path_factory.mktemp("tiny_chat_model")
    tokenizer = build_word_tokenizer(num_topics=4, num_words=16)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = tiny_llama_config(tokenizer=tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(folder)


def greedy_one_by_one(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """A second implementation: unpadded greedy decoding, one prompt and one token at a time."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    new_ids = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(torch.tensor([ids + new_ids])).logits[0, -1].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            new_ids.append(next_id)
    return tokenizer.decode(new_ids, skip_special_tokens=True).strip()


def test_left_padded_batches_decode_like_one_prompt_at_a_time(tiny_chat_model):
    model, tokenizer = tiny_chat_model
    outputs = generate_responses(model, tokenizer, PROMPTS, GREEDY, batch_size=3)
    assert outputs == [
        greedy_one_by_one(model, tokenizer, prompt, GREEDY.max_new_tokens) for prompt in PROMPTS
    ]
    assert any(outputs) and tokenizer.padding_side == "right"  # restored after generation


def test_restart_skips_finished_prompts_and_drops_a_torn_line(tiny_chat_model, tmp_path, monkeypatch):
    model, tokenizer = tiny_chat_model
    output_path = tmp_path / "outputs.jsonl"
    complete = generate_responses(model, tokenizer, PROMPTS, GREEDY, output_path=output_path, batch_size=2)
    lines = output_path.read_text().splitlines(keepends=True)
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(len(PROMPTS)))

    # A run killed after two prompts, in the middle of writing the third.
    output_path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    generated_prompts = []
    real_generate_batch = generation.generate_batch

    def counting_generate_batch(model, tokenizer, prompts, settings, system_prompt=None):
        generated_prompts.extend(prompts)
        return real_generate_batch(model, tokenizer, prompts, settings, system_prompt)

    monkeypatch.setattr(generation, "generate_batch", counting_generate_batch)
    resumed = generate_responses(model, tokenizer, PROMPTS, GREEDY, output_path=output_path, batch_size=2)

    done_before = {json.loads(line)["index"] for line in lines[:2]}
    assert sorted(generated_prompts) == sorted(p for i, p in enumerate(PROMPTS) if i not in done_before)
    assert resumed == complete
    records = [json.loads(line) for line in output_path.read_text().splitlines()]
    assert sorted(record["index"] for record in records) == list(range(len(PROMPTS)))

    generated_prompts.clear()
    assert generate_responses(model, tokenizer, PROMPTS, GREEDY, output_path=output_path) == complete
    assert generated_prompts == []


def test_an_output_file_of_other_prompts_is_refused(tiny_chat_model, tmp_path):
    model, tokenizer = tiny_chat_model
    output_path = tmp_path / "outputs.jsonl"
    output_path.write_text(json.dumps({"index": 0, "prompt": "topic_3", "output": "w1"}) + "\n")
    with pytest.raises(ValueError, match="another prompt list"):
        generate_responses(model, tokenizer, PROMPTS, GREEDY, output_path=output_path)


def test_sampling_is_seeded(tiny_chat_model):
    model, tokenizer = tiny_chat_model
    settings = GenerationSettings(temperature=1.0, max_new_tokens=8, top_p=0.9)
    first = generate_responses(model, tokenizer, PROMPTS, settings, seed=3)
    assert first == generate_responses(model, tokenizer, PROMPTS, settings, seed=3)
    samples = {tuple(generate_responses(model, tokenizer, PROMPTS, settings, seed=seed)) for seed in range(4)}
    assert len(samples) > 1


def test_published_settings_lookup_and_validation():
    llama3 = published_settings("alpaca_eval", "llama3-instruct")
    assert (llama3.temperature, llama3.max_new_tokens) == (0.9, 4096)
    assert published_settings("arena_hard", "mistral-instruct").temperature == 0.0
    with pytest.raises(ValueError, match="no published settings .* known: alpaca_eval/llama3-instruct"):
        published_settings("alpaca_eval", "phi-3")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        GenerationSettings(temperature=-1.0, max_new_tokens=8)
