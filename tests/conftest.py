"""Fixtures shared by the engine, evaluation and learning tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisypref.benchmark.testbed import Testbed, TestbedConfig, build_testbed


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
