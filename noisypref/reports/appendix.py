"""The appendix of a report: run status, configuration (methods, metric declarations, the study file),
failed and pending runs, provenance. A function of the report builder (``report._ReportBuilder``).
"""

from __future__ import annotations

import pandas as pd

from noisypref.reports.declarations import METRICS_FILE
from noisypref.reports.document import Code, Note, ReportSection, TableBlock, Text
from noisypref.reports.provenance import provenance, run_provenance
from noisypref.reports.statistics import BOOTSTRAP_MIN_SEEDS
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, SEED, percent
from noisypref.reports.tables import DASH, Table


def appendix_sections(builder) -> list[ReportSection]:
    counts = builder.results["status"].value_counts()
    status_text = ", ".join(f"{count} {status}" for status, count in counts.items())
    seeds = sorted(set(builder.results[SEED]))
    overview = [
        Text(
            f"Study {builder.study.name!r} in {builder.study.directory}: {len(builder.results)} runs "
            f"({status_text}); {builder.results[METHOD].nunique()} method labels, "
            f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), target flip rates "
            f"{', '.join(percent(rate) for rate in sorted(set(builder.results[RATE])))}."
        ),
        Text(
            "Every number is over succeeded runs only. summary.csv's intervals are seed-level: Student's t "
            f"below {BOOTSTRAP_MIN_SEEDS} seeds, a seeded percentile bootstrap from there on; the figures' bands and "
            "intervals.csv use the hierarchical bootstrap; the verdicts of the findings and the intervals beside "
            "them, the paired t procedure (findings.csv, with_without.csv, headroom.csv)."
        ),
        builder.add_table(grid_table(builder.results)),
    ]
    configuration = [builder.add_table(methods_table(builder.results))]
    declared = _declarations_table(builder)
    configuration.append(declared if declared else Note(f"No {METRICS_FILE}: no metric declarations."))
    if builder.study.study_yaml is not None:
        configuration += [Text("The resolved study file (study.yaml):"), Code(builder.study.study_yaml, "yaml")]
    else:
        configuration.append(Note("study.yaml not found in the study folder: the configuration is not shown."))
    table = failures_table(builder.results)
    failures = [builder.add_table(table) if table else Text("None: every run succeeded.")]
    entries = provenance(builder.results) + run_provenance(builder.study)
    provenance_table = Table(
        stem="provenance",
        caption=(
            "Software and machine that wrote this report, then those of the runs (from their "
            "result.json); each run's configuration is in runs/<run_id>/config.json."
        ),
        header=["item", "value"],
        rows=[[key, value] for key, value in entries],
        align="ll",
    )
    return [
        ReportSection("Appendix", [Text("Run status, configuration and provenance of the numbers above.")]),
        ReportSection("Run status", overview, level=3),
        ReportSection("Configuration", configuration, level=3),
        ReportSection("Failed and pending runs", failures, level=3),
        ReportSection("Provenance", [builder.add_table(provenance_table)], level=3),
    ]


def _declarations_table(builder) -> TableBlock | None:
    if not builder.declarations.found:
        return None
    rows = []
    for name, declaration in builder.declarations.metrics.items():
        bounds = "—" if declaration.low is None and declaration.high is None else (
            f"[{'−∞' if declaration.low is None else f'{declaration.low:g}'}, "
            f"{'∞' if declaration.high is None else f'{declaration.high:g}'}]"
        )  # fmt: skip
        rows.append([name, declaration.label, declaration.direction, bounds,
                     "yes" if declaration.noisy_labels else "no", "yes" if declaration.diagnostic else "no",
                     "yes" if declaration.comparable else "no"])  # fmt: skip
    return builder.add_table(Table(
        stem="metric_declarations",
        caption=f"Metric declarations ({METRICS_FILE}), as the benchmark wrote them.",
        header=["metric", "label", "direction", "bounds", "noisy labels", "diagnostic", "comparable"],
        rows=rows, align="lllllll",
    ))  # fmt: skip


def methods_table(results: pd.DataFrame) -> Table:
    methods = results.drop_duplicates(METHOD).sort_values(METHOD)
    cells = []
    for _, row in methods.iterrows():
        hyperparameters = row.get("hyperparameters")
        text = str(hyperparameters) if isinstance(hyperparameters, str) else DASH
        cells.append([row[METHOD], row["method_name"], text])
    return Table(
        stem="methods",
        caption="Methods of the study: label, registered method and hyperparameters.",
        header=["label", "method", "hyperparameters"],
        rows=cells,
        align="lll",
    )


def grid_table(results: pd.DataFrame) -> Table:
    counts = results.groupby([*CONDITION_KEYS, RATE, "status"]).size().unstack("status", fill_value=0)
    statuses = list(counts.columns)
    cells = [
        [*map(str, key[:-1]), percent(key[-1]), *(str(int(counts.loc[key, status])) for status in statuses)]
        for key in counts.index
    ]
    return Table(
        stem="runs",
        caption="Runs per condition and target flip rate, by status.",
        header=[*CONDITION_KEYS, "target rate", *statuses],
        rows=cells,
        align="lll" + "r" * (1 + len(statuses)),
    )


def failures_table(results: pd.DataFrame, limit: int = 200) -> Table | None:
    failed = results[results["status"] != "succeeded"]
    if failed.empty:
        return None
    cells = []
    for _, row in failed.sort_values(["status", "run_id"]).iterrows():
        reason = row.get("failure_reason")
        reason = str(reason) if isinstance(reason, str) and reason else DASH
        if len(reason) > limit:
            reason = reason[: limit - 1] + "…"
        cells.append(
            [row["run_id"], row[METHOD], percent(row[RATE]), str(row["seed"]), row["status"], reason]
        )
    return Table(
        stem="failed_runs",
        caption="Runs that did not succeed; they are left out of every number above.",
        header=["run", "method", "rate", "seed", "status", "reason"],
        rows=cells,
        align="llrrll",
    )
