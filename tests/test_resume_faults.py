"""Runs that stop part-way and are run again, and runs that cannot train at all, through `noisypref run`
(in this process, on a tiny testbed, with a study's own methods from a plugin module beside the study
file, found without PYTHONPATH):

- a loss that is NaN on every step under nan_policy: skip fails the run with a reason saying so;
- a run stopped after its first checkpoint, whose metrics.jsonl then gets a torn last line, resumes
  from the checkpoint with the torn line dropped (a warning names the file and the line);
- a run whose checkpoint.pt was truncated starts again from step 0, with a warning naming the file;
- either way the resumed run ends exactly where an uninterrupted one does (metrics, metrics log),
  its checkpoint/ is removed once it succeeds unless training.keep_checkpoint, and a saved model's
  files have the mode of every other output (0644).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_study import TINY_TESTBED

from noisypref import plugins
from noisypref.benchmark.engine.checkpoint import CHECKPOINT_FILE
from noisypref.cli import main
from noisypref.methods.base import METHODS

PLUGIN_MODULE = "resume_fault_methods"
NAN_METHOD, STOPPING_METHOD = "nan_dpo_for_resume_faults", "stopping_dpo_for_resume_faults"
STOP_FILE = "stop_at_step"  # beside the plugin: while it exists, the stopping method raises at that step
PLUGIN = textwrap.dedent(
    f"""
    from pathlib import Path

    from noisypref.methods import register
    from noisypref.methods.dpo import DPO

    STOP_FILE = Path(__file__).with_name({STOP_FILE!r})


    @register
    class NanDPO(DPO):
        name = {NAN_METHOD!r}
        source = "tests/test_resume_faults.py"
        summary = "DPO's loss times NaN"

        def pair_loss(self, gap_minus_margin):
            return super().pair_loss(gap_minus_margin) * float("nan")


    @register
    class StoppingDPO(DPO):
        name = {STOPPING_METHOD!r}
        source = "tests/test_resume_faults.py"
        summary = "DPO, stopping at the step named in {STOP_FILE}"

        def pair_loss(self, gap_minus_margin):
            if self.training:
                self.training_steps = getattr(self, "training_steps", 0) + 1
                if STOP_FILE.exists() and self.training_steps == int(STOP_FILE.read_text()):
                    raise RuntimeError(f"stopped by the test at step {{self.training_steps}}")
            return super().pair_loss(gap_minus_margin)
    """
)
STEPS, CHECKPOINT_EVERY = 4, 2
TRAINING = {"batch_size": 8, "max_length": 16, "max_prompt_length": 4, "log_every": 1}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """A lab folder holding the plugin module; its methods are unregistered afterwards."""
    folder = tmp_path_factory.mktemp("lab")
    (folder / f"{PLUGIN_MODULE}.py").write_text(PLUGIN)
    yield folder
    for name in (NAN_METHOD, STOPPING_METHOD):
        METHODS.pop(name, None)
    sys.modules.pop(PLUGIN_MODULE, None)
    if str(folder.resolve()) in sys.path:
        sys.path.remove(str(folder.resolve()))
    plugins._plugin_folders[:] = [path for path in plugins._plugin_folders if path != str(folder.resolve())]


def write_study(folder: Path, name: str, methods: list[dict], training: dict) -> Path:
    study = {
        "name": name,
        "plugins": [PLUGIN_MODULE],
        "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": methods,
        "seeds": [0],
        "training": {**TRAINING, **training},
        "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run(study: Path, out: Path, cache: Path) -> int:
    return main(["run", str(study), "--out", str(out), "--cache-dir", str(cache), "--workers", "1", "--no-report"])


def run_dirs(out: Path) -> dict[str, Path]:
    """Each run folder by its method label."""
    return {
        json.loads((path / "config.json").read_text())["method"]["label"]: path for path in (out / "runs").iterdir()
    }


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# NaN on every step


def test_a_loss_that_is_nan_on_every_step_fails_the_run_saying_so(lab, tmp_path, capsys):
    study = write_study(lab, "all_nan", [{"name": NAN_METHOD}], {"steps": 3, "nan_policy": "skip"})
    assert run(study, tmp_path / "out", tmp_path / "cache") == 1  # some run failed
    printed = capsys.readouterr().out
    (run_dir,) = run_dirs(tmp_path / "out").values()
    assert not (run_dir / "result.json").exists()
    reason = json.loads((run_dir / "failure.json").read_text())["reason"]
    assert f"every one of the 3 training steps of method {NAN_METHOD!r}" in reason
    assert "skipped (training.nan_policy = skip): nothing was trained" in reason and "KeyError" not in reason
    assert reason in printed
    log = (run_dir / "run.log").read_text()
    assert "step 3/3 (100 %), skipped 3" in log  # the progress line says no step was taken


# ---------------------------------------------------------------------------------------------
# Resuming after a stop: a torn metrics log, a truncated checkpoint


@pytest.fixture(scope="module")
def resumed(lab, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The study run straight through, and run again after a first attempt stopped at step 3 (its
    checkpoint of step 2 kept) with the plain run's metrics.jsonl torn and the kept run's checkpoint
    truncated."""
    root = tmp_path_factory.mktemp("resume")
    methods = [
        {"label": "plain", "name": STOPPING_METHOD},
        {"label": "kept", "name": STOPPING_METHOD, "training": {"keep_checkpoint": True, "save_model": True}},
    ]
    study = write_study(lab, "resume_faults", methods, {"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY})
    cache = root / "cache"
    assert run(study, root / "straight", cache) == 0

    out = root / "out"
    (lab / STOP_FILE).write_text("3")
    try:
        assert run(study, out, cache) == 1
    finally:
        (lab / STOP_FILE).unlink()
    stopped = run_dirs(out)
    before = {}
    for label, run_dir in stopped.items():
        assert "stopped by the test at step 3" in json.loads((run_dir / "failure.json").read_text())["reason"]
        assert logged_steps(run_dir) == [1, 2]
        before[label] = (run_dir / "checkpoint" / CHECKPOINT_FILE).stat().st_size
    with open(stopped["plain"] / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write('{"step": 999, "loss": 0.1, "rew')  # the torn tail of a killed write
    checkpoint = stopped["kept"] / "checkpoint" / CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[: before["kept"] // 2])

    status = run(study, out, cache)
    return {"status": status, "straight": run_dirs(root / "straight"), "resumed": run_dirs(out)}


def test_a_torn_metrics_log_is_repaired_on_resume_and_the_run_ends_as_an_uninterrupted_one(resumed):
    assert resumed["status"] == 0
    run_dir = resumed["resumed"]["plain"]
    log = (run_dir / "run.log").read_text()
    assert f"{run_dir / 'metrics.jsonl'}, line 3 is not a complete metrics record" in log
    assert "resuming from the checkpoint of step 2" in log
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    straight = json.loads((resumed["straight"]["plain"] / "result.json").read_text())
    assert json.loads((run_dir / "result.json").read_text())["metrics"] == straight["metrics"]


def test_a_truncated_checkpoint_is_named_and_the_run_starts_again_from_step_0(resumed):
    run_dir = resumed["resumed"]["kept"]
    log = (run_dir / "run.log").read_text()
    checkpoint = run_dir / "checkpoint" / CHECKPOINT_FILE
    assert f"the checkpoint {checkpoint} cannot be read" in log and "starts again from step 0" in log
    assert "resuming from the checkpoint" not in log
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    straight = json.loads((resumed["straight"]["kept"] / "result.json").read_text())
    assert json.loads((run_dir / "result.json").read_text())["metrics"] == straight["metrics"]


def test_the_checkpoint_is_removed_when_a_run_succeeds_unless_kept(resumed):
    for runs in (resumed["straight"], resumed["resumed"]):
        assert not (runs["plain"] / "checkpoint").exists()
        assert (runs["kept"] / "checkpoint" / CHECKPOINT_FILE).is_file()  # training.keep_checkpoint: true


def test_a_saved_model_has_the_mode_of_every_other_output(resumed):
    run_dir = resumed["resumed"]["kept"]
    modes = {path.name: path.stat().st_mode & 0o777 for path in (run_dir / "model").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
    assert (run_dir / "result.json").stat().st_mode & 0o777 == 0o644


def test_a_resumed_run_at_its_last_step_keeps_its_final_metrics(lab, tmp_path):
    # killed after the last checkpoint but before result.json (during evaluation): nothing is left to
    # train, and the final loss comes from the metrics logged before the stop
    study = write_study(lab, "last_step", [{"name": STOPPING_METHOD, "training": {"keep_checkpoint": True}}],
                        {"steps": STEPS, "checkpoint_every": STEPS})  # fmt: skip
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert run(study, out, cache) == 0
    (run_dir,) = run_dirs(out).values()
    finished = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").unlink()
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    assert run(study, out, cache) == 0
    assert "resuming from the checkpoint of step 4" in (run_dir / "run.log").read_text()
    assert json.loads((run_dir / "result.json").read_text())["metrics"] == finished["metrics"]
