"""Progress of a run's long phases, for the person watching it and for `noisypref status`.

Each long phase of a run (loading, reference log-probs, training, evaluation, generation) runs inside
``phase(name, total, unit)`` and calls ``advance`` as it goes. Three things follow:

- plain log lines, at most one every ``LOG_INTERVAL_S`` seconds (and one at the start and the end of
  the phase): "training: step 12/40 (30 %), loss 0.6812, 41.3 pairs/s, ETA 1m05s". They reach run.log
  like every log record of a run, so a log file never holds a progress bar's carriage returns;
- a tqdm bar besides, when stderr is a terminal;
- the heartbeat file of the run folder (``HEARTBEAT_FILE``, written atomically at most every
  ``HEARTBEAT_INTERVAL_S`` seconds while a ``heartbeat(path)`` block is open): phase, step, total,
  ETA and the time of the update. `noisypref status DIR` reads it for each running run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from noisypref.benchmark.storage import write_json_atomic

logger = logging.getLogger(__name__)

HEARTBEAT_FILE = "heartbeat.json"
LOG_INTERVAL_S = 15.0
HEARTBEAT_INTERVAL_S = 2.0

_heartbeat_path: Path | None = None
_heartbeat_written_at = -math.inf


@contextlib.contextmanager
def heartbeat(path: Path | None) -> Iterator[None]:
    """Write the progress of the phases run in the block to ``path`` (``None``: nowhere)."""
    global _heartbeat_path, _heartbeat_written_at
    previous = _heartbeat_path
    _heartbeat_path, _heartbeat_written_at = (Path(path) if path is not None else None), -math.inf
    try:
        yield
    finally:
        _heartbeat_path = previous


def format_duration(seconds: float | None) -> str:
    """12 s, 3m05s, 2h07m."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Phase:
    """One long phase of a run: counts its steps, logs, draws the bar, beats the heartbeat."""

    def __init__(
        self, name: str, total: int | None, unit: str, initial: int, items_per_unit: int | None, items: str
    ) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.step = initial
        self.initial = initial
        self.items_per_unit = items_per_unit
        self.items = items
        self.values: dict[str, float] = {}
        self.started = time.monotonic()
        self._logged_at = self.started
        show_bar = total is not None and sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")
        self._bar = tqdm(total=total, initial=initial, desc=name, unit=unit, leave=False) if show_bar else None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float | None:
        """Steps per second in this phase (steps resumed from a checkpoint not counted)."""
        done = self.step - self.initial
        return done / self.elapsed_s if done > 0 and self.elapsed_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.rate is None:
            return None
        return max(0, self.total - self.step) / self.rate

    def advance(self, count: int = 1, **values: float) -> None:
        """``count`` more steps done; ``values`` (e.g. loss) shown beside the count from now on."""
        self.step += count
        self.values.update(values)
        if self._bar is not None:
            self._bar.update(count)
            if self.values:
                self._bar.set_postfix({name: f"{value:.4g}" for name, value in self.values.items()}, refresh=False)
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            self._logged_at = now
            logger.info("%s", self.describe())
        _beat(self)

    def describe(self, *, eta: bool = True) -> str:
        """The progress line: step/total, values, throughput, ETA."""
        parts = [f"{self.unit} {self.step}/{self.total}" if self.total is not None else f"{self.step} {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.step / self.total:.0f} %)"
        parts += [f"{name} {value:.4g}" for name, value in self.values.items()]
        if self.rate is not None:
            if self.items_per_unit is not None:
                parts.append(f"{self.rate * self.items_per_unit:.3g} {self.items}/s")
            else:
                parts.append(f"{self.rate:.3g} {self.unit}s/s")
        if eta and self.eta_s is not None:
            parts.append(f"ETA {format_duration(self.eta_s)}")
        return f"{self.name}: " + ", ".join(parts)

    def record(self, **extra: Any) -> dict[str, Any]:
        """The heartbeat file's content."""
        return {
            "phase": self.name,
            "step": self.step,
            "total": self.total,
            "unit": self.unit,
            "values": dict(self.values),
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
            "updated_at": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **extra,
        }

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def phase(
    name: str,
    total: int | None = None,
    unit: str = "step",
    *,
    initial: int = 0,
    items_per_unit: int | None = None,
    items: str = "pairs",
) -> Iterator[Phase]:
    """A long phase of a run; see the module docstring. ``items_per_unit``: e.g. the pairs of one
    training step, to show pairs/s beside the steps."""
    progress = Phase(name, total, unit, initial, items_per_unit, items)
    size = f" ({total} {unit}s)" if total is not None else ""
    logger.info("%s: started%s", name, size)
    _beat(progress, force=True)
    try:
        yield progress
    finally:
        progress.close()
    summary = ", " + progress.describe(eta=False).split(": ", 1)[1] if total is not None else ""
    logger.info("%s: done in %s%s", name, format_duration(progress.elapsed_s), summary)
    _beat(progress, force=True)


def _beat(progress: Phase, *, force: bool = False) -> None:
    global _heartbeat_written_at
    if _heartbeat_path is None:
        return
    now = time.monotonic()
    if not force and now - _heartbeat_written_at < HEARTBEAT_INTERVAL_S:
        return
    _heartbeat_written_at = now
    try:
        write_json_atomic(_heartbeat_path, progress.record())
    except (OSError, ValueError) as error:  # a heartbeat is for watching; the run goes on without it
        logger.debug("heartbeat %s not written: %s", _heartbeat_path, error)


def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """The heartbeat file's content, or ``None`` when there is none (or it cannot be read)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_heartbeat(record: dict[str, Any], now: float | None = None) -> str:
    """One line for `noisypref status`: "training step 12/40, ETA 1m05s, loss 0.68 (3 s ago)"."""
    now = time.time() if now is None else now
    total = record.get("total")
    step = record.get("step", 0)
    text = str(record.get("phase", "?"))
    if total:
        text += f" {record.get('unit', 'step')} {step}/{total}"
    if record.get("eta_s") is not None:
        text += f", ETA {format_duration(record['eta_s'])}"
    values = record.get("values") or {}
    text += "".join(f", {name} {value:.4g}" for name, value in values.items() if isinstance(value, (int, float)))
    age = now - float(record.get("updated_at", now))
    return f"{text} (updated {format_duration(age)} ago)"
