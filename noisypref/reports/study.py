"""Readers for a study folder: results.parquet, study.yaml and the per-run files.

They read the files the study runner writes (DESIGN.md §1) and nothing else; a missing optional
piece comes back as ``None`` so that the report can say what it skipped and why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from noisypref.folder_layout import (
    ITEMS_FILE,
    METRICS_LOG_FILE,
    PAIRS_FILE,
    RESULT_FILE,
    RESULTS_TABLE,
    RUNS_FOLDER,
    STUDY_FILE,
)

logger = logging.getLogger(__name__)

ITEM_COLUMNS = ("metric", "item", "value")

# A condition is everything but the method and the seed that decides which pairs are flipped and
# what is trained: runs of one condition, rate and seed see the same flipped pairs.
CONDITION_KEYS = ("dataset", "noise_model", "model")
RATE = "target_flip_rate"
REALISED_RATE = "realised_flip_rate"
METHOD = "method_label"
SEED = "seed"
SUCCEEDED = "succeeded"
MISSING_KEY = "-"
NO_NOISE_LABEL = "none"  # the study runner's noise model of rate-0 runs, which stand for every model

# Reference runs (results.parquet's ``reference`` column): drawn and used, never ranked or given a verdict.
REFERENCE = "reference"
COMPETITOR = "none"  # an ordinary method
CLEAN_ONLY = "clean_only"  # the oracle: the baseline's method trained on the noisy pairs minus the flipped ones
KNOWN_RATE = "known_rate"  # cDPO / rDPO with ε set to the run's realised flip rate
# The label of the method variant that is this method without its margin estimator (same β), or None.
BASE_LABEL = "base_label"
GAMMA_AUROC = "noise_detection_auroc_gamma"  # written by every γ method's run at a nonzero rate

# Columns of results.parquet that describe a run rather than measure it; every other numeric
# column (hp_<name> aside) is a metric.
DESCRIPTIVE_COLUMNS = frozenset(
    {
        "study", "run_id", "dataset", "noise_model", "target_flip_rate", "realised_flip_rate",
        "method_label", "method_name", "hyperparameters", "seed", "model", "wall_time_s",
        "status", "failure_reason", "reference", "base_label",
    }
)  # fmt: skip
HYPERPARAMETER_PREFIX = "hp_"

# Known metrics in the order a report shows them; metrics not listed here follow alphabetically.
KNOWN_METRICS = (
    "heldout_accuracy",
    "gold_win_rate",
    "gold_lc_win_rate",
    "gold_reward_mean",
    "gold_reward_reference_mean",
    "noise_detection_auroc",
    "noise_detection_auroc_gamma",
    "noise_detection_auroc_gold",
    "label_gold_agreement",
    "kl_estimate",
    "final_loss",
    "train_accuracy",
)


@dataclass
class StudyResults:
    """A study folder as the report sees it: the results table plus paths to the optional files."""

    directory: Path
    results: pd.DataFrame
    study_yaml: str | None

    @property
    def name(self) -> str:
        if "study" in self.results and self.results["study"].notna().any():
            return str(self.results["study"].dropna().iloc[0])
        return self.directory.name

    def run_dir(self, run_id: str) -> Path:
        return self.directory / RUNS_FOLDER / str(run_id)

    def metrics_log(self, run_id: str) -> pd.DataFrame | None:
        return read_metrics_log(self.run_dir(run_id) / METRICS_LOG_FILE)

    def pairs(self, run_id: str) -> pd.DataFrame | None:
        return read_pairs(self.run_dir(run_id) / PAIRS_FILE)

    def items(self, run_id: str) -> dict[str, pd.Series] | None:
        """A run's per-item values by metric (each a Series indexed by item id), or None."""
        return read_items(self.run_dir(run_id) / ITEMS_FILE)

    def run_result(self, run_id: str) -> dict | None:
        """A run's result.json (metrics, config, library versions, device), or None."""
        path = self.run_dir(run_id) / RESULT_FILE
        if not path.is_file():
            return None
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("cannot read %s: %s", path, error)
            return None
        return result if isinstance(result, dict) else None


def load_study_results(study_dir: str | Path) -> StudyResults:
    """Read DIR/results.parquet (required) and DIR/study.yaml (optional)."""
    directory = Path(study_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"study folder {directory} does not exist")
    results_path = directory / RESULTS_TABLE
    if not results_path.is_file():
        raise FileNotFoundError(
            f"{results_path} not found: a report needs the collected results of a study "
            "(`noisypref run` writes them)"
        )
    results = normalise_results(pd.read_parquet(results_path))
    study_path = directory / STUDY_FILE
    study_yaml = study_path.read_text(encoding="utf-8") if study_path.is_file() else None
    return StudyResults(directory=directory, results=results, study_yaml=study_yaml)


def normalise_results(results: pd.DataFrame) -> pd.DataFrame:
    """Give a results table every column the report groups by, with no missing keys.

    Missing condition keys become ``"-"`` (pandas drops NaN keys when grouping), a missing status
    means the run succeeded, a missing realised rate is left missing (the x axis then falls back to
    the target rate), a missing ``reference`` means a competitor (``"none"``) and a missing
    ``base_label`` means no base method.
    """
    results = results.copy()
    required = ("method_label", "seed", RATE)
    absent = [name for name in required if name not in results]
    if absent:
        raise ValueError(f"results table lacks the column(s) {', '.join(absent)}")
    for key in CONDITION_KEYS:
        if key not in results:
            results[key] = MISSING_KEY
        results[key] = results[key].astype(object).where(results[key].notna(), MISSING_KEY).astype(str)
    results[METHOD] = results[METHOD].astype(str)
    if "method_name" not in results:
        results["method_name"] = results[METHOD]
    results["method_name"] = (
        results["method_name"]
        .astype(object)
        .where(results["method_name"].notna(), results[METHOD])
        .astype(str)
    )
    if "status" not in results:
        results["status"] = SUCCEEDED
    results["status"] = (
        results["status"].astype(object).where(results["status"].notna(), SUCCEEDED).astype(str)
    )
    if REALISED_RATE not in results:
        results[REALISED_RATE] = float("nan")
    results[RATE] = results[RATE].astype(float)
    results[REALISED_RATE] = pd.to_numeric(results[REALISED_RATE], errors="coerce").astype(float)
    if REFERENCE not in results:
        results[REFERENCE] = COMPETITOR
    results[REFERENCE] = results[REFERENCE].astype(object).where(results[REFERENCE].notna(), COMPETITOR).astype(str)
    if BASE_LABEL not in results:
        results[BASE_LABEL] = None
    results[BASE_LABEL] = results[BASE_LABEL].astype(object).where(results[BASE_LABEL].notna(), None)
    if "run_id" not in results:
        results["run_id"] = [f"run-{index}" for index in range(len(results))]
    results["run_id"] = results["run_id"].astype(str)
    return results


def reference_labels(results: pd.DataFrame) -> dict[str, str]:
    """Method label -> kind of reference (``clean_only``, ``known_rate``, ...) of every reference label."""
    if REFERENCE not in results:
        return {}
    rows = results[results[REFERENCE].fillna(COMPETITOR) != COMPETITOR].drop_duplicates(METHOD)
    return dict(zip(rows[METHOD], rows[REFERENCE]))


def competitor_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of ordinary methods: those that may be compared, ranked and given verdicts."""
    if REFERENCE not in runs:
        return runs
    return runs[runs[REFERENCE].fillna(COMPETITOR) == COMPETITOR]


def gamma_method_labels(runs: pd.DataFrame) -> list[str]:
    """The labels of the methods with a dynamic target margin (γ), sorted: those with a value of the γ
    flip-detection AUROC (``GAMMA_AUROC``) in some run. Read from the metric, not the method's name, so
    that a γ method registered under any name counts."""
    if GAMMA_AUROC not in runs:
        return []
    return sorted(set(runs.loc[runs[GAMMA_AUROC].notna(), METHOD]))


def succeeded_runs(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == SUCCEEDED]


def share_clean_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Copy the runs without flips (noise model ``"none"``) into every noise model of their dataset
    and model, so that each noise model's robustness curve starts at its 0 % point.

    A rate of 0 flips nothing under any noise model, so the study runner runs it once per dataset,
    model, method and seed and labels it ``"none"``. Where a dataset and model have no other noise
    model, the runs stay as they are.
    """
    clean = results["noise_model"] == NO_NOISE_LABEL
    if not clean.any():
        return results
    noisy = results[~clean]
    copies = [noisy]
    for (dataset, model), clean_runs in results[clean].groupby(["dataset", "model"], sort=False):
        noise_models = sorted(
            set(noisy.loc[(noisy["dataset"] == dataset) & (noisy["model"] == model), "noise_model"])
        )
        copies += [clean_runs.assign(noise_model=noise_model) for noise_model in noise_models] or [clean_runs]
    return pd.concat(copies, ignore_index=True)


def metric_columns(results: pd.DataFrame) -> list[str]:
    """Every numeric column that is not descriptive and has a value on some succeeded run."""
    runs = succeeded_runs(results)
    found = [
        name
        for name in results.columns
        if name not in DESCRIPTIVE_COLUMNS
        and not name.startswith(HYPERPARAMETER_PREFIX)
        and is_numeric_dtype(results[name])
        and not is_bool_dtype(results[name])
        and runs[name].notna().any()
    ]
    known = [name for name in KNOWN_METRICS if name in found]
    return known + sorted(name for name in found if name not in KNOWN_METRICS)


def read_metrics_log(path: Path) -> pd.DataFrame | None:
    """A run's per-step log (one JSON object a line), or None where it is absent or unreadable."""
    if not path.is_file():
        return None
    records = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s line %d is not JSON; skipped", path, number)
    if not records:
        return None
    log = pd.DataFrame.from_records(records)
    if "step" not in log:
        logger.warning("%s has no `step` key; skipped", path)
        return None
    return log


def read_pairs(path: Path) -> pd.DataFrame | None:
    """A run's per-pair diagnostics (pair_id, is_flipped, reward_gap, gamma), or None."""
    if not path.is_file():
        return None
    try:
        pairs = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return None
    if "is_flipped" not in pairs:
        logger.warning("%s has no `is_flipped` column; skipped", path)
        return None
    return pairs


def read_items(path: Path) -> dict[str, pd.Series] | None:
    """A run's items.parquet (long format: ``metric``, ``item``, ``value``): for each metric that is a
    mean over items, its per-item values as a Series indexed by item id; None where absent or unreadable."""
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        logger.warning("cannot read %s: %s", path, error)
        return None
    absent = [name for name in ITEM_COLUMNS if name not in table.column_names]
    if absent:
        logger.warning("%s lacks the column(s) %s; skipped", path, ", ".join(absent))
        return None
    metrics = table.column("metric").to_numpy(zero_copy_only=False).astype(str)
    items = table.column("item").to_numpy(zero_copy_only=False).astype(str)
    values = table.column("value").to_numpy(zero_copy_only=False).astype(float)
    order = np.argsort(metrics, kind="stable")
    names, starts = np.unique(metrics[order], return_index=True)
    bounds = [*starts[1:], len(order)]
    return {
        str(name): pd.Series(values[order[start:stop]], index=pd.Index(items[order[start:stop]], name="item"))
        for name, start, stop in zip(names, starts, bounds)
    }


def percent(rate: float) -> str:
    """A flip rate as people write it: 0.2 -> '20 %', 0.025 -> '2.5 %'."""
    return f"{100 * rate:.4g} %"
