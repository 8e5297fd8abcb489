"""Experiment trackers: each run's training curve while it trains, then its final metrics and resolved
config, sent to TensorBoard (``torch.utils.tensorboard``), Weights & Biases (``wandb``) and/or Trackio.

The run folder stays the record. ``LiveTracking`` wraps a run's execution: it opens one tracker run per
noisypref run (named by the run's label, grouped by study, with the run config), follows the run's
metrics.jsonl from a background thread (every ``POLL_INTERVAL_S``), and sends each step the engine logs
(every ``training.log_every`` steps: loss, reward gap, accuracy, target margin, γ statistics, learning rate,
gradient norm, pairs per second) as it appears, whichever process writes the file (this one, a worker, or
rank 0 of a launch); when the run ends (succeeded or failed) it sends the rest, the final metrics of
result.json and the status. The trackers are optional extras (``pip install "noisypref[track]"``); a
tracker that is not installed is refused before the first run (``missing_tracker_reasons``, the
preflight); one that fails on a run is logged and the study goes on.

- TensorBoard: event files in ``<tensorboard_dir>/<study>/<label>-<run_id>/`` (default tensorboard_dir:
  the study folder's ``tensorboard/``): scalars ``train/<metric>`` per step (flushed as they come),
  ``final/<metric>``, and the config as text.
- W&B: ``wandb.init(project, group=study, name=label, dir=<study folder>)``; the mode is W&B's own
  (``WANDB_MODE=offline`` writes ``<study folder>/wandb/offline-run-*`` for ``wandb sync``). Each run is
  finished when it ends; the W&B service process is started once per study process and stopped by
  ``finish_trackers`` at the end of the study (or at exit).
- Trackio: ``trackio.init(project, name=label-run_id, group=study)``, stored where Trackio stores (local).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.sections import TrackingSettings
from noisypref.benchmark.study.folder import read_json
from noisypref.folder_layout import METRICS_LOG_FILE, RESULT_FILE

logger = logging.getLogger(__name__)

TENSORBOARD_FOLDER = "tensorboard"
POLL_INTERVAL_S = 0.5  # how often metrics.jsonl is read for new steps while a run trains


def run_name(label: str, run_id: str) -> str:
    """A folder-safe tracker run name: the label, then the run id (labels repeat across seeds and noise)."""
    return f"{re.sub(r'[^A-Za-z0-9._=(),-]+', '_', label)}-{run_id}"


class LiveTracking:
    """A context manager around one run's execution that sends it to every tracker of ``settings``
    while it trains (module docstring). ``config`` is the run config; ``run_dir`` the run's folder,
    whose metrics.jsonl is followed and whose result.json gives the final metrics."""

    def __init__(
        self,
        settings: TrackingSettings,
        *,
        study: str,
        run_id: str,
        label: str,
        config: dict[str, Any],
        run_dir: Path,
        out_dir: Path,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self.identity = dict(study=study, run_id=run_id, label=label, out_dir=Path(out_dir), config=config)
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.poll_interval_s = poll_interval_s
        self._trackers: dict[str, Any] = {}
        self._read_offset = 0
        self._last_step = 0
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def __enter__(self) -> LiveTracking:
        for name in self.settings.trackers:
            tracker = self._guard(name, lambda name=name: TRACKERS[name](self.settings, **self.identity))
            if tracker is not None:
                self._trackers[name] = tracker
        if self._trackers:
            # The follower runs in a copy of this context: Trackio keeps its current run in a context var.
            context = contextvars.copy_context()
            self._follower = threading.Thread(
                target=context.run, args=(self._follow,), name=f"trackers-{self.run_id}", daemon=True
            )
            self._follower.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join()
        self._send_new_steps()
        result = read_json(self.run_dir / RESULT_FILE)
        final = {
            name: value for name, value in ((result or {}).get("metrics") or {}).items() if _is_number(value)
        }
        for name, tracker in list(self._trackers.items()):
            self._guard(
                name, lambda tracker=tracker: tracker.finish(final, result is not None, self._last_step)
            )

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self._send_new_steps()

    def _send_new_steps(self) -> None:
        lines = [line for line in self._new_lines() if int(line["step"]) > self._last_step]
        if not lines:
            return
        for name, tracker in list(self._trackers.items()):
            self._guard(name, lambda tracker=tracker: tracker.log(lines))
        self._last_step = int(lines[-1]["step"])

    def _new_lines(self) -> list[dict[str, Any]]:
        """The complete lines metrics.jsonl gained since the last read (from the start if rewritten)."""
        path = self.run_dir / METRICS_LOG_FILE
        try:
            with open(path, "rb") as metrics_file:
                metrics_file.seek(0, 2)
                if metrics_file.tell() < self._read_offset:  # rewritten (a run resumed from a checkpoint)
                    self._read_offset = 0
                metrics_file.seek(self._read_offset)
                data = metrics_file.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._read_offset += len(complete)
        lines = []
        for text in complete.decode("utf-8").splitlines():
            try:
                line = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                logger.warning(
                    "run %s: a line of %s is not JSON; not tracked: %r", self.run_id, path, text[:200]
                )
                continue
            if isinstance(line, dict) and "step" in line:
                lines.append(line)
        return lines

    def _guard(self, name: str, action: Callable[[], Any]) -> Any:
        """Run one tracker's action and return its result; a tracker that fails is logged and dropped for
        the rest of the run (``None``)."""
        try:
            return action()
        except Exception as error:  # noqa: BLE001 (a tracker is for watching; the run goes on without it)
            logger.warning(
                "run %s was not sent to %s (%s: %s)", self.run_id, name, type(error).__name__, error
            )
            self._trackers.pop(name, None)
            return None


def finish_trackers() -> None:
    """Stop what the trackers keep running in this process (the W&B service), flushing what it holds."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalars(line: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{name}": value for name, value in line.items() if name != "step" and _is_number(value)}


class TensorBoardTracker:
    def __init__(
        self,
        settings: TrackingSettings,
        *,
        study: str,
        run_id: str,
        label: str,
        out_dir: Path,
        config: dict[str, Any],
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        root = Path(settings.tensorboard_dir) if settings.tensorboard_dir else out_dir / TENSORBOARD_FOLDER
        self.log_dir = root / study / run_name(label, run_id)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, sort_keys=True)}\n```", 0)
        self.writer.flush()

    def log(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            for name, value in _scalars(line, "train").items():
                self.writer.add_scalar(name, value, int(line["step"]))
        self.writer.flush()  # readable while the run trains

    def finish(self, final: dict[str, float], succeeded: bool, last_step: int) -> None:
        for name, value in _scalars(final, "final").items():
            self.writer.add_scalar(name, value, last_step)
        self.writer.add_text("status", "succeeded" if succeeded else "failed", last_step)
        self.writer.close()


class WandbTracker:
    def __init__(
        self,
        settings: TrackingSettings,
        *,
        study: str,
        run_id: str,
        label: str,
        out_dir: Path,
        config: dict[str, Any],
    ) -> None:
        import wandb

        self.run = wandb.init(
            project=settings.project,
            group=study,
            name=label,
            job_type="run",
            dir=str(out_dir),
            config={"run_id": run_id, **config},
            tags=[run_id],
        )

    def log(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            # commit: written now, not when the next step arrives (W&B holds an explicit step's row otherwise)
            self.run.log(_scalars(line, "train"), step=int(line["step"]), commit=True)

    def finish(self, final: dict[str, float], succeeded: bool, last_step: int) -> None:
        self.run.summary.update(_scalars(final, "final"))
        self.run.finish(exit_code=0 if succeeded else 1)  # the service stays up for the next run


class TrackioTracker:
    def __init__(
        self,
        settings: TrackingSettings,
        *,
        study: str,
        run_id: str,
        label: str,
        out_dir: Path,
        config: dict[str, Any],
    ) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=settings.project, name=run_name(label, run_id), group=study, config=config)

    def log(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            self.trackio.log(_scalars(line, "train"), step=int(line["step"]))

    def finish(self, final: dict[str, float], succeeded: bool, last_step: int) -> None:
        if final:
            self.trackio.log(_scalars(final, "final"), step=last_step)
        self.trackio.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}

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
