"""FlashAttention-2 without flash-attn or without CUDA is refused before any run (issue 28), as flex
attention without CUDA is: transformers would raise at every run's model load."""

from __future__ import annotations

import pytest
import yaml

import noisypref.benchmark.study.preflight as preflight
from noisypref.benchmark.study import parse_study
from noisypref.cli import main


def study(attention: str):
    return parse_study(
        {
            "name": "attention",
            "noise": [{"model": "symmetric", "rates": [0.2]}],
            "methods": [{"name": "dpo"}],
            "models": [{"name": "testbed", "attn_implementation": attention}],
        }
    )


@pytest.mark.parametrize(
    ("flash_attn", "cuda", "missing"),
    [
        (False, True, ["the flash-attn package"]),
        (True, False, ["a CUDA device"]),
        (False, False, ["the flash-attn package", "a CUDA device"]),
    ],
)
def test_flash_attention_2_needs_the_package_and_cuda(monkeypatch, flash_attn, cuda, missing) -> None:
    monkeypatch.setattr(preflight, "_flash_attn_installed", lambda: flash_attn)
    monkeypatch.setattr(preflight, "_cuda_available", lambda: cuda)
    (problem,) = preflight.preflight_problems(study("flash_attention_2"), {})
    path, value, allowed = problem
    assert (path, value) == ("models[0].attn_implementation", "flash_attention_2")
    assert allowed.startswith("'sdpa' or 'eager' on this machine")
    assert all(what in allowed for what in missing) and len(missing) == allowed.count(" and ") + 1


def test_flash_attention_2_with_the_package_and_cuda_passes(monkeypatch) -> None:
    monkeypatch.setattr(preflight, "_flash_attn_installed", lambda: True)
    monkeypatch.setattr(preflight, "_cuda_available", lambda: True)
    assert preflight.preflight_problems(study("flash_attention_2"), {}) == []
    assert preflight.preflight_problems(study("sdpa"), {}) == []


def test_a_study_meant_for_another_machine_is_not_checked_for_it(monkeypatch) -> None:
    monkeypatch.setattr(preflight, "_flash_attn_installed", lambda: False)
    assert preflight.preflight_problems(study("flash_attention_2"), {}, machine=False) == []


def test_validate_refuses_it_naming_the_field_and_what_is_missing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(preflight, "_flash_attn_installed", lambda: False)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "attention", "noise": [{"model": "symmetric", "rates": [0.2]}],
                                    "methods": [{"name": "dpo"}],
                                    "models": [{"name": "testbed", "attn_implementation": "flash_attention_2"}]}))  # fmt: skip
    status = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "models[0].attn_implementation = 'flash_attention_2'" in err and "flash-attn" in err
