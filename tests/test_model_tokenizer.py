"""The tokenizer of a model folder reads the text its tokenizer.json was built for (issue 17: the random
Qwen2-shaped model of scripts/gpu_check.sh read every testbed response as no tokens)."""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM

from noisypref.benchmark.engine.models import load_tokenizer
from noisypref.benchmark.testbed.tokenizer import build_word_tokenizer


def test_a_word_tokenizer_saved_beside_a_qwen2_config_keeps_its_words(tmp_path):
    tokenizer = build_word_tokenizer(num_topics=4, num_words=16)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "topic_2 w3 w15 w0"
    # One id per whitespace-separated word, looked up in the vocabulary by hand.
    expected = [tokenizer.get_vocab()[word] for word in text.split()]
    assert load_tokenizer(tmp_path)(text)["input_ids"] == expected
