"""The ``cleaning`` entries of a study file: the cleaners crossed with the methods, so that cleaner × loss
is one grid. ``none`` (the default and only entry of a study without the key) trains on the noisy pairs.

    cleaning:
      - none
      - {judge: oracle}                                   # the flip record: a reference, never ranked
      - {judge: reference_margin, options: {normalise: mean}}
      - {label: rm_flip, judge: reward_model, treatment: flip, budget: {fraction: 0.2}}
      - {judge: ensemble, options: {rule: majority}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noisypref.benchmark.config.cleaning import CleaningSettings
from noisypref.benchmark.study.entries import as_list
from noisypref.cleaning import JUDGES
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


def load_cleaning(raw: Any, errors: ErrorList) -> list[CleaningEntry]:
    """The valid entries (``[none]`` when the study has no ``cleaning`` key); problems reported."""
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
