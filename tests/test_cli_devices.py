"""`noisypref run --devices` on the CPU (issue 17): the default worker count follows the devices, and a
torch without CUDA, or with fewer devices than listed, is refused before any folder is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import cli

from noisypref.benchmark.storage import write_json_atomic

STUDY = {
    "name": "devices",
    "noise": [{"model": "symmetric", "rates": [0.2]}],
    "methods": [{"name": "dpo"}],
}
SEEN_DEVICES = "seen_devices.jsonl"


def recording_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """A fake run that records the device it was given (in the study folder) and writes result.json."""
    run_dir = Path(run_dir)
    with open(run_dir.parents[1] / SEEN_DEVICES, "a") as file:
        file.write(json.dumps(device) + "\n")
    result = {"run_id": run_dir.name, "status": "succeeded", "metrics": {}, "config": run_config}
    write_json_atomic(run_dir / "result.json", result)
    return result


@pytest.fixture
def study_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:recording_execute")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def pretend_cuda(monkeypatch, device_count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: device_count)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a visible CUDA device")
def test_devices_on_a_torch_without_cuda_is_refused_before_anything_is_written(study_file, tmp_path, capsys):
    out = tmp_path / "out"
    status, _, err = cli(capsys, "run", study_file, "--out", out, "--devices", "0")
    assert status == 2, err
    assert "--devices 0" in err and "CUDA" in err and "drop --devices" in err, err
    assert not out.exists()
    assert not (tmp_path / ".cache").exists()


def test_devices_beyond_the_visible_ones_are_refused_naming_them(study_file, tmp_path, capsys, monkeypatch):
    pretend_cuda(monkeypatch, device_count=1)
    out = tmp_path / "out"
    status, _, err = cli(capsys, "run", study_file, "--out", out, "--devices", "0,1,3")
    assert status == 2, err
    assert "--devices 0,1,3" in err and "device(s) 1, 3 do not exist" in err and "0 to 0" in err, err
    assert not out.exists()


def test_one_device_runs_with_the_default_worker_count_on_a_many_core_machine(
    study_file, tmp_path, capsys, monkeypatch
):
    pretend_cuda(monkeypatch, device_count=2)
    monkeypatch.setattr("os.cpu_count", lambda: 16)  # the default worker count used to be this
    out = tmp_path / "out"
    status, stdout, err = cli(capsys, "run", study_file, "--out", out, "--devices", "1", "--no-report")
    assert status == 0, err
    assert "1 succeeded" in stdout
    # One process (this one) ran the study, on the listed device.
    seen = [json.loads(line) for line in (out / SEEN_DEVICES).read_text().splitlines()]
    assert seen == ["cuda:1"]


def test_an_explicit_worker_count_that_disagrees_with_the_devices_is_still_refused(
    study_file, tmp_path, capsys, monkeypatch
):
    pretend_cuda(monkeypatch, device_count=2)
    out = tmp_path / "out"
    status, _, err = cli(capsys, "run", study_file, "--out", out, "--devices", "0", "--workers", "2")
    assert status == 2, err
    assert "--workers 2 with --devices 0" in err
    assert not (out / "runs").exists()
