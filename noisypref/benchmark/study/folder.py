"""A study's output folder, its run folders, and the lock that claims a run.

What the folder holds, and the name of each file, is in ``noisypref.folder_layout``.

`noisypref status` reads a folder through this module, and must answer at once: reading plan.json and
the run folders needs neither torch nor the study schema, so what writes a folder for a study
(``prepare``) or reads its study.yaml imports the schema and the grid where it uses them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from noisypref.benchmark.storage import file_lock, is_locked, write_text_atomic
from noisypref.benchmark.study.plan import PlannedRun
from noisypref.benchmark.study.yaml_io import read_yaml
from noisypref.folder_layout import (
    CHECKPOINT_FOLDER,
    FAILURE_FILE,
    LOCK_FILE,
    METRICS_FILE,
    METRICS_LOG_FILE,
    PLAN_FILE,
    RESULT_FILE,
    RESULTS_TABLE,
    RUNS_FOLDER,
    STUDY_FILE,
    SUPERSEDED_FOLDER,
)

if TYPE_CHECKING:
    from noisypref.benchmark.study.schema import Study

logger = logging.getLogger(__name__)

DONE, RUNNING, FAILED, PENDING = "done", "running", "failed", "pending"
STATES = (DONE, RUNNING, FAILED, PENDING)


class StudyFolderError(ValueError):
    """The output folder cannot be used for this study (it holds another one, or cannot be written)."""


class OutputNotWritable(StudyFolderError):
    """A run's files could not be written (a full disk, a read-only folder): the study stops."""


@dataclass(frozen=True)
class RunStatus:
    run: PlannedRun
    state: str  # one of STATES
    reason: str | None = None  # why it failed, for FAILED


@dataclass(frozen=True)
class StudyFolder:
    root: Path

    @property
    def study_file(self) -> Path:
        return self.root / STUDY_FILE

    @property
    def results_table(self) -> Path:
        return self.root / RESULTS_TABLE

    @property
    def metrics_file(self) -> Path:
        return self.root / METRICS_FILE

    def run_dir(self, run_id: str) -> Path:
        return self.root / RUNS_FOLDER / run_id

    @property
    def plan_file(self) -> Path:
        return self.root / PLAN_FILE

    def prepare(self, study: Study, *, force: bool = False) -> None:
        """Create the folder and write study.yaml and plan.json; refuse a folder holding a different
        study unless `force`."""
        resolved = study.to_dict()
        if self.study_file.is_file():
            existing = _resolved_again(read_yaml(self.study_file))
            if existing == resolved:
                if self._read_plan() is None:  # a folder written before plan.json existed
                    self._write_plan(study)
                return
            if force:
                self._supersede(study)
            else:
                differing = _differing_sections(existing, resolved)
                raise StudyFolderError(
                    f"{self.root} already holds a different study ({self.study_file}: name "
                    f"{existing.get('name') if isinstance(existing, dict) else None!r}; differing: "
                    f"{', '.join(differing)}). Choose another --out folder, or pass --force to replace "
                    "its study.yaml (finished runs whose config is unchanged are kept and reused)."
                )
        try:
            (self.root / RUNS_FOLDER).mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.study_file, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
            self._write_plan(study)
        except OSError as error:
            raise StudyFolderError(
                f"the output folder {self.root} cannot be written ({error.filename}: {error.strerror})"
            ) from None

    def _write_plan(self, study: Study) -> None:
        """plan.json: the study.yaml it belongs to (as read back) and every planned run."""
        from noisypref.benchmark.study.grid import plan_runs

        plan = {
            "study": _plain(read_yaml(self.study_file)),
            "runs": [dataclasses.asdict(run) for run in plan_runs(study)],
        }
        write_text_atomic(self.plan_file, json.dumps(plan, indent=1, sort_keys=True) + "\n")

    def _read_plan(self) -> tuple[str, list[PlannedRun]] | None:
        """(study name, runs) of plan.json when it belongs to the study.yaml in place; else None."""
        plan = read_json(self.plan_file)
        if plan is None or not self.study_file.is_file():
            return None
        study = plan.get("study")
        if study != _plain(read_yaml(self.study_file)) or not isinstance(study, dict):
            return None
        try:
            return str(study["name"]), [PlannedRun(**run) for run in plan["runs"]]
        except (KeyError, TypeError):  # written by a version whose runs had other fields
            return None

    def planned_runs(self) -> tuple[str, list[PlannedRun]]:
        """(study name, every run) of the study in the folder: from plan.json, which needs neither the
        study's plugins nor its data files; from study.yaml where plan.json is absent or stale."""
        plan = self._read_plan()
        if plan is not None:
            return plan
        from noisypref.benchmark.study.grid import plan_runs

        study = self.load_study()
        return study.name, plan_runs(study)

    def _supersede(self, study: Study) -> None:
        """Move what belongs to the study in the folder and not to `study` -- its study.yaml, its
        results.parquet and the run folders `study` does not have -- into superseded/<UTC time>/.
        Nothing is deleted; a run folder whose lock is held (a run computing now) stays."""
        from noisypref.benchmark.study.grid import plan_runs

        kept = {run.run_id for run in plan_runs(study)}
        runs_dir = self.root / RUNS_FOLDER
        entries = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
        old_runs = [entry for entry in entries if entry.is_dir() and entry.name not in kept]
        busy = [entry for entry in old_runs if lock_is_held(entry)]
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        target = self.root / SUPERSEDED_FOLDER / stamp
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.root / SUPERSEDED_FOLDER / f"{stamp}-{suffix}"
        (target / RUNS_FOLDER).mkdir(parents=True)
        shutil.copy2(self.study_file, target / STUDY_FILE)
        for table in (self.results_table, self.metrics_file, self.plan_file):
            if table.is_file():
                table.rename(target / table.name)
        for entry in old_runs:
            if entry not in busy:
                entry.rename(target / RUNS_FOLDER / entry.name)
        logger.warning(
            "--force: %s held another study; its study.yaml and %d run folder(s) the new study does not "
            "have were moved into %s (nothing deleted); %d finished run(s) the new study shares are kept%s",
            self.root, len(old_runs) - len(busy), target, len(entries) - len(old_runs),
            f"; {len(busy)} run folder(s) being computed now were left in place" if busy else "",
        )  # fmt: skip

    def load_study(self) -> Study:
        from noisypref.benchmark.study.schema import load_study

        if not self.study_file.is_file():
            raise FileNotFoundError(f"{self.root} is not a study folder: it has no {STUDY_FILE}")
        return load_study(self.study_file, check_files=False)  # data files matter only when running

    def read_result(self, run_id: str) -> dict[str, Any] | None:
        return read_json(self.run_dir(run_id) / RESULT_FILE)

    def read_failure(self, run_id: str) -> dict[str, Any] | None:
        return read_json(self.run_dir(run_id) / FAILURE_FILE)

    def is_done(self, run_id: str) -> bool:
        """Whether the run's result.json exists and reads; a torn or unreadable one is not done (rerun)."""
        return self.read_result(run_id) is not None

    def status(self, run: PlannedRun) -> RunStatus:
        run_dir = self.run_dir(run.run_id)
        if self.is_done(run.run_id):
            return RunStatus(run, DONE)
        if lock_is_held(run_dir):
            return RunStatus(run, RUNNING)
        failure = self.read_failure(run.run_id)
        if failure is not None:
            return RunStatus(run, FAILED, str(failure.get("reason", "")))
        return RunStatus(run, PENDING)


def _resolved_again(existing: Any) -> Any:
    """A study.yaml read back through the loader, so that one written before a section was added
    (e.g. ``report``) compares equal to the same study resolved today."""
    from noisypref.benchmark.config.dataset import DatasetSettings
    from noisypref.benchmark.study.schema import parse_study

    try:
        resolved = parse_study(existing, check_files=False).to_dict()
    except (ValueError, TypeError):
        return existing
    for dataset in resolved["datasets"]:  # 0.1 labelled a file dataset by its path; 0.2 by its file stem
        if dataset["kind"] == "file" and dataset["label"] == dataset["source"]:
            dataset["label"] = DatasetSettings(kind="file", source=dataset["source"]).display_label
    return resolved


def _plain(value: Any) -> Any:
    """YAML data as JSON data (what plan.json can hold and compare)."""
    return json.loads(json.dumps(value))


def _differing_sections(existing: Any, resolved: dict[str, Any]) -> list[str]:
    if not isinstance(existing, dict):
        return ["(the whole file)"]
    keys = list(resolved) + [key for key in existing if key not in resolved]
    return [key for key in keys if existing.get(key) != resolved.get(key)]


# ---------------------------------------------------------------------------------------------
# Claiming a run


@contextmanager
def claim_run(run_dir: Path, *, wait: bool) -> Iterator[bool]:
    """Hold the run's exclusive lock for the block; yields False, holding nothing, when another
    process holds it and `wait` is False. The OS releases the lock when its holder dies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / LOCK_FILE, wait=wait) as claimed:
        yield claimed


def lock_is_held(run_dir: Path) -> bool:
    """Whether some process is computing the run now."""
    return is_locked(run_dir / LOCK_FILE)


def clear_run_dir(run_dir: Path) -> None:
    """Remove what an earlier, unfinished or failed attempt left: everything but the lock and, where
    the attempt left a mid-run checkpoint (training.checkpoint_every), the checkpoint and the metrics
    logged up to it, from which the engine resumes."""
    keep = {LOCK_FILE}
    if (run_dir / CHECKPOINT_FOLDER).is_dir():
        keep |= {CHECKPOINT_FOLDER, METRICS_LOG_FILE}
    for entry in run_dir.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ---------------------------------------------------------------------------------------------
# Files


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when the file is absent, or torn or unreadable (logged, naming it)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as error:
        logger.warning("%s is unreadable (%s): its run counts as not done and is run again", path, error)
        return None
    if not isinstance(value, dict):
        logger.warning("%s holds no JSON object: its run counts as not done and is run again", path)
        return None
    return value
