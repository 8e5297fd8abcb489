"""The ``cleaning`` entries of a study file: the cleaners crossed with the methods, so that cleaner × loss
is one grid. ``none`` (the default and only entry of a study without the key) trains on the noisy pairs.

    cleaning:
      - none
      - {judge: oracle}                                   # the flip record: a reference, never ranked
      - {judge: reference_margin, options: {normalise: mean}}
      - {label: rm_flip, judge: reward_model, treatment: flip, budget: {fraction: 0.2}}
      - {judge: ensemble, options: {rule: majority}}

``score_margin`` (alone or in an ensemble) is refused on the testbed: its scores are the gold reward that
made the labels, so the judge would read the injected flips back (docs/cleaning.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noisypref.benchmark.config.cleaning import CleaningSettings
from noisypref.benchmark.study.entries import as_list
from noisypref.cleaning import JUDGES
from noisypref.cleaning.score_margin import SCORE_MARGIN_JUDGE
from noisypref.folder_layout import NO_CLEANING
from noisypref.settings import ErrorList, load_settings

CLEANING_KEYS = ("label", "judge", "options", "treatment", "budget")


@dataclass(frozen=True)
class CleaningEntry:
    """A ``cleaning`` entry: its label and settings (None for ``none``: the pairs are trained as they are)."""

    label: str
    settings: CleaningSettings | None

    def to_plain(self) -> str | dict[str, Any]:
        return NO_CLEANING if self.settings is None else self.settings.study_dict()


NO_CLEANING_ENTRY = CleaningEntry(NO_CLEANING, None)


def load_cleaning(raw: Any, errors: ErrorList, testbed: str | None = None) -> list[CleaningEntry]:
    """The valid entries (``[none]`` when the study has no ``cleaning`` key); problems reported.
    ``testbed``: the path of a testbed dataset of the study (None: there is none), where ``score_margin``
    is refused."""
    if raw is None:
        return [NO_CLEANING_ENTRY]
    values = as_list(raw)
    if not values:
        errors.invalid("cleaning", raw, f"a non-empty list of cleaning entries ({NO_CLEANING!r} or a mapping with a judge)")
        return []
    cleaning = []
    for index, value in enumerate(values):
        path = f"cleaning[{index}]" if isinstance(raw, list) else "cleaning"
        if value == NO_CLEANING:
            cleaning.append(NO_CLEANING_ENTRY)
            continue
        if not isinstance(value, Mapping):
            errors.invalid(path, value, f"{NO_CLEANING!r} or a mapping with keys {', '.join(CLEANING_KEYS)}")
            continue
        if "judge" not in value:
            errors.message(f"{path}.judge", f"missing; choose one of {', '.join(sorted(JUDGES))}")
            continue
        settings = load_settings(CleaningSettings, value, path, errors)
        if settings is not None:
            if settings.display_label == NO_CLEANING:
                errors.invalid(f"{path}.label", settings.label, f"a label other than {NO_CLEANING!r} (it names the runs without cleaning)")
                continue
            if testbed is not None and _refuse_score_margin(settings, path, testbed, errors):
                continue
            cleaning.append(CleaningEntry(settings.display_label, settings))
    owners: dict[str, int] = {}
    for index, entry in enumerate(cleaning):
        if entry.label in owners:
            errors.invalid(
                f"cleaning[{index}]", entry.to_plain(),
                f"an entry with a label of its own ({entry.label!r} also labels cleaning[{owners[entry.label]}]; give a label)",
            )  # fmt: skip
        owners.setdefault(entry.label, index)
    return cleaning


def _refuse_score_margin(settings: CleaningSettings, path: str, testbed: str, errors: ErrorList) -> bool:
    """Report ``score_margin`` (the judge or an ensemble member) on a study with a testbed dataset."""
    fields = [f"{path}.judge"] + [f"{path}.options.members[{index}].judge" for index in range(len(settings.judges) - 1)]
    refused = False
    for field, (judge, _) in zip(fields, settings.judges, strict=True):
        if judge != SCORE_MARGIN_JUDGE:
            continue
        allowed = sorted(name for name in JUDGES if name != SCORE_MARGIN_JUDGE)
        errors.invalid(
            field, judge,
            f"a judge other than {SCORE_MARGIN_JUDGE!r} on the testbed ({testbed}): the testbed's scores are the gold "
            "reward that made its labels, so they reveal the injected flips; choose one of "
            f"{', '.join(allowed)}, or use {SCORE_MARGIN_JUDGE!r} on a dataset whose scores are independent of its labels",
        )  # fmt: skip
        refused = True
    return refused
