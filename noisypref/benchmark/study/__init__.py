"""Studies: grids of runs described by a YAML file, run resumably into one folder (docs/studies.md).

    study = load_study("configs/default.yaml")      # validated; StudyError lists every problem
    runs = plan_runs(study)                          # distinct runs, each a contract run config
    summary = run_study(study, "runs/default")       # resumable; failures recorded, study goes on
    collect_results(StudyFolder(Path("runs/default")))   # runs/default/results.parquet

Modules: `schema` (the YAML schema and its validation), `grid` (expansion into runs, run ids), `plan`
(a planned run), `folder` (the output folder, run locks), `scheduler` (running), `results` (the
parquet store).

The names below are imported from their modules on first use, so that importing one module of this
package (`noisypref status` imports ``folder``) does not import the engine and torch with it.
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from noisypref.benchmark.config.run_config import run_id
    from noisypref.benchmark.study.folder import StudyFolder, StudyFolderError
    from noisypref.benchmark.study.grid import grid_point_count, plan_runs
    from noisypref.benchmark.study.plan import PlannedRun
    from noisypref.benchmark.study.results import collect_results, results_frame
    from noisypref.benchmark.study.scheduler import DEFAULT_EXECUTOR, StudySummary, run_study
    from noisypref.benchmark.study.schema import Study, load_study, parse_study
    from noisypref.settings import StudyError

DEFAULT_STUDY_RESOURCE = "default.yaml"

_EXPORTS = {  # name -> the module that defines it
    "DEFAULT_EXECUTOR": "noisypref.benchmark.study.scheduler",
    "PlannedRun": "noisypref.benchmark.study.plan",
    "Study": "noisypref.benchmark.study.schema",
    "StudyError": "noisypref.settings",
    "StudyFolder": "noisypref.benchmark.study.folder",
    "StudyFolderError": "noisypref.benchmark.study.folder",
    "StudySummary": "noisypref.benchmark.study.scheduler",
    "collect_results": "noisypref.benchmark.study.results",
    "grid_point_count": "noisypref.benchmark.study.grid",
    "load_study": "noisypref.benchmark.study.schema",
    "parse_study": "noisypref.benchmark.study.schema",
    "plan_runs": "noisypref.benchmark.study.grid",
    "results_frame": "noisypref.benchmark.study.results",
    "run_id": "noisypref.benchmark.config.run_config",
    "run_study": "noisypref.benchmark.study.scheduler",
}


def __getattr__(name: str) -> Any:
    """A name of ``_EXPORTS``, imported from its module when first asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def default_study_path() -> Path:
    """The embedded default study (DESIGN §6), shipped in the package; configs/default.yaml is a copy."""
    return Path(str(resources.files(__package__).joinpath(DEFAULT_STUDY_RESOURCE)))


__all__ = [
    "DEFAULT_EXECUTOR",
    "PlannedRun",
    "Study",
    "StudyError",
    "StudyFolder",
    "StudyFolderError",
    "StudySummary",
    "collect_results",
    "default_study_path",
    "grid_point_count",
    "load_study",
    "parse_study",
    "plan_runs",
    "results_frame",
    "run_id",
    "run_study",
]
