"""Studies: grids of runs described by a YAML file, run resumably into one folder (docs/studies.md).

    study = load_study("configs/default.yaml")      # validated; StudyError lists every problem
    runs = plan_runs(study)                          # distinct runs, each a contract run config
    summary = run_study(study, "runs/default")       # resumable; failures recorded, study goes on
    collect_results(StudyFolder(Path("runs/default")))   # runs/default/results.parquet

Modules: `schema` (the YAML schema and its validation), `grid` (expansion into runs, run ids),
`folder` (the output folder, run locks), `scheduler` (running), `results` (the parquet store).
"""

from importlib import resources
from pathlib import Path

from noisypref.benchmark.study.folder import StudyFolder, StudyFolderError
from noisypref.benchmark.study.grid import PlannedRun, grid_point_count, plan_runs, run_id
from noisypref.benchmark.study.results import collect_results, results_frame
from noisypref.benchmark.study.scheduler import DEFAULT_EXECUTOR, StudySummary, run_study
from noisypref.benchmark.study.schema import Study, load_study, parse_study
from noisypref.settings import StudyError

DEFAULT_STUDY_RESOURCE = "default.yaml"


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
