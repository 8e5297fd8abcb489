"""A study's own method from a plugin module, and mid-run checkpoints that survive a SIGKILL.

Both run `noisypref run` in real subprocesses: the plugin is a file written by the test (on the
subprocess's PYTHONPATH, imported by the parent and by every spawned worker), and the kill is a real
SIGKILL of the process group after the first checkpoint was written.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_study import TINY_TESTBED

PLUGIN = textwrap.dedent(
    """
    import time

    from noisypref.methods import register
    from noisypref.methods.dpo import DPO


    @register
    class PausingDPO(DPO):
        '''DPO's loss, with a pause per batch so that a test can interrupt training.'''

        name = "pausing_dpo"
        source = "tests/test_plugins_and_resume.py"
        summary = "DPO, slowly"

        def pair_loss(self, gap_minus_margin):
            time.sleep(0.02)
            return super().pair_loss(gap_minus_margin)
    """
)


def study(name: str, methods: list[dict], training: dict) -> dict:
    return {
        "name": name,
        "plugins": ["lab_plugin"],
        "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": methods,
        "seeds": [0],
        "training": {"batch_size": 8, "max_length": 16, "max_prompt_length": 4, **training},
        "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
    }


def noisypref(tmp_path: Path, *args: str, **popen: object) -> subprocess.Popen:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "lab_plugin.py").write_text(PLUGIN)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "noisypref", "run", *args, "--cache-dir", str(tmp_path / "cache"), "--no-report"]
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finished(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def write(tmp_path: Path, name: str, content: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_a_plugin_method_runs_in_spawned_workers_and_equals_the_loss_it_reuses(tmp_path):
    methods = [{"name": "pausing_dpo", "hyperparameters": {"beta": 0.1}}, {"name": "dpo", "hyperparameters": {"beta": 0.1}}]
    path = write(tmp_path, "plugin", study("plugin", methods, {"steps": 3}))
    finished(noisypref(tmp_path, str(path), "--out", str(tmp_path / "out"), "--workers", "2"))
    frame = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("method_label")
    assert set(frame["status"]) == {"succeeded"}
    # the plugin's loss is DPO's: same flips, same batches, same numbers
    for metric in ("final_loss", "heldout_accuracy", "train_accuracy"):
        assert frame.loc["pausing_dpo", metric] == frame.loc["dpo", metric]


def test_a_run_killed_after_a_checkpoint_resumes_from_it_and_ends_exactly_where_an_uninterrupted_run_does(tmp_path):
    training = {"steps": 40, "checkpoint_every": 5, "log_every": 1}
    path = write(tmp_path, "resume", study("resume", [{"name": "pausing_dpo"}], training))
    finished(noisypref(tmp_path, str(path), "--out", str(tmp_path / "straight"), "--workers", "1"))

    interrupted = tmp_path / "interrupted"
    process = noisypref(tmp_path, str(path), "--out", str(interrupted), "--workers", "1", start_new_session=True)
    deadline = time.monotonic() + 300
    checkpoints = []
    while not checkpoints and time.monotonic() < deadline and process.poll() is None:
        checkpoints = list(interrupted.glob("runs/*/checkpoint/checkpoint.pt"))
        time.sleep(0.01)
    assert checkpoints, "no checkpoint was written before the run ended"
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    (run_dir,) = (interrupted / "runs").iterdir()
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    steps_logged_before_kill = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps_logged_before_kill) < training["steps"]

    output = finished(noisypref(tmp_path, str(path), "--out", str(interrupted), "--workers", "1"))
    assert "1 succeeded" in output or "succeeded" in output
    resumed = json.loads((run_dir / "result.json").read_text())
    straight = json.loads(next((tmp_path / "straight" / "runs").glob("*/result.json")).read_text())
    assert resumed["run_id"] == straight["run_id"]
    assert resumed["metrics"] == straight["metrics"]  # exactly, on the CPU
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == list(range(1, training["steps"] + 1))


@pytest.mark.parametrize("bad", ["no_such_module_xyz", "1bad name"])
def test_a_plugin_that_does_not_import_is_refused_naming_it(tmp_path, bad):
    path = write(tmp_path, "bad", {**study("bad", [{"name": "dpo"}], {"steps": 1}), "plugins": [bad]})
    process = noisypref(tmp_path, str(path), "--out", str(tmp_path / "out"))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert f"plugins[0] = {bad!r}" in output
    assert not (tmp_path / "out").exists()
