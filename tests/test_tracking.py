"""Experiment trackers (issues 18 and 26): TensorBoard and W&B (offline) get each run's training curve while
it trains, then its final metrics and config; read back from what they wrote (the event file, the offline
run's .wandb log), mid-training too."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from test_study import TINY_TESTBED  # the engine's tiny testbed

from noisypref.benchmark.config.sections import TrackingSettings
from noisypref.benchmark.storage import write_json_atomic
from noisypref.benchmark.study import parse_study, plan_runs, run_study
from noisypref.benchmark.study.tracking import run_name
from noisypref.cli import main
from noisypref.folder_layout import METRICS_LOG_FILE

STUDY = {
    "name": "tracked",
    "noise": [{"model": "symmetric", "rates": [0.2]}],
    "methods": [{"name": "dpo"}, {"label": "gamma", "name": "gamma_dpo"}],
}


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """The logged steps of a run's metrics.jsonl, read whole (an absent file: none)."""
    path = run_dir / METRICS_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def curve_of(run_config: dict) -> list[dict[str, float]]:
    """The training curve the fake executor logs: known values, different per method."""
    offset = 0.1 if run_config["method"]["name"] == "gamma_dpo" else 0.0
    return [{"step": step, "loss": 0.7 - 0.1 * step + offset, "train_accuracy": 0.5 + 0.05 * step} for step in (1, 2, 3)]


def final_of(run_config: dict) -> dict[str, float]:
    return {"heldout_accuracy": 0.625 if run_config["method"]["name"] == "dpo" else 0.75, "final_loss": 0.4}


def tracked_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """Writes what the engine writes, with the values above."""
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / "config.json", run_config)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in curve_of(run_config)))
    result = {"run_id": "x", "status": "succeeded", "metrics": final_of(run_config), "config": run_config}
    write_json_atomic(run_dir / "result.json", result)
    return result


def test_tensorboard_gets_each_runs_curve_final_metrics_and_config(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard (the track extra) is missing"
    )
    study = parse_study({**STUDY, "tracking": {"trackers": ["tensorboard"]}})
    summary = run_study(study, tmp_path / "out", executor=tracked_execute, progress=False, collect=False)
    assert summary.all_succeeded
    for run in plan_runs(study):
        log_dir = tmp_path / "out" / "tensorboard" / "tracked" / run_name(run.describe(), run.run_id)
        events = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
        events.Reload()
        loss = events.Scalars("train/loss")  # float32 in the event file
        assert [event.step for event in loss] == [line["step"] for line in curve_of(run.config)]
        assert [event.value for event in loss] == pytest.approx([line["loss"] for line in curve_of(run.config)])
        final = events.Scalars("final/heldout_accuracy")
        assert [(event.step, event.value) for event in final] == [(3, final_of(run.config)["heldout_accuracy"])]
        config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert json.loads(config_text.strip("`\n")) == run.config


def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb): LevelDB log blocks of 32 KiB after a 7-byte
    header (":W&B", magic, version), each chunk a 7-byte header (crc, length, type) then its bytes."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        if position + 7 + length > len(data):  # a record still being written (a run in progress)
            break
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        else:  # first, middle
            pending += chunk


def test_wandb_offline_gets_one_run_per_noisypref_run_grouped_by_study(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb", reason="wandb (the track extra) is missing")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{__name__}:tracked_execute")
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(STUDY))
    out = tmp_path / "out"
    argv = ["run", str(study_file), "--out", str(out), "--workers", "1", "--no-report", "--track", "wandb"]
    assert main(argv) == 0
    runs = {run.describe(): run for run in plan_runs(parse_study(STUDY))}
    logs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2
    seen = set()
    for log in logs:
        records = list(_wandb_records(log))
        run_record = next(record.run for record in records if record.WhichOneof("record_type") == "run")
        assert (run_record.project, run_record.run_group) == ("noisypref", "tracked")
        run = runs[run_record.display_name]
        seen.add(run.run_id)
        config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
        assert config["run_id"] == run.run_id and config["method"] == run.config["method"]
        history = [
            {item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json) for item in record.history.item}
            for record in records
            if record.WhichOneof("record_type") == "history"
        ]
        assert [(line["_step"], line["train/loss"]) for line in history] == [
            (line["step"], line["loss"]) for line in curve_of(run.config)
        ]
        summary = {
            item.key: json.loads(item.value_json)
            for record in records
            if record.WhichOneof("record_type") == "summary"
            for item in record.summary.update
            if item.key.startswith("final/")
        }
        assert summary["final/heldout_accuracy"] == final_of(run.config)["heldout_accuracy"]
        exits = [record.exit.exit_code for record in records if record.WhichOneof("record_type") == "exit"]
        assert exits == [0]
    assert seen == {run.run_id for run in runs.values()}


def test_tracking_is_checked_and_is_not_part_of_the_study_folder():
    with pytest.raises(ValueError, match="tracking.trackers"):
        parse_study({**STUDY, "tracking": {"trackers": ["mlflow"]}})
    tracked = parse_study({**STUDY, "tracking": {"trackers": ["tensorboard", "wandb"]}})
    assert tracked.tracking == TrackingSettings(trackers=("tensorboard", "wandb"))
    assert tracked.to_dict() == parse_study(STUDY).to_dict()  # --track never makes "another study"
    assert [run.run_id for run in plan_runs(tracked)] == [run.run_id for run in plan_runs(parse_study(STUDY))]


def test_trackio_offline_gets_the_curve_final_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    pytest.importorskip("trackio", reason="trackio (the trackio extra) is not installed")
    import sqlite3

    import trackio.sqlite_storage
    import trackio.utils

    for module in (trackio.utils, trackio.sqlite_storage):
        monkeypatch.setattr(module, "TRACKIO_DIR", tmp_path / "trackio", raising=False)
    study = parse_study({**STUDY, "tracking": {"trackers": ["trackio"], "project": "noisypref-test"}})
    assert run_study(study, tmp_path / "out", executor=tracked_execute, progress=False, collect=False).all_succeeded
    database = trackio.sqlite_storage.SQLiteStorage.get_project_db_path("noisypref-test")
    assert Path(database).parent == tmp_path / "trackio"
    with sqlite3.connect(database) as connection:
        metrics = connection.execute("select run_name, step, metrics from metrics order by id").fetchall()
        configs = dict(connection.execute("select run_name, config from configs").fetchall())
    for run in plan_runs(study):
        name = run_name(run.describe(), run.run_id)
        logged = [(step, json.loads(values)) for run_name_, step, values in metrics if run_name_ == name]
        curve = [(step, values["train/loss"]) for step, values in logged if "train/loss" in values]
        assert curve == [(line["step"], line["loss"]) for line in curve_of(run.config)]
        final = [values for _, values in logged if "final/heldout_accuracy" in values]
        assert final[0]["final/heldout_accuracy"] == final_of(run.config)["heldout_accuracy"]
        config = json.loads(configs[name])
        assert config["method"] == run.config["method"] and config["_Group"] == "tracked"


# --- live curves (issue 26): what the trackers hold while a run trains ---------------------------------

LIVE_STUDY = {
    "name": "live",
    "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
    "noise": [{"model": "symmetric", "rates": [0.2]}],
    "methods": [{"name": "dpo"}, {"label": "gamma", "name": "gamma_dpo", "hyperparameters": {"tau": 1.0}}],
    "training": {"steps": 6, "batch_size": 8, "max_length": 16, "max_prompt_length": 4, "log_every": 2},
    "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
}
PAUSE_AT_STEP = 4  # of 6: the run is paused here while the tracker files are read
LIVE_METRICS = ("loss", "reward_gap_mean", "pairs_per_second")


def both_steps(steps: dict[str, list[int]]) -> dict[str, list[int]]:
    """The scalars of an event file once its loss curve has the steps logged before the pause (else {})."""
    return steps if steps.get("train/loss") == [2, 4] else {}


def wait_for(read, timeout_s: float = 60.0):
    """Poll ``read()`` until it returns something truthy (the trackers write from another thread/process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def tensorboard_steps(log_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing import event_accumulator

    if not log_dir.is_dir():
        return {}
    events = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def history_line(record) -> dict:
    return {
        item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
        for item in record.history.item
    }


def wandb_history(out: Path, run_id: str) -> list[dict]:
    for log in (out / "wandb").glob("offline-run-*/run-*.wandb"):
        records = list(_wandb_records(log))
        runs = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        if runs and run_id in runs[0].tags:
            kinds = [record.WhichOneof("record_type") for record in records]
            return [history_line(record) for record, kind in zip(records, kinds) if kind == "history"]
    return []


def test_curves_reach_tensorboard_and_wandb_while_the_real_engine_trains(tmp_path, monkeypatch):
    """The real engine on the tiny testbed, two runs, both trackers: a callback pauses each run after step 4
    (of 6, logged every 2) and reads the event file and the offline W&B log; one W&B service for the study."""
    pytest.importorskip("tensorboard", reason="tensorboard (the track extra) is missing")
    pytest.importorskip("wandb", reason="wandb (the track extra) is missing")
    import wandb.sdk.lib.service.service_connection as service_connection

    import noisypref.benchmark.run.execute as execute

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    services = []
    connect = service_connection.connect_to_service
    def counted_connect(*args, **kwargs):
        services.append(1)
        return connect(*args, **kwargs)

    monkeypatch.setattr(service_connection, "connect_to_service", counted_connect)
    study = parse_study({**LIVE_STUDY, "tracking": {"trackers": ["tensorboard", "wandb"]}})
    runs = {run.run_id: run for run in plan_runs(study)}
    out = tmp_path / "out"
    seen_mid_run: dict[str, dict] = {}
    engine_train = execute.train

    def train_and_pause(*args, **kwargs):
        run_dir = Path(kwargs["metrics_path"]).parent
        run = runs[run_dir.name]

        def pause(record: dict) -> None:
            if record["step"] != PAUSE_AT_STEP:
                return
            log_dir = out / "tensorboard" / "live" / run_name(run.describe(), run.run_id)
            board = wait_for(lambda: both_steps(tensorboard_steps(log_dir)))
            history = wait_for(lambda: len(logged := wandb_history(out, run.run_id)) >= 2 and logged)
            finished = (run_dir / "result.json").exists()
            seen_mid_run[run.run_id] = {"tensorboard": board, "wandb": history, "result": finished}

        return engine_train(*args, **kwargs, callbacks=[pause])

    monkeypatch.setattr(execute, "train", train_and_pause)
    summary = run_study(study, out, progress=False, collect=False)
    assert summary.all_succeeded, summary.report()

    assert set(seen_mid_run) == set(runs)
    for run_id, seen in seen_mid_run.items():
        assert not seen["result"]  # read while the run was still training
        for metric in LIVE_METRICS:
            assert seen["tensorboard"][f"train/{metric}"] == [2, 4], metric
        assert not any(tag.startswith("final/") for tag in seen["tensorboard"])
        assert [line["_step"] for line in seen["wandb"]] == [2, 4]
        assert all(f"train/{metric}" in line for line in seen["wandb"] for metric in LIVE_METRICS)
        if runs[run_id].config["method"]["name"] == "gamma_dpo":
            assert "train/gamma_mean" in seen["tensorboard"] and "train/gamma_std" in seen["wandb"][0]
        # after the run: the whole curve (steps 2, 4, 6), equal to metrics.jsonl, and the final metrics
        curve = read_curve(out / "runs" / run_id)
        log_dir = out / "tensorboard" / "live" / run_name(runs[run_id].describe(), run_id)
        assert tensorboard_steps(log_dir)["train/loss"] == [line["step"] for line in curve] == [2, 4, 6]
        assert "final/heldout_accuracy" in tensorboard_steps(log_dir)
        history = wandb_history(out, run_id)
        assert [(line["_step"], line["train/loss"]) for line in history] == [
            (line["step"], line["loss"]) for line in curve
        ]
    assert len(services) == 1  # one W&B service for the study's two runs
