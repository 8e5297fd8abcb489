"""The Findings section of a report: the answer first.

It opens with, in this order: the with/without finding (each method that is a base method plus a
margin estimator against its own base), the headroom sentence (what noise costs the baseline against
the oracle, and the share each method recovers), and the premise check (could the trained models
locate the flipped pairs at all); then the study's scope and notes, then one subsection per condition:
a sentence where the primary metrics disagree, the with/without, headroom and premise tables, and per
primary metric the paragraph (levels, then each method's drop from its own clean level), the headline
table, the drop table and the ranking.

A function of the report builder (``report._ReportBuilder``): it computes the findings' numbers, writes
their CSV files and adds its tables through the builder.
"""

from __future__ import annotations

from noisypref.reports.document import Note, ReportSection, Text
from noisypref.reports.drops import disagreement_sentence, drop_sentence, drop_table, drops
from noisypref.reports.findings import findings
from noisypref.reports.headroom import MIN_RATE, headroom, headroom_sentence, headroom_table
from noisypref.reports.narrative import condition_paragraphs
from noisypref.reports.pairs import pair_findings, pairs_table, resolve_pairs, with_without_sentence
from noisypref.reports.premise import premise_rows, premise_sentence, premise_table
from noisypref.reports.ranking import ranking
from noisypref.reports.study import CONDITION_KEYS, METHOD, RATE, SEED, percent
from noisypref.reports.tables import headline_table, ranking_table

FINDINGS_TITLE = "Findings"


def findings_sections(builder) -> list[ReportSection]:
    if builder.baseline is None:
        return [ReportSection(FINDINGS_TITLE, [Note("The study has no method label to compare against.")])]
    report_dir, primary = builder.report_dir, builder.primary
    labels = {metric: builder.declarations.get(metric).label for metric in primary}
    builder.found = findings(builder.runs, primary, builder.baseline, builder.declarations, builder.items)
    builder.found.to_csv(report_dir / "findings.csv", index=False)
    pairs, pair_notes = resolve_pairs(builder.runs, builder.settings.pairs)
    builder.pairs_found = pair_findings(builder.runs, primary, pairs, builder.declarations, builder.items)
    builder.pairs_found.to_csv(report_dir / "with_without.csv", index=False)
    builder.headroom, headroom_notes = headroom(builder.runs, primary, builder.baseline, builder.declarations,
                                                builder.items)  # fmt: skip
    builder.headroom.to_csv(report_dir / "headroom.csv", index=False)
    premise = premise_rows(builder.runs, builder.baseline)
    premise.to_csv(report_dir / "premise.csv", index=False)
    drop_rows = drops(builder.runs, primary, builder.declarations, builder.items)
    drop_rows.to_csv(report_dir / "drops.csv", index=False)

    blocks = _opening(builder, pairs, pair_notes, headroom_notes, premise, labels)
    blocks.append(_scope(builder))
    if not builder.items.runs_with_items():
        builder.notes.append(
            "No run has an items.parquet: every interval and test is over seeds only (no item-level variance)."
        )
    unfinished = int((builder.results["status"] != "succeeded").sum())
    if unfinished:
        builder.notes.append(f"{unfinished} run(s) did not succeed (appendix, 'Failed and pending runs'): "
                             "the numbers are partial.")  # fmt: skip
    if builder.runs[SEED].nunique() == 1:
        builder.notes.append("One seed: no interval or p-value can be given; every verdict is 'too few seeds'.")
    blocks += [Note(text) for text in builder.notes]
    sections = [ReportSection(FINDINGS_TITLE, blocks)]
    for condition in builder.conditions:
        sections.append(_condition_section(builder, condition, premise, drop_rows, labels))
    return sections


def _opening(builder, pairs, pair_notes: list[str], headroom_notes: list[str], premise, labels: dict[str, str]) -> list:
    """With/without, headroom and premise sentences, one per condition each (titled where there are
    several), or a note saying what could not be said and why."""
    several = len(builder.conditions) > 1

    def titled(condition, text: str) -> str:
        return f"{builder.titles[condition]}: {text}" if several and text else text

    blocks: list = []
    texts = [titled(c, with_without_sentence(builder.pairs_found, c, builder.primary, labels))
             for c in builder.conditions]  # fmt: skip
    blocks += [Text(text) for text in texts if text]
    if not any(texts):
        blocks.append(Note(
            "With and without: no pair to compare — no method in results.parquet names a base_label (its own base "
            "method with the same β) and study.yaml declares no report.pairs." if not pairs else
            "With and without: the pairs share no condition, rate and seed with a value of a primary metric."
        ))  # fmt: skip
    blocks += [Note(text) for text in pair_notes]
    texts = [
        titled(c, headroom_sentence(builder.headroom, c, metric, labels[metric]))
        for c in builder.conditions for metric in builder.primary
    ]
    blocks += [Text(text) for text in texts if text]
    if not any(texts):
        blocks.append(Note(
            "Headroom: not measured — the study has no clean_only reference (the oracle: the baseline's method "
            f"trained on the noisy pairs minus the flipped ones) at a rate of at least {percent(MIN_RATE)}, so "
            "how much noise costs and how much of it a method recovers cannot be said."
        ))  # fmt: skip
    blocks += [Note(text) for text in headroom_notes]
    texts = [titled(c, premise_sentence(premise, c, builder.baseline)) for c in builder.conditions]
    blocks += [Text(text) for text in texts if text]
    return blocks


def _scope(builder) -> Text:
    seeds = sorted(set(builder.runs[SEED]))
    rates = ", ".join(percent(rate) for rate in sorted(set(builder.results[RATE])))
    text = (
        f"Which methods hold up under label noise, against {builder.baseline}: {len(builder.results)} runs, "
        f"{builder.results[METHOD].nunique()} methods, {len(seeds)} seed(s), target flip rates {rates}; primary "
        f"metric(s) {', '.join(builder.primary) or 'none'}."
    )
    if len(seeds) > 1:
        text += (
            " Every verdict: a paired t-test over seeds (its standard error also carries the sampling of the "
            "shared held-out items where the runs wrote them), Holm's step-down over each table; the interval "
            "beside a verdict is that test's interval at the level Holm used, so it excludes 0 exactly when the "
            f"verdict is better or worse. Figure bands: 95 % hierarchical bootstrap ({builder.resamples} replicates)."
        )
    else:
        text += " With one seed there are no intervals and no p-values."
    return Text(text)


def _condition_section(builder, condition: tuple, premise, drop_rows, labels: dict[str, str]) -> ReportSection:
    title = builder.titles[condition]
    blocks: list = []
    clash = disagreement_sentence(builder.found, condition, builder.primary, labels)
    if clash:
        blocks.append(Text(clash))
    for metric in builder.primary:
        blocks.append(builder.add_table(pairs_table(
            builder.pairs_found, metric, condition, title, builder.new_stem("with-without", metric, *condition),
            labels[metric],
        )))  # fmt: skip
    for metric in builder.primary:
        blocks.append(builder.add_table(headroom_table(
            builder.headroom, metric, condition, title, builder.new_stem("headroom", metric, *condition), labels[metric],
        )))  # fmt: skip
    blocks.append(builder.add_table(premise_table(
        premise, condition, title, builder.new_stem("premise", *condition), builder.baseline,
    )))  # fmt: skip
    ranked, ranking_blocks = {}, []
    for metric in builder.primary:
        declaration = builder.declarations.get(metric)
        ranked[metric] = ranking(builder.intervals, builder.found, metric, condition, builder.baseline, declaration,
                                 builder.references)  # fmt: skip
        ranking_blocks.append(builder.add_table(ranking_table(
            ranked[metric], title, builder.new_stem("ranking", metric, *condition), declaration, builder.baseline,
        )))  # fmt: skip
    noise_model = condition[CONDITION_KEYS.index("noise_model")]
    paragraphs = condition_paragraphs(
        builder.found, ranked, condition, noise_model, builder.primary,
        {metric: builder.declarations.get(metric) for metric in builder.primary}, builder.baseline,
    )  # fmt: skip
    for metric in builder.primary:  # per metric: its paragraph, the headline table, the drops
        paragraph = " ".join(filter(None, [paragraphs.get(metric), drop_sentence(drop_rows, condition, metric,
                                                                                  labels[metric])]))  # fmt: skip
        if paragraph:
            blocks.append(Text(paragraph))
        blocks.append(builder.add_table(headline_table(
            builder.found, metric, condition, title, builder.new_stem("headline", metric, *condition),
            builder.declarations.get(metric),
        )))  # fmt: skip
        blocks.append(builder.add_table(drop_table(
            drop_rows, metric, condition, title, builder.new_stem("drops", metric, *condition), labels[metric],
        )))  # fmt: skip
    blocks = [block for block in blocks if block is not None]
    if not blocks:
        blocks.append(Note(f"{title}: no comparison with {builder.baseline}."))
    blocks += [block for block in ranking_blocks if block is not None]
    return ReportSection(title, blocks, level=3)
