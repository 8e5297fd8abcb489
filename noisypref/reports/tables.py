"""Tables of a report: built once as cells, rendered as Markdown, LaTeX (booktabs) and HTML."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import pandas as pd

from noisypref.reports.statistics import T_TEST_MIN_PAIRS, WILCOXON_MIN_PAIRS, higher_is_better
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, REALISED_RATE, percent

DASH = "—"


@dataclass
class Table:
    """Cells as display strings; ``bold[r][c]`` marks the best value of a column."""

    stem: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    bold: list[list[bool]] | None = None
    notes: list[str] = field(default_factory=list)
    align: str = ""  # one letter per column, "l" or "r"; default: first column left, the rest right

    def __post_init__(self):
        self.align = self.align or "l" + "r" * (len(self.header) - 1)

    def is_bold(self, row: int, column: int) -> bool:
        return bool(self.bold and self.bold[row][column])

    def to_markdown(self) -> str:
        def cell(text: str, bold: bool) -> str:
            text = text.replace("|", "\\|")
            return f"**{text}**" if bold and text != DASH else text

        lines = [
            "| " + " | ".join(cell(text, False) for text in self.header) + " |",
            "|" + "|".join(":---" if letter == "l" else "---:" for letter in self.align) + "|",
        ]
        for r, row in enumerate(self.rows):
            lines.append(
                "| " + " | ".join(cell(text, self.is_bold(r, c)) for c, text in enumerate(row)) + " |"
            )
        parts = [f"*{self.caption}*", "", *lines]
        if self.notes:
            parts += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(parts) + "\n"

    def to_latex(self) -> str:
        def cell(text: str, bold: bool) -> str:
            text = latex_escape(text)
            return f"\\textbf{{{text}}}" if bold and text != DASH else text

        columns = self.align
        lines = [
            "% Needs \\usepackage{booktabs}.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{latex_escape(self.caption)}}}",
            f"\\begin{{tabular}}{{{columns}}}",
            "\\toprule",
            " & ".join(cell(text, False) for text in self.header) + " \\\\",
            "\\midrule",
        ]
        for r, row in enumerate(self.rows):
            lines.append(" & ".join(cell(text, self.is_bold(r, c)) for c, text in enumerate(row)) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        if self.notes:
            lines.append("\\par\\footnotesize " + latex_escape(" ".join(self.notes)))
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        def cell(tag: str, text: str, bold: bool, column: int) -> str:
            content = html.escape(text)
            if bold and text != DASH:
                content = f"<strong>{content}</strong>"
            align = ' class="num"' if self.align[column] == "r" else ""
            return f"<{tag}{align}>{content}</{tag}>"

        head = "".join(cell("th", text, False, c) for c, text in enumerate(self.header))
        body = "\n".join(
            "<tr>" + "".join(cell("td", text, self.is_bold(r, c), c) for c, text in enumerate(row)) + "</tr>"
            for r, row in enumerate(self.rows)
        )
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        return (
            f"<table>\n<caption>{html.escape(self.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n" + (f'<ul class="notes">{notes}</ul>\n' if notes else "")
        )


LATEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": "---", "–": "--", "·": r"$\cdot$", "−": "$-$", "∞": r"$\infty$", "≥": r"$\geq$", "≤": r"$\leq$", "‖": r"$\|$",
    "α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$", "δ": r"$\delta$", "ε": r"$\varepsilon$",
    "τ": r"$\tau$", "π": r"$\pi$", "σ": r"$\sigma$", "μ": r"$\mu$", "λ": r"$\lambda$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(LATEX_REPLACEMENTS.get(character, character) for character in text)


def format_number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.3f}"


def format_pvalue(value: float) -> str:
    if value is None or math.isnan(value):
        return DASH
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def format_mean_spread(mean: float, std: float) -> str:
    if math.isnan(mean):
        return DASH
    if math.isnan(std):
        return format_number(mean)
    return f"{format_number(mean)} ± {format_number(std)}"


def condition_rows(frame: pd.DataFrame, condition: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for key, value in zip(CONDITION_KEYS, condition):
        mask &= frame[key] == value
    return frame[mask]


def summary_table(
    summary: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str
) -> Table | None:
    """Methods × (each rate, AUC, drop) of one metric in one condition: mean ± std over seeds."""
    rows = condition_rows(summary, condition)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return None
    values = rows[rows["quantity"] == "value"]
    rates = values[[RATE, REALISED_RATE]].drop_duplicates(RATE).sort_values(RATE)
    columns = [("value", rate) for rate in rates[RATE]] + [("auc", None), ("drop", None)]
    header = ["method"] + [
        f"{percent(rate)} ({percent(realised)})" for rate, realised in zip(rates[RATE], rates[REALISED_RATE])
    ] + ["AUC", "drop"]  # fmt: skip
    labels = sorted(rows[METHOD].unique())
    means = pd.DataFrame(float("nan"), index=labels, columns=range(len(columns)))
    cells = [[label] + [DASH] * len(columns) for label in labels]
    for c, (quantity, rate) in enumerate(columns):
        selected = rows[rows["quantity"] == quantity]
        if rate is not None:
            selected = selected[selected[RATE] == rate]
        for _, row in selected.iterrows():
            r = labels.index(row[METHOD])
            cells[r][c + 1] = format_mean_spread(row["mean"], row["std"])
            means.loc[row[METHOD], c] = row["mean"]
    higher = higher_is_better(metric)
    bold = [[False] * (len(columns) + 1) for _ in labels]
    for c, (quantity, _) in enumerate(columns):
        column = means[c].dropna()
        if len(column) < 2:
            continue
        # A smaller drop is better for a metric that is better high, and the reverse.
        wants_max = higher if quantity != "drop" else not higher
        best = format_number(column.max() if wants_max else column.min())
        for label, mean in column.items():
            bold[labels.index(label)][c + 1] = format_number(mean) == best  # ties as displayed
    n_seeds = sorted(set(values["n_seeds"]))
    seeds_text = str(n_seeds[0]) if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    direction = "higher is better" if higher else "lower is better"
    caption = (
        f"{title}: {metric} ({direction}), mean ± std over {seeds_text} seed(s); columns are target flip "
        "rates (mean realised rate). Best per column in bold."
    )
    notes = [
        "AUC: area under the robustness curve over the realised rates, divided by their span (a mean "
        "level); drop: value at the lowest minus value at the highest rate. Both per seed, then averaged.",
        "95 % confidence intervals of every cell are in summary.csv.",
    ]
    return Table(stem=stem, caption=caption, header=header, rows=cells, bold=bold, notes=notes)


def paired_table(paired: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str) -> Table | None:
    rows = condition_rows(paired, condition)
    rows = rows[rows["metric"] == metric].sort_values([METHOD, RATE])
    if rows.empty:
        return None
    baseline = rows["baseline"].iloc[0]
    header = ["method", "rate", "pairs", "mean diff.", "d_z", "t-test p (Holm)", "Wilcoxon p (Holm)", "note"]
    cells = []
    for _, row in rows.iterrows():
        cells.append(
            [
                row[METHOD],
                percent(row[RATE]),
                str(int(row["n_pairs"])),
                format_number(row["mean_difference"]),
                format_number(row["cohens_dz"]),
                _test_cell(row, "t"),
                _test_cell(row, "wilcoxon"),
                row["note"] or "",
            ]
        )
    caption = (
        f"{title}: {metric}, each method minus {baseline} paired by seed (same flipped pairs). "
        "p-values two-sided, Holm-adjusted over this table in parentheses."
    )
    notes = [
        f"A t-test needs ≥ {T_TEST_MIN_PAIRS} pairs with non-constant differences and a Wilcoxon test "
        f"≥ {WILCOXON_MIN_PAIRS} non-zero differences (below that it cannot reach p < 0.05); "
        f"where they are lacking no p-value is given ({DASH}).",
        "d_z: Cohen's effect size for paired data, mean difference / sd of the differences.",
    ]
    return Table(stem=stem, caption=caption, header=header, rows=cells, notes=notes, align="lrrrrrrl")


def _test_cell(row: pd.Series, test: str) -> str:
    if not row[f"{test}_meaningful"]:
        return DASH
    return f"{format_pvalue(row[f'{test}_pvalue'])} ({format_pvalue(row[f'{test}_pvalue_holm'])})"


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
