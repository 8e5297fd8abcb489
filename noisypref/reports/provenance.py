"""Where a report's numbers came from: versions, git revision, machine, total run time."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from noisypref import __version__
from noisypref.reports.study import StudyResults, succeeded_runs

logger = logging.getLogger(__name__)

LIBRARIES = ("numpy", "pandas", "scipy", "matplotlib", "pyarrow", "torch", "transformers", "datasets")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def library_version(name: str) -> str:
    """The installed version from package metadata: reading it never imports the library."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def git_revision(folder: Path = PACKAGE_ROOT) -> str:
    """``git rev-parse HEAD`` of the source tree, marked when it has uncommitted changes."""
    try:
        revision = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        changes = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "not available (no git or not a git checkout)"
    return f"{revision} (with uncommitted changes)" if changes else revision


def format_duration(seconds: float) -> str:
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d} ({seconds:.1f} s)"


def provenance(results: pd.DataFrame) -> list[tuple[str, str]]:
    entries = [("noisypref", __version__), ("Python", platform.python_version())]
    entries += [(name, library_version(name)) for name in LIBRARIES]
    entries.append(("git revision of noisypref", git_revision()))
    entries.append(
        ("report machine", f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU(s)")
    )
    if "wall_time_s" in results and results["wall_time_s"].notna().any():
        wall_times = pd.to_numeric(results["wall_time_s"], errors="coerce").dropna()
        entries.append(
            (
                "total wall time of the runs",
                f"{format_duration(float(wall_times.sum()))} over {len(wall_times)} runs",
            )
        )
    else:
        entries.append(("total wall time of the runs", "not recorded"))
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries.append(("report written", created))
    return entries


def run_provenance(study: StudyResults) -> list[tuple[str, str]]:
    """Library versions and devices the succeeded runs recorded in their result.json."""
    run_ids = list(succeeded_runs(study.results)["run_id"])
    versions: dict[str, Counter] = {}
    devices: Counter = Counter()
    read = 0
    for run_id in run_ids:
        result = study.run_result(run_id)
        if result is None:
            continue
        read += 1
        for name, value in (result.get("versions") or {}).items():
            versions.setdefault(str(name), Counter())[str(value)] += 1
        if result.get("device") is not None:
            devices[str(result["device"])] += 1
    if not read:
        return [("runs", "no result.json could be read: the runs' versions and devices are unknown")]
    entries = [("runs: result.json read", f"{read} of {len(run_ids)} succeeded runs")]
    if devices:
        entries.append(("runs: device", _counted(devices)))
    entries += [(f"runs: {name}", _counted(counter)) for name, counter in sorted(versions.items())]
    return entries


def _counted(counter: Counter) -> str:
    if len(counter) == 1:
        return next(iter(counter))
    return ", ".join(f"{value} ({count} runs)" for value, count in counter.most_common())
