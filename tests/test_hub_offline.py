"""Offline (issue 18): with no hub reachable, hub look-ups fail fast with one message naming the id,
and `noisypref alpacaeval` prints no retry noise."""

from __future__ import annotations

import json
import logging
import socket

import datasets.config
import huggingface_hub.constants
import pytest

from noisypref.benchmark.data import hub
from noisypref.benchmark.data.hub import OFFLINE_VARIABLES, HubUnavailable
from noisypref.benchmark.data.loaders import load_preferences
from noisypref.benchmark.engine.models import load_causal_lm
from noisypref.cli import main

NOT_CACHED_DATASET = "noisypref-tests/no-such-dataset"
NOT_CACHED_MODEL = "noisypref-tests/no-such-model"


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def restored_hub_settings(monkeypatch):
    """Whatever a test switches (environment, the libraries' offline flags, the probe) is undone after it."""
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(hub, "_reachable", None)
    return monkeypatch


@pytest.fixture
def unreachable_hub(restored_hub_settings):
    """A hub endpoint that refuses connections (no HF_HUB_OFFLINE set)."""
    restored_hub_settings.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    return restored_hub_settings


def test_hf_hub_offline_makes_a_dataset_lookup_fail_at_once_naming_the_id(restored_hub_settings, caplog):
    restored_hub_settings.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.INFO)
    with pytest.raises(HubUnavailable) as raised:
        load_preferences(NOT_CACHED_DATASET, "train")
    message = str(raised.value)
    assert f"hub dataset {NOT_CACHED_DATASET!r} is not in the local hub cache and HF_HUB_OFFLINE is set" in message
    assert hub._reachable is None  # offline was asked for: the hub was not even probed
    assert not any("Retrying" in record.getMessage() for record in caplog.records)


def test_an_unreachable_hub_is_probed_once_and_model_lookups_fail_fast(unreachable_hub, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(HubUnavailable) as raised:
        load_causal_lm(NOT_CACHED_MODEL, "float32", device="cpu")
    assert f"model {NOT_CACHED_MODEL!r} is not in the local hub cache and the hub cannot be reached" in str(raised.value)
    assert hub._reachable is False
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # the libraries read the local cache only
    with pytest.raises(HubUnavailable, match=NOT_CACHED_DATASET):
        load_preferences(NOT_CACHED_DATASET, "train")
    probes = [record for record in caplog.records if "cannot be reached" in record.getMessage()]
    assert len(probes) == 1
    assert not any("Retrying" in record.getMessage() for record in caplog.records)


def test_a_local_model_folder_is_never_a_hub_lookup(unreachable_hub, tmp_path):
    with pytest.raises((OSError, ValueError)) as raised:  # transformers' own error for a folder without a model
        load_causal_lm(str(tmp_path), "float32", device="cpu")
    assert not isinstance(raised.value, HubUnavailable)
    assert hub._reachable is None


def test_alpacaeval_offline_falls_back_without_retry_noise(unreachable_hub, tmp_path, capfd):
    annotations = [
        {"instruction": f"q{index}", "output_1": "x" * (index + 1), "output_2": "y" * (2 * index + 1),
         "generator_1": "base", "generator_2": "mine", "preference": 2.0 if index % 3 else 1.0}
        for index in range(12)
    ]  # fmt: skip
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotations))
    assert main(["alpacaeval", "--annotations", str(path)]) == 0
    captured = capfd.readouterr()
    assert "[offline-glm]" in captured.out
    assert "Retrying" not in captured.err + captured.out
