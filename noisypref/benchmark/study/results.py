"""The results store: one row per run of a study in DIR/results.parquet.

Columns: study, run_id, dataset, noise_model ("none" for rate-0 runs, which stand for every noise
model), noise_options (JSON), target_flip_rate, realised_flip_rate, method_label, method_name,
reference ("none" for competitors, "clean_only" for the oracle, "known_rate" for a method given its
run's realised flip rate: references are drawn, never ranked), base_label (the label of the study's
variant that is this competitor's own base, e.g. gamma_dpo's dpo at the same β: `sweeps.base_labels`;
None without one), hyperparameters (JSON) and one hp_<name> column per hyperparameter (a known-rate
run's resolved value; None until it has run), symbolic_hyperparameters (JSON {name: symbol} of the
hyperparameters the study gave as a symbol, else None), seed, model, cleaning (the label of the run's
cleaning entry, "none" where the noisy pairs are trained as they are) and cleaning_judge (the judge,
"none" alike), one column per metric of the engine's result, wall_time_s, status (succeeded / failed
/ pending) and failure_reason.
"""

from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path
from typing import Any

import pandas as pd

from noisypref.benchmark.config.metrics import declarations_document
from noisypref.benchmark.config.references import symbolic_hyperparameters, with_symbols_replaced
from noisypref.benchmark.storage import atomic_path, write_json_atomic
from noisypref.benchmark.study.folder import OutputNotWritable, StudyFolder
from noisypref.benchmark.study.grid import PlannedRun, plan_runs
from noisypref.benchmark.study.schema import Study
from noisypref.folder_layout import NO_CLEANING

logger = logging.getLogger(__name__)

SUCCEEDED, FAILED, PENDING = "succeeded", "failed", "pending"
LEADING_COLUMNS = (
    "study",
    "run_id",
    "dataset",
    "noise_model",
    "noise_options",
    "target_flip_rate",
    "realised_flip_rate",
    "method_label",
    "method_name",
    "reference",
    "base_label",
    "hyperparameters",
    "symbolic_hyperparameters",
    "seed",
    "model",
    "cleaning",
    "cleaning_judge",
)
TRAILING_COLUMNS = ("wall_time_s", "status", "failure_reason")


def results_frame(folder: StudyFolder, study: Study | None = None) -> pd.DataFrame:
    """One row per run of the study in `folder` (its plan.json or study.yaml unless `study` is given)."""
    name, runs = (study.name, plan_runs(study)) if study is not None else folder.planned_runs()
    rows = [_row(name, run, folder) for run in runs]
    hyperparameter_columns = sorted({key for row in rows for key in row["hp"]})
    metric_columns = list(dict.fromkeys(key for row in rows for key in row["metrics"]))
    records = []
    for row in rows:
        record = {column: row[column] for column in LEADING_COLUMNS}
        record.update({f"hp_{name}": row["hp"].get(name) for name in hyperparameter_columns})
        for name in metric_columns:
            column = name if name not in record and name not in TRAILING_COLUMNS else f"metric_{name}"
            record[column] = row["metrics"].get(name)
        record.update({column: row[column] for column in TRAILING_COLUMNS})
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:
        frame[column] = _storable(frame[column])
    frame.attrs["metrics"] = metric_columns
    return frame


def collect_results(folder: StudyFolder, study: Study | None = None) -> Path:
    """Write folder/results.parquet and folder/metrics.json (the declarations of its metrics), each
    atomically, and return the table's path."""
    # the engine's modules declare the metrics they compute; imported here, not at the top, so that
    # reading a study (`noisypref validate`) does not load torch
    import noisypref.benchmark.run.execute  # noqa: F401

    frame = results_frame(folder, study)
    declarations = declarations_document(["realised_flip_rate", *frame.attrs["metrics"]])
    try:
        with atomic_path(folder.results_table) as temporary:
            frame.to_parquet(temporary, index=False)
        write_json_atomic(folder.metrics_file, declarations)
    except OSError as error:  # a full or read-only disk: the runs are kept, only the table is not
        raise OutputNotWritable(
            f"cannot write {folder.results_table} ({error}); every finished run is kept: free some "
            f"space and run `noisypref collect {folder.root}`"
        ) from error
    counts = frame["status"].value_counts().to_dict()
    logger.info("wrote %s: %d runs (%s)", folder.results_table, len(frame), _count_text(counts))
    return folder.results_table


def _row(study_name: str, run: PlannedRun, folder: StudyFolder) -> dict[str, Any]:
    config = run.config
    result = folder.read_result(run.run_id)
    failure = None if result is not None else folder.read_failure(run.run_id)
    metrics = dict((result or {}).get("metrics") or {})
    realised_in_metrics = metrics.pop("realised_flip_rate", None)  # a column of its own
    realised = (result or {}).get("realised_flip_rate", realised_in_metrics)
    if result is not None:
        status, reason, wall_time_s = SUCCEEDED, None, result.get("wall_time_s")
    elif failure is not None:
        status, reason, wall_time_s = FAILED, failure.get("reason"), failure.get("wall_time_s")
    else:
        status, reason, wall_time_s = PENDING, None, None
    hyperparameters = config["method"]["hyperparameters"]
    symbols = symbolic_hyperparameters(hyperparameters)
    if symbols:  # the values the run resolved them to (result.json), None before it has run
        resolved = (result or {}).get("hyperparameters") or {}
        hyperparameters = with_symbols_replaced(hyperparameters, {name: resolved.get(name) for name in symbols})
    return {
        "study": study_name,
        "run_id": run.run_id,
        "dataset": run.dataset,
        "noise_model": run.noise_model,
        "noise_options": json.dumps(config["noise"]["options"], sort_keys=True),
        "target_flip_rate": run.noise_rate,
        "realised_flip_rate": realised,
        "method_label": run.method,
        "method_name": config["method"]["name"],
        "reference": run.reference,
        "base_label": run.base_label,
        "hyperparameters": json.dumps(hyperparameters, sort_keys=True),
        "symbolic_hyperparameters": json.dumps(symbols, sort_keys=True) if symbols else None,
        "seed": run.seed,
        "model": run.model,
        "cleaning": run.cleaning,
        "cleaning_judge": config["cleaning"]["judge"] if "cleaning" in config else NO_CLEANING,
        "hp": hyperparameters,
        "metrics": metrics,
        "wall_time_s": wall_time_s,
        "status": status,
        "failure_reason": reason,
    }


def _storable(column: pd.Series) -> pd.Series:
    """Leave a column of numbers, of booleans or of strings as it is; write anything else
    (lists, mixtures of types) as JSON text, so every column has one parquet type."""
    values = [
        value for value in column if value is not None and not (isinstance(value, float) and pd.isna(value))
    ]
    kinds = {_kind(value) for value in values}
    if len(kinds) <= 1 and "other" not in kinds:
        return column
    return column.map(lambda value: None if value is None else json.dumps(value, sort_keys=True))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, str):
        return "str"
    return "other"


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
