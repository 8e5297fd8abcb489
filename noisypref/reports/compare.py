"""Studies side by side: the findings table of each, one column per study and condition.

``compare_studies([DIR_A, DIR_B, ...])`` computes the findings of every study folder as its report
does (same baseline rule, same test, same verdicts) and returns a Markdown document: what
differs between the studies (conditions, rates, seeds, methods, the runs without a result,
declarations, and every setting of their study.yaml that differs: training, evaluation, datasets,
models, each method's hyperparameters), then per primary metric a table with one row per method and
rate (and the AUC) and one column per study condition. Runs that failed or are pending enter no
finding; the table of differences says which methods they leave short.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from noisypref.reports.cleaning import fold_cleaning_into_labels, ranked_runs
from noisypref.reports.declarations import read_metric_declarations, read_report_settings
from noisypref.reports.findings import AUC, findings
from noisypref.reports.statistics import curve_runs
from noisypref.reports.study import (
    CONDITION_KEYS,
    METHOD,
    RATE,
    SEED,
    SUCCEEDED,
    competitor_runs,
    load_study_results,
    metric_columns,
    percent,
)
from noisypref.reports.tables import DASH, Table, finding_cell

logger = logging.getLogger(__name__)

NONE = "none"


@dataclass
class StudyFindings:
    name: str
    directory: Path
    baseline: str
    primary: list[str]
    found: pd.DataFrame
    facts: dict[str, str]
    settings: dict[str, str]  # every setting of study.yaml, "training.steps" -> "30"


def _study_findings(directory: Path, baseline: str | None) -> StudyFindings:
    study = load_study_results(directory)
    study.results = ranked_runs(fold_cleaning_into_labels(study.results))  # cleaner+loss labels, no oracle
    declarations = read_metric_declarations(study.directory)
    settings = read_report_settings(study.study_yaml)
    labels = sorted(set(competitor_runs(study.results)[METHOD]))
    chosen = baseline or settings.baseline
    if chosen not in labels:
        if baseline is not None:
            raise ValueError(f"{directory}: baseline {baseline!r} is not a method label (labels: {', '.join(labels)})")
        chosen = labels[0]
    available = metric_columns(study.results)
    primary = [name for name in settings.primary_metrics if name in available]
    runs = curve_runs(study.results)

    def items(run_id: str, metric: str):
        return (study.items(run_id) or {}).get(metric)

    found = findings(runs, primary, chosen, declarations, items)
    unfinished = _unfinished_runs(study.results)
    if unfinished != NONE:
        logger.warning("%s: runs without a result enter no finding: %s", directory, unfinished)
    facts = {key: ", ".join(sorted(set(runs[key]))) for key in CONDITION_KEYS}
    facts["target flip rates"] = ", ".join(percent(rate) for rate in sorted(set(runs[RATE])))
    facts["seeds"] = str(runs[SEED].nunique())
    facts["methods"] = ", ".join(labels)
    facts["runs without a result"] = unfinished
    facts["baseline"] = chosen
    facts["metrics.json"] = "present" if declarations.found else "absent (no verdicts)"
    return StudyFindings(study.name, study.directory, chosen, primary, found, facts, _settings(study.study_yaml))


def _unfinished_runs(results: pd.DataFrame) -> str:
    """Per method, how many runs failed or are pending ("none" when every run succeeded)."""
    if "status" not in results:
        return NONE
    unfinished = results[results["status"] != SUCCEEDED]
    parts = []
    for label, runs in unfinished.groupby(METHOD, sort=True):
        counts = runs["status"].value_counts().sort_index()
        total = int((results[METHOD] == label).sum())
        parts.append(f"{label}: " + ", ".join(f"{count} {status}" for status, count in counts.items()) + f" of {total}")
    return "; ".join(parts) or NONE


def _settings(study_yaml: str | None) -> dict[str, str]:
    """Every setting of a resolved study.yaml as "section.key" -> value text: training, evaluation,
    each dataset (by label), model (by name) and method (by label, with its hyperparameters)."""
    try:
        document = yaml.safe_load(study_yaml) if study_yaml else None
    except yaml.YAMLError:
        return {}
    if not isinstance(document, dict):
        return {}
    settings: dict[str, str] = {}
    for section in ("training", "evaluation"):
        _flatten(document.get(section), section, settings)
    for section, key in (("datasets", "label"), ("models", "name"), ("methods", "label")):
        entries = document.get(section)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                name = entry.get(key) or entry.get("name") or str(index)
                _flatten({k: v for k, v in entry.items() if k not in (key, "name")}, f"{section}[{name}]", settings)
    return settings


def _flatten(value: object, prefix: str, into: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", into)
    else:
        into[prefix] = value if isinstance(value, str) else json.dumps(value)


def compare_studies(directories: list[str | Path], baseline: str | None = None) -> str:
    """The comparison of two or more study folders as Markdown (see the module docstring)."""
    if len(directories) < 2:
        raise ValueError("compare needs at least two study folders")
    seen: dict[Path, Path] = {}
    for directory in map(Path, directories):
        if directory.is_file():
            raise ValueError(f"{directory} is a file, not a study folder (the folder `noisypref run` writes)")
        if directory.resolve() in seen:
            raise ValueError(
                f"{directory} is given twice (as {seen[directory.resolve()]} and {directory}); compare needs "
                "distinct study folders"
            )
        seen[directory.resolve()] = directory
    studies = [_study_findings(Path(directory), baseline) for directory in directories]
    names = _unique_names(studies)
    parts = [f"# noisypref comparison: {' vs '.join(names)}", ""]
    facts = Table(
        stem="differences",
        caption="What differs between the studies (rows whose values differ are marked ≠).",
        header=["", *names],
        rows=[
            [("≠ " if len({s.facts[key] for s in studies}) > 1 else "") + key, *(s.facts[key] for s in studies)]
            for key in studies[0].facts
        ],
        align="l" * (len(studies) + 1),
    )
    parts += [facts.to_markdown(), ""]
    settings = _differing_settings(studies, names)
    if settings is not None:
        parts += [settings.to_markdown(), ""]
    metrics = list(dict.fromkeys(metric for s in studies for metric in s.primary))
    for metric in metrics:
        table = _metric_table(studies, names, metric)
        if table is not None:
            parts += [f"## {metric}", "", table.to_markdown(), ""]
    return "\n".join(parts).rstrip() + "\n"


def _differing_settings(studies: list[StudyFindings], names: list[str]) -> Table | None:
    """The settings of study.yaml whose values differ between the studies (None when none does)."""
    keys = list(dict.fromkeys(key for study in studies for key in study.settings))
    rows = [
        [f"≠ {key}", *(study.settings.get(key, DASH) for study in studies)]
        for key in keys
        if len({study.settings.get(key, DASH) for study in studies}) > 1
    ]
    if not rows:
        return None
    return Table(
        stem="differing-settings",
        caption="Settings of the studies' study.yaml that differ (– where a study has no such setting).",
        header=["setting", *names],
        rows=rows,
        align="l" * (len(studies) + 1),
    )


def _unique_names(studies: list[StudyFindings]) -> list[str]:
    names = [s.name for s in studies]
    if len(set(names)) == len(names):
        return names
    return [f"{s.name} ({s.directory})" for s in studies]


def _metric_table(studies: list[StudyFindings], names: list[str], metric: str) -> Table | None:
    columns, cells = [], {}
    for name, study in zip(names, studies):
        rows = study.found[study.found["metric"] == metric]
        conditions = sorted(set(map(tuple, rows[list(CONDITION_KEYS)].itertuples(index=False))))
        for condition in conditions:
            varying = [value for value in condition if len(conditions) > 1]
            column = f"{name}" + (f": {' · '.join(varying)}" if varying else "")
            columns.append(column)
            mask = pd.Series(True, index=rows.index)
            for key, value in zip(CONDITION_KEYS, condition):
                mask &= rows[key] == value
            for _, row in rows[mask].iterrows():
                where = "AUC" if row["quantity"] == AUC else percent(row[RATE])
                cells[(f"{row[METHOD]} vs {row['baseline']}", where, column)] = finding_cell(row)
    if not cells:
        return None
    keys = sorted({(method, where) for method, where, _ in cells}, key=lambda key: (key[0], _order(key[1])))
    body = [[method, where, *(cells.get((method, where, column), DASH) for column in columns)] for method, where in keys]
    return Table(
        stem=f"compare-{metric}",
        caption=(
            f"{metric}: each method minus the baseline, paired by seed — mean difference, the interval at the "
            "test's Holm level, Holm-adjusted p (per study and condition), verdict."
        ),
        header=["comparison", "rate", *columns],
        rows=body,
        align="ll" + "r" * len(columns),
    )


def _order(where: str) -> float:
    return float("inf") if where == "AUC" else float(where.split()[0])
