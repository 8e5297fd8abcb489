"""Result files in, tables, plots and statistics out. Never imports torch or noisypref.benchmark.

``write_report(study_dir)`` turns a study folder (results.parquet, metrics.json, study.yaml,
runs/<run_id>/...) into DIR/report/, findings first. The numbers behind it are DataFrames:
``findings(runs, metrics, baseline, declarations)`` (each method against the baseline: paired t over
seeds, Holm, the interval at each test's Holm level, verdicts), ``pair_findings`` (with and without a
margin estimator), ``headroom`` (oracle − baseline and the share each method recovers),
``premise_rows`` (can the models locate the flips), ``method_intervals``, ``summarise(results)`` and
``paired_tests(results, baseline)`` (the findings' procedure over every comparable metric). ``compare_studies([DIR_A, DIR_B])`` puts studies side by side.
See docs/reports.md.
"""

from noisypref.reports.compare import compare_studies
from noisypref.reports.declarations import read_metric_declarations, read_report_settings
from noisypref.reports.findings import findings, paired_tests
from noisypref.reports.headroom import headroom
from noisypref.reports.intervals import method_intervals
from noisypref.reports.pairs import pair_findings, resolve_pairs
from noisypref.reports.premise import premise_rows
from noisypref.reports.report import write_report
from noisypref.reports.statistics import curve_runs, holm_adjust, mean_interval, summarise
from noisypref.reports.study import load_study_results, metric_columns, normalise_results

__all__ = [
    "compare_studies",
    "curve_runs",
    "findings",
    "headroom",
    "holm_adjust",
    "load_study_results",
    "mean_interval",
    "method_intervals",
    "metric_columns",
    "normalise_results",
    "pair_findings",
    "paired_tests",
    "premise_rows",
    "read_metric_declarations",
    "read_report_settings",
    "resolve_pairs",
    "summarise",
    "write_report",
]
