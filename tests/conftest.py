"""Fixtures shared by the engine, evaluation and learning tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisypref.benchmark.testbed import Testbed, TestbedConfig, build_testbed

# The tiny random Llama of the tests: 16 wide, one layer of two heads (what each test changes, it names)
TINY_LLAMA = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


@pytest.fixture
def one_torch_thread():
    """The tiny models run fastest, and deterministically, on one thread (two thrash on a busy 2-core CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def engine_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder (testbeds, token ids, reference log-probs) for the whole test session."""
    return tmp_path_factory.mktemp("engine_cache")


@pytest.fixture(scope="session")
def default_testbed(engine_cache_dir: Path) -> Testbed:
    """The default testbed of DESIGN §6, built once per session (about 15 s)."""
    return build_testbed(TestbedConfig(), engine_cache_dir)


def tiny_llama_config_of(vocab_size: int | None = None, *, tokenizer=None, **settings):
    """The config of a tiny random Llama: the sizes of ``TINY_LLAMA`` unless ``settings`` give others,
    and any other LlamaConfig setting (token ids, ``num_labels``, ``max_position_embeddings``) as given.
    ``tokenizer=`` takes the vocabulary size and the pad, bos and eos token ids from a tokenizer instead.
    A plain function, so that worker processes (tests/test_distributed.py) can import it."""
    from transformers import LlamaConfig

    if tokenizer is not None:
        vocab_size = len(tokenizer)
        settings = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **settings,
        }
    return LlamaConfig(vocab_size=vocab_size, **{**TINY_LLAMA, **settings})


@pytest.fixture(scope="session")
def tiny_llama_config():
    """``tiny_llama_config(vocab_size, **settings)``: ``tiny_llama_config_of`` as a fixture."""
    return tiny_llama_config_of
