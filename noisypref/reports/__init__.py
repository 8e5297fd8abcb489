"""Result files in, tables, plots and statistics out. Never imports torch.

``write_report(study_dir)`` turns a study folder (results.parquet, study.yaml, runs/<run_id>/...)
into DIR/report/ (report.html, report.md, figures, tables, CSVs). The numbers behind it are
available as DataFrames: ``summarise(results)`` and ``paired_tests(results, baseline)`` on the
table that ``load_study(study_dir).results`` returns. See docs/reports.md.
"""

from noisypref.reports.report import write_report
from noisypref.reports.statistics import holm_adjust, mean_interval, paired_tests, summarise
from noisypref.reports.study import load_study, metric_columns, normalise_results

__all__ = [
    "holm_adjust",
    "load_study",
    "mean_interval",
    "metric_columns",
    "normalise_results",
    "paired_tests",
    "summarise",
    "write_report",
]
