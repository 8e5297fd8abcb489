"""Experiment trackers: each run's training curve, final metrics and resolved config, sent to
TensorBoard (``torch.utils.tensorboard``), Weights & Biases (``wandb``) and/or Trackio.

The run folder stays the record: when a run ends (succeeded or failed), ``track_run`` reads its
config.json, metrics.jsonl and result.json and writes one tracker run per noisypref run, named by the
run's label, grouped by study, its steps those of metrics.jsonl. The trackers are optional extras
(``pip install "noisypref[track]"``): one that is not installed is refused before the first run
(``missing_tracker_reasons``, the preflight); one that fails on a run is logged and the study goes on.

- TensorBoard: event files in ``<tensorboard_dir>/<study>/<label>-<run_id>/`` (default
  tensorboard_dir: the study folder's ``tensorboard/``): scalars ``train/<metric>`` per step,
  ``final/<metric>``, and the config as text.
- W&B: ``wandb.init(project, group=study, name=label, dir=<study folder>)``; the mode is W&B's own
  (``WANDB_MODE=offline`` writes ``<study folder>/wandb/offline-run-*`` for ``wandb sync``).
- Trackio: ``trackio.init(project, name=label, group=study)``, stored where Trackio stores (local).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.sections import TrackingSettings
from noisypref.benchmark.study.folder import RESULT_FILE, read_json

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_LOG_FILE = "metrics.jsonl"
TENSORBOARD_FOLDER = "tensorboard"


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """The logged steps of metrics.jsonl (an absent file: none)."""
    path = Path(run_dir) / METRICS_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_name(label: str, run_id: str) -> str:
    """A folder-safe tracker run name: the label, then the run id (labels repeat across seeds and noise)."""
    return f"{re.sub(r'[^A-Za-z0-9._=(),-]+', '_', label)}-{run_id}"


def track_run(
    settings: TrackingSettings, *, study: str, run_id: str, label: str, run_dir: Path, out_dir: Path
) -> None:
    """Send one finished (or failed) run to every tracker of ``settings``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = read_json(run_dir / CONFIG_FILE) or {}
    result = read_json(run_dir / RESULT_FILE)
    record = {
        "curve": read_curve(run_dir),
        "final": {
            name: value
            for name, value in ((result or {}).get("metrics") or {}).items()
            if isinstance(value, (int, float))
        },
        "config": config,
        "succeeded": result is not None,
    }
    for tracker in settings.trackers:
        try:
            WRITERS[tracker](settings, study=study, run_id=run_id, label=label, out_dir=out_dir, **record)
        except Exception as error:  # noqa: BLE001 (a tracker is for watching; the study goes on without it)
            logger.warning("run %s was not sent to %s (%s: %s)", run_id, tracker, type(error).__name__, error)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config to {"training.steps": 200, ...} (lists and nulls as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def write_tensorboard(
    settings: TrackingSettings, *, study: str, run_id: str, label: str, out_dir: Path,
    curve: list[dict[str, float]], final: dict[str, float], config: dict[str, Any], succeeded: bool,
) -> Path:  # fmt: skip
    from torch.utils.tensorboard import SummaryWriter

    root = Path(settings.tensorboard_dir) if settings.tensorboard_dir else out_dir / TENSORBOARD_FOLDER
    log_dir = root / study / run_name(label, run_id)
    last_step = max((int(line["step"]) for line in curve), default=0)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for line in curve:
            for name, value in line.items():
                if name != "step":
                    writer.add_scalar(f"train/{name}", value, int(line["step"]))
        for name, value in final.items():
            writer.add_scalar(f"final/{name}", value, last_step)
        writer.add_text("config", f"```\n{json.dumps(config, indent=2, sort_keys=True)}\n```", 0)
        writer.add_text("status", "succeeded" if succeeded else "failed", last_step)
    return log_dir


def write_wandb(
    settings: TrackingSettings, *, study: str, run_id: str, label: str, out_dir: Path,
    curve: list[dict[str, float]], final: dict[str, float], config: dict[str, Any], succeeded: bool,
) -> None:  # fmt: skip
    import wandb

    run = wandb.init(
        project=settings.project,
        group=study,
        name=label,
        job_type="run",
        dir=str(out_dir),
        config={"run_id": run_id, **config},
        tags=[run_id],
    )
    try:
        for line in curve:
            run.log({f"train/{name}": value for name, value in line.items() if name != "step"}, step=int(line["step"]))
        run.summary.update({f"final/{name}": value for name, value in final.items()})
    finally:
        run.finish(exit_code=0 if succeeded else 1)
        wandb.teardown()  # flushes the run's files (an offline run's .wandb log) before the study goes on


def write_trackio(
    settings: TrackingSettings, *, study: str, run_id: str, label: str, out_dir: Path,
    curve: list[dict[str, float]], final: dict[str, float], config: dict[str, Any], succeeded: bool,
) -> None:  # fmt: skip
    import trackio

    trackio.init(project=settings.project, name=run_name(label, run_id), group=study, config=config)
    try:
        for line in curve:
            trackio.log({f"train/{name}": value for name, value in line.items() if name != "step"}, step=int(line["step"]))
        if final:
            last_step = max((int(line["step"]) for line in curve), default=0)
            trackio.log({f"final/{name}": value for name, value in final.items()}, step=last_step)
    finally:
        trackio.finish()


WRITERS = {"tensorboard": write_tensorboard, "wandb": write_wandb, "trackio": write_trackio}

# The package each tracker imports, and the extra of noisypref that installs it.
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "track"), "wandb": ("wandb", "track"), "trackio": ("trackio", "trackio")}


def missing_tracker_reasons(trackers: tuple[str, ...]) -> dict[str, str]:
    """For each tracker whose package is not installed here, what to install (checked before any run,
    so that a study does not run to the end with one warning per run)."""
    import importlib.util

    reasons = {}
    for tracker in trackers:
        package, extra = TRACKER_PACKAGES[tracker]
        if importlib.util.find_spec(package) is None:
            reasons[tracker] = f"{tracker} needs the {package} package: pip install 'noisypref[{extra}]'"
    return reasons
