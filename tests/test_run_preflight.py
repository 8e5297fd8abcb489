"""What `noisypref run` refuses before it writes anything: Slurm asked for where there is none, options
that do not go together, a run id the study does not have, trackers that are not installed. Each exits 2
with one message naming the option or field, the value and what to do instead; the output and cache
folders are not created (no study.yaml, no runs/).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli

from noisypref import plugins
from noisypref.benchmark.study import slurm

STUDY = {"name": "preflight", "noise": [{"model": "symmetric", "rates": [0.2]}], "methods": [{"name": "dpo"}]}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def run_refused(capsys, tmp_path: Path, *argv: object) -> str:
    """`noisypref run ARGV --out OUT --cache-dir CACHE` exits 2 and creates neither folder; its stderr."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    status, _, err = cli(capsys, "run", *argv, "--out", out, "--cache-dir", cache)
    assert status == 2 and "error:" in err, err
    assert not out.exists() and not cache.exists(), "a refused command wrote its folders"
    return err


def test_launcher_slurm_without_slurm_is_refused_up_front_with_the_alternative(tmp_path, capsys, study, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch, no srun
    err = run_refused(capsys, tmp_path, study, "--launcher", "slurm", "--slurm-partition", "gpu")
    assert "--launcher slurm: this machine has no Slurm (sbatch and srun not found on PATH)" in err
    assert "--emit-jobs" in err


def test_launcher_slurm_with_emit_jobs_is_refused_as_incompatible(tmp_path, capsys, study, monkeypatch):
    monkeypatch.setattr(slurm, "missing_slurm_commands", list)  # even where Slurm is installed
    err = run_refused(capsys, tmp_path, study, "--launcher", "slurm", "--emit-jobs")
    assert "--launcher slurm and --emit-jobs do not go together" in err


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_an_unknown_run_id_is_refused_before_any_folder_is_written(tmp_path, capsys, study, monkeypatch, launcher):
    monkeypatch.setattr(slurm, "missing_slurm_commands", list)
    err = run_refused(capsys, tmp_path, study, "--launcher", launcher, "--run-id", "abc")
    assert "run id(s) abc are not in this study" in err and "noisypref validate" in err


def test_a_tracker_that_is_not_installed_is_refused_before_the_first_run(tmp_path, capsys, study, monkeypatch):
    import importlib.util

    installed = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "trackio" else installed(name, *rest)
    )
    err = run_refused(capsys, tmp_path, study, "--track", "tensorboard,trackio")
    assert "--track 'tensorboard,trackio': trackio needs the trackio package: pip install 'noisypref[trackio]'" in err
    # the same tracker named in the study file: validate and run refuse it as a field
    with_tracking = tmp_path / "tracked.yaml"
    with_tracking.write_text(yaml.safe_dump({**STUDY, "tracking": {"trackers": ["trackio"]}}))
    status, _, err = cli(capsys, "validate", with_tracking)
    assert status == 2 and "tracking.trackers = ['trackio']" in err and "pip install 'noisypref[trackio]'" in err
    run_refused(capsys, tmp_path, with_tracking)
    # --elsewhere: the study is for another machine, whose packages are not known here
    assert cli(capsys, "validate", with_tracking, "--elsewhere")[0] == 0


def test_emitted_job_commands_carry_the_plugin_folder_of_the_study_file(tmp_path, capsys):
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "lab_losses_for_jobs.py").write_text("")  # a plugin module that registers nothing
    study = lab / "study.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "plugins": ["lab_losses_for_jobs"]}))
    try:
        status, out, err = cli(
            capsys, "run", study, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--emit-jobs"
        )
    finally:  # as a fresh process would be: the lab folder off the import path
        sys.modules.pop("lab_losses_for_jobs", None)
        sys.path.remove(str(lab.resolve()))
        plugins._plugin_folders.remove(str(lab.resolve()))
    assert status == 0, err
    (command,) = out.splitlines()
    words = shlex.split(command)
    assert words[words.index("--plugin-path") + 1] == str(lab.resolve())
    assert words[words.index("run") + 1] == str((tmp_path / "out" / "study.yaml").resolve())
