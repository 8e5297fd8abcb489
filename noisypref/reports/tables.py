"""Tables of a report: built once as cells, rendered as Markdown, LaTeX (booktabs) and HTML."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import pandas as pd

from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.procedure import MIN_SEEDS
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
    """Three decimals; four where three would round across 0.05 (0.0496 is not shown as 0.050)."""
    if value is None or math.isnan(value):
        return DASH
    if value < 0.001:
        return "<0.001"
    return f"{value:.4f}" if 0.0495 <= value < 0.0505 else f"{value:.3f}"


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
    summary: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str, declaration: MetricDeclaration,
    references=frozenset(),
) -> Table | None:  # fmt: skip
    """Methods × (each rate, AUC, drop) of one metric in one condition: mean ± std over seeds.

    A cell is bold only for a ranked metric (a declared direction, not a diagnostic) and only where
    the best mean's 95 % interval overlaps no other competing method's interval in that column; the
    labels in ``references`` are listed as references and never bold.
    """
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
    cells = [[f"{label} (reference)" if label in references else label] + [DASH] * len(columns) for label in labels]
    bold = [[False] * (len(columns) + 1) for _ in labels]
    for c, (quantity, rate) in enumerate(columns):
        selected = rows[rows["quantity"] == quantity]
        if rate is not None:
            selected = selected[selected[RATE] == rate]
        for _, row in selected.iterrows():
            cells[labels.index(row[METHOD])][c + 1] = format_mean_spread(row["mean"], row["std"])
        if declaration.ranked:
            # A smaller drop is better for a metric that is better high, and the reverse.
            sign = declaration.sign() * (-1 if quantity == "drop" else 1)
            best = _separated_best(selected[~selected[METHOD].isin(list(references))], sign)
            if best is not None:
                bold[labels.index(best)][c + 1] = True
    n_seeds = sorted(set(values["n_seeds"]))
    seeds_text = str(n_seeds[0]) if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    if declaration.diagnostic:
        kind = "a diagnostic, not ranked"
    elif declaration.direction == "none":
        kind = "no declared direction, not ranked"
    else:
        kind = f"{declaration.direction} is better"
    caption = (
        f"{title}: {metric} ({kind}), mean ± std over {seeds_text} seed(s); columns are target flip "
        "rates (mean realised rate)."
        + (" Bold: the best mean where its 95 % interval overlaps no other's." if declaration.ranked else "")
    )
    notes = [
        "AUC: area under the robustness curve over the realised rates, divided by their span (a mean "
        "level); drop: value at the lowest minus value at the highest rate. Both per seed, then averaged.",
        "95 % confidence intervals of every cell are in summary.csv.",
    ]
    return Table(stem=stem, caption=caption, header=header, rows=cells, bold=bold, notes=notes)


def _separated_best(rows: pd.DataFrame, sign: float) -> str | None:
    """The label of the best mean (``sign`` +1: highest) if its interval is disjoint from all others."""
    rows = rows.dropna(subset=["mean"])
    if len(rows) < 2 or rows["ci_low"].isna().any():
        return None
    ordered = rows.assign(score=sign * rows["mean"]).sort_values("score", ascending=False)
    best, others = ordered.iloc[0], ordered.iloc[1:]
    if sign > 0 and (best["ci_low"] > others["ci_high"]).all():
        return best[METHOD]
    if sign < 0 and (best["ci_high"] < others["ci_low"]).all():
        return best[METHOD]
    return None


def paired_table(paired: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str) -> Table | None:
    """Methods × (each rate, AUC) of ``findings.paired_tests``: the numbers of the findings' procedure,
    its p unadjusted and Holm-adjusted over the same table as the findings."""
    rows = condition_rows(paired, condition)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return None
    rows = rows.assign(_auc=rows["quantity"] == "auc").sort_values([METHOD, "_auc", RATE])
    baseline = rows["baseline"].iloc[0]
    header = ["method", "rate", "pairs", "mean diff.", "d_z", "interval", "p", "p (Holm)", "verdict", "note"]
    cells = []
    for _, row in rows.iterrows():
        cells.append(
            [
                row[METHOD],
                "AUC" if row["_auc"] else percent(row[RATE]),
                str(int(row["n_pairs"])),
                format_number(row["mean_difference"]),
                format_number(row["cohens_dz"]),
                format_interval(row["ci_low"], row["ci_high"]),
                format_pvalue(row["t_pvalue"]),
                format_pvalue(row["t_pvalue_holm"]),
                row["verdict"],
                row["note"] or "",
            ]
        )
    caption = (
        f"{title}: {metric}, each method minus {baseline} paired by seed (same flipped pairs), by the procedure "
        "of the findings: p two-sided, unadjusted and Holm-adjusted over this table (all methods, rates and the "
        "AUC), the interval at the test's Holm level."
    )
    notes = [
        "The test: a paired t-test over seeds whose standard error also carries the item sampling of the shared "
        f"held-out items where the runs wrote them; it needs ≥ {MIN_SEEDS} paired seeds with non-constant "
        f"differences, and where they are lacking no p-value is given ({DASH}).",
        "d_z: Cohen's effect size for paired data, mean difference / sd of the per-seed differences.",
    ]
    return Table(stem=stem, caption=caption, header=header, rows=cells, notes=notes, align="lrrrrrrrll")


def format_signed(value: float) -> str:
    return DASH if value is None or math.isnan(value) else f"{value:+.3f}"


def format_interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return DASH
    return f"[{format_bound(low)}, {format_bound(high)}]"


def format_bound(value: float) -> str:
    """An interval's end as ``format_number`` writes it, but never rounded to 0.000: an end that is not
    zero keeps two significant digits, so whether the interval excludes 0 can be read."""
    if value != 0 and abs(value) < 0.0005:
        return f"{value:.2g}"
    return format_number(value)


def seeds_text(counts) -> str:
    counts = sorted(set(int(count) for count in counts))
    if not counts:
        return DASH
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def finding_cell(row) -> str:
    """One comparison: difference, its Holm-level interval, Holm p and verdict, e.g.
    '+0.150 [0.120, 0.180] p 0.003 better'."""
    parts = [format_signed(row["mean_difference"])]
    if row["n_pairs"] >= 2:
        parts.append(format_interval(row["ci_low"], row["ci_high"]))
    if not math.isnan(row["t_pvalue_holm"]):
        parts.append(f"p {format_pvalue(row['t_pvalue_holm'])}")
    parts.append(row["verdict"])
    return " ".join(parts)


def headline_table(
    found: pd.DataFrame, metric: str, condition: tuple, title: str, stem: str, declaration: MetricDeclaration
) -> Table | None:
    """Methods × (each rate, AUC): each method minus the baseline with interval, Holm p and verdict."""
    rows = condition_rows(found, condition)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return None
    baseline = rows["baseline"].iloc[0]
    rates = sorted(set(rows[RATE].dropna()))
    header = ["method", *(percent(rate) for rate in rates), "AUC", "seeds"]
    cells = []
    for label, method_rows in rows.groupby(METHOD, sort=True):
        line = [label]
        for rate in rates:
            at_rate = method_rows[method_rows[RATE] == rate]
            line.append(finding_cell(at_rate.iloc[0]) if len(at_rate) else DASH)
        auc = method_rows[method_rows["quantity"] == "auc"]
        line.append(finding_cell(auc.iloc[0]) if len(auc) else DASH)
        line.append(seeds_text(method_rows["n_pairs"]))
        cells.append(line)
    methods = sorted(set(rows["ci_method"]) - {"none"})
    direction = (
        f"{declaration.direction} is better" if declaration.ranked
        else "no declared direction: differences without better/worse"
    )  # fmt: skip
    caption = (
        f"{title}: {declaration.label} ({metric}; {direction}), each method minus {baseline}, paired by seed: "
        "mean difference, the interval at the test's Holm level, Holm-adjusted p, verdict."
    )
    notes = [
        f"One procedure per verdict ({', '.join(methods) or 'none: one seed'}): a paired t-test over seeds whose "
        "standard error also carries the item sampling of the shared held-out items where the runs wrote them; "
        "Holm's step-down over this table; the interval is that test's at the level Holm used for it, so it "
        "excludes 0 exactly when the verdict is better or worse.",
        f"'too few seeds' below {MIN_SEEDS} paired seeds. AUC: the normalised area under the robustness curve.",
    ]
    dominant = rows["dominant_source"].replace("", pd.NA).dropna()
    if not dominant.empty:
        counts = dominant.value_counts()
        notes.append(
            "Dominant variance source of the differences: "
            + ", ".join(f"{source} in {count} of {len(dominant)} cells" for source, count in counts.items())
            + " (items: the item term of the standard error is at least the seed term)."
        )
    # Left-aligned cells may wrap in HTML (right-aligned numbers do not), so the table fits a screen.
    return Table(stem=stem, caption=caption, header=header, rows=cells, notes=notes, align="l" * len(header))


def ranking_table(ranked: pd.DataFrame, title: str, stem: str, declaration: MetricDeclaration, baseline: str) -> Table | None:
    """Methods by robustness AUC with intervals, the value at the highest rate and the breaking point."""
    if ranked.empty:
        return None
    highest = ranked["highest_rate"].max()
    header = ["rank", "method", "AUC", "95 % interval", f"value at {percent(highest)}", "AUC vs baseline", "breaking point"]
    cells, bold = [], []
    for rank, (_, row) in enumerate(ranked.iterrows(), start=1):
        breaking = (
            DASH if not declaration.ranked or row["verdict"] == "baseline"
            else f"{percent(row['breaking_rate'])}" if not math.isnan(row["breaking_rate"])
            else f"none up to {percent(row['highest_rate'])}"
        )  # fmt: skip
        cells.append([
            str(rank) if declaration.ranked else DASH, row[METHOD], format_number(row["auc"]),
            format_interval(row["ci_low"], row["ci_high"]), format_number(row["value_at_highest"]),
            row["verdict"] or DASH, breaking,
        ])  # fmt: skip
        bold.append([False] * len(header))
    if declaration.ranked and len(ranked) > 1:
        first, others = ranked.iloc[0], ranked.iloc[1:]
        separated = (first["ci_low"] > others["ci_high"]).all() if declaration.sign() > 0 else (
            first["ci_high"] < others["ci_low"]).all()  # fmt: skip
        if separated:
            bold[0][2] = True
    caption = (
        f"{title}: methods by robustness AUC of {declaration.label} ({metric_direction(declaration)}), "
        f"mean over seeds with its 95 % hierarchical bootstrap interval. Breaking point (none for the baseline "
        f"itself): the lowest target rate at which the method's whole 95 % interval is worse than {baseline}'s mean at "
        f"{percent(ranked['clean_rate'].iloc[0])} "
        f"({format_number(ranked['clean_value'].iloc[0])})."
    )
    notes = ["Bold only where the first method's interval overlaps no other's."] if declaration.ranked else [
        "The metric declares no direction: listed by AUC, not ranked."]  # fmt: skip
    return Table(stem=stem, caption=caption, header=header, rows=cells, bold=bold, notes=notes, align="rlrrrll")


def metric_direction(declaration: MetricDeclaration) -> str:
    if declaration.diagnostic:
        return "a diagnostic"
    return f"{declaration.direction} is better" if declaration.direction != "none" else "no declared direction"
