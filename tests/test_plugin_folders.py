"""A study's plugin modules where researchers keep them: beside the study file. They import without
PYTHONPATH, in spawned worker processes too (installed packages win a clash of names); a missing one
is reported with the folders searched; and `noisypref status` and `collect` read a plugin study's
folder without the plugin code (from its plan.json), in a shell where the plugin does not import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from cli_helpers import cli
from test_study import TINY_TESTBED

from noisypref import plugins
from noisypref.methods.base import METHODS

REPO = Path(__file__).resolve().parent.parent
PLUGIN = """
from noisypref.methods import register
from noisypref.methods.dpo import DPO


@register
class LabDPO(DPO):
    name = "{method}"
    source = "tests/test_plugin_folders.py"
    summary = "DPO under another name"
"""


def forget_plugin(folder: Path, module: str, method: str) -> None:
    """Undo what importing the plugin did in this process: as in a fresh shell without it."""
    METHODS.pop(method, None)
    sys.modules.pop(module, None)
    resolved = str(folder.resolve())
    if resolved in sys.path:
        sys.path.remove(resolved)
    plugins._plugin_folders[:] = [path for path in plugins._plugin_folders if path != resolved]


def write_lab(root: Path, module: str, method: str) -> Path:
    """root/lab/{module}.py and root/lab/study.yaml naming it; returns the study file."""
    lab = root / "lab"
    lab.mkdir()
    (lab / f"{module}.py").write_text(PLUGIN.format(method=method))
    study = {
        "name": "lab_study",
        "plugins": [module],
        "noise": [{"model": "symmetric", "rates": [0, 0.2]}],
        "methods": [{"name": method}, {"name": "dpo", "hyperparameters": {"beta": 0.2}}],
    }
    (lab / "study.yaml").write_text(yaml.safe_dump(study))
    return lab / "study.yaml"


def test_a_plugin_beside_the_study_file_runs_in_spawned_workers_without_pythonpath(tmp_path):
    study = write_lab(tmp_path, "lab_losses_beside", "lab_dpo_beside")
    document = yaml.safe_load(study.read_text())
    document.update(
        datasets=[{"kind": "testbed", "testbed": TINY_TESTBED}],
        training={"steps": 2, "batch_size": 8, "max_length": 16, "max_prompt_length": 4},
        evaluation={"num_eval_prompts": 8, "max_new_tokens": 5},
        noise=[{"model": "symmetric", "rates": [0.2]}],
    )
    study.write_text(yaml.safe_dump(document))
    environment = {**os.environ, "PYTHONPATH": str(REPO)}  # noisypref only: the lab folder is not on it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "noisypref", "run", str(study), "--out", "out", "--workers", "2", "--no-report"]
    done = subprocess.run(command, cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_parquet(elsewhere / "out" / "results.parquet")
    assert sorted(table["method_name"]) == ["dpo", "lab_dpo_beside"] and set(table["status"]) == {"succeeded"}


def test_a_plugin_that_is_not_found_names_the_folders_searched(tmp_path, capsys):
    study = write_lab(tmp_path, "lab_losses_present", "lab_dpo_unused")
    study.write_text(study.read_text().replace("lab_losses_present", "lab_losses_absent"))
    try:
        status, _, err = cli(capsys, "validate", study)
    finally:
        forget_plugin(study.parent, "lab_losses_absent", "lab_dpo_unused")
    assert status == 2, err
    assert "plugins[0] = 'lab_losses_absent'" in err and "No module named 'lab_losses_absent'" in err
    assert "searched the installed packages, PYTHONPATH, " in err and str(study.parent.resolve()) in err


def test_status_and_collect_read_a_plugin_study_folder_without_the_plugin(tmp_path, capsys):
    module, method = "lab_losses_for_status", "lab_dpo_for_status"
    study = write_lab(tmp_path, module, method)
    out = tmp_path / "out"
    try:
        status, _, err = cli(capsys, "run", study, "--out", out, "--cache-dir", tmp_path / "cache", "--emit-jobs")
        assert status == 0, err
    finally:
        forget_plugin(study.parent, module, method)
    study.parent.rename(tmp_path / "lab_moved_away")  # the plugin no longer imports from anywhere
    assert (out / "plan.json").is_file()

    status, printed, err = cli(capsys, "status", out, "--all")
    assert status == 0, err
    assert "study 'lab_study' in" in printed and "4 runs: 0 done, 0 running, 0 failed, 4 pending" in printed
    assert f"{method} | " in printed

    status, printed, err = cli(capsys, "collect", out)
    assert status == 0, err
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table["method_name"]) == sorted([method, method, "dpo", "dpo"])
    assert set(table["status"]) == {"pending"} and set(table["study"]) == {"lab_study"}
    # the plan is the study's: the run ids of study.yaml, as the study's own planning gives them
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(table["run_id"]) == sorted(run["run_id"] for run in plan["runs"])
    assert plan["study"] == json.loads(json.dumps(yaml.safe_load((out / "study.yaml").read_text())))


def test_a_folder_without_plan_json_is_read_from_its_study_yaml_and_gets_one(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "plain", "noise": [{"model": "symmetric", "rates": [0.2]}],
                                     "methods": [{"name": "dpo"}]}))  # fmt: skip
    out = tmp_path / "out"
    assert cli(capsys, "run", study, "--out", out, "--cache-dir", tmp_path / "cache", "--emit-jobs")[0] == 0
    written = (out / "plan.json").read_text()
    (out / "plan.json").unlink()  # as a folder written before plan.json existed
    status, printed, _ = cli(capsys, "status", out)
    assert status == 0 and "1 runs: 0 done, 0 running, 0 failed, 1 pending" in printed
    assert cli(capsys, "run", study, "--out", out, "--cache-dir", tmp_path / "cache", "--emit-jobs")[0] == 0
    assert (out / "plan.json").read_text() == written
    # a plan.json that no longer matches study.yaml is not trusted
    (out / "study.yaml").write_text((out / "study.yaml").read_text().replace("name: plain", "name: edited"))
    assert cli(capsys, "status", out)[1].startswith("study 'edited'")
