"""The entries of a study file (datasets, noise, seeds, models), each checked and every problem
reported with its path; the methods entries and their sweeps are in `study.sweeps`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.dataset import DatasetSettings
from noisypref.benchmark.config.sections import TESTBED, ModelSettings, match_default_type, seed_check
from noisypref.benchmark.testbed.config import TestbedConfig
from noisypref.checks import Invalid, choice, number
from noisypref.noise_injection import NOISE_MODELS
from noisypref.settings import ErrorList, is_mapping, load_settings, unknown_keys

NOISE_KEYS = ("model", "rates", "options")


# ---------------------------------------------------------------------------------------------
# Grid entries


@dataclass(frozen=True)
class NoiseEntry:
    """A ``noise`` entry of a study file: one noise model at several flip rates."""

    model: str
    rates: tuple[float, ...]
    options: dict[str, Any]  # every option of the model, defaults filled in

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rates": list(self.rates), "options": self.options}


def checked(raw: Mapping[str, Any], key: str, path: str, check: Any, errors: ErrorList) -> Any:
    if key not in raw:
        return None
    try:
        return check(raw[key])
    except Invalid as error:
        errors.invalid(path, raw[key], error.expected)
        return None


def entries(raw: Any, path: str, errors: ErrorList, what: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(path, mapping) of each entry of a non-empty list of mappings; problems reported."""
    if not isinstance(raw, list) or not raw:
        errors.invalid(path, raw, f"a non-empty list of {what}")
        return []
    entries = []
    for index, entry in enumerate(raw):
        entry_path = f"{path}[{index}]"
        if is_mapping(entry, entry_path, errors, what):
            entries.append((entry_path, entry))
    return entries


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


# --- datasets -------------------------------------------------------------------------------------


def load_datasets(raw: Any, check_files: bool, errors: ErrorList) -> dict[str, DatasetSettings]:
    """The valid entries by path ("datasets[0]", ...); problems reported."""
    datasets = {}
    for path, entry in entries(raw, "datasets", errors, "dataset entries"):
        dataset = _load_dataset(entry, path, check_files, errors)
        if dataset is not None:
            datasets[path] = dataset
    owners: dict[str, str] = {}
    for path, dataset in datasets.items():
        if dataset.label in owners:
            errors.invalid(
                f"{path}.label",
                dataset.label,
                f"a label not used by another dataset ({owners[dataset.label]} has it)",
            )
        owners.setdefault(dataset.label, path)
    return datasets


def _load_dataset(
    entry: Mapping[str, Any], path: str, check_files: bool, errors: ErrorList
) -> DatasetSettings | None:
    problems_before = len(errors)
    if entry.get("kind", TESTBED) == TESTBED:
        for key in ("split", "heldout_fraction"):
            if key in entry:
                errors.message(
                    f"{path}.{key}",
                    "applies to kind 'file' or 'hub' only; a testbed dataset is set up by its 'testbed' "
                    "settings (held-out pairs: testbed.num_heldout_pairs)",
                )
    testbed = entry.get("testbed")
    if isinstance(testbed, Mapping):  # unknown keys named with the closest known one; the rest checked below
        known = [field.name for field in dataclasses.fields(TestbedConfig)]
        unknown_keys(testbed, known, f"{path}.testbed", errors)
        entry = {**entry, "testbed": {key: value for key, value in testbed.items() if key in known}}
    dataset = load_settings(DatasetSettings, entry, path, errors)
    if dataset is None or len(errors) > problems_before:
        return None
    if dataset.kind == "file" and check_files and not Path(dataset.source).is_file():
        errors.invalid(f"{path}.source", dataset.source, "an existing json / jsonl / jsonl.gz / parquet file")
        return None
    return dataclasses.replace(dataset, label=dataset.display_label)


# --- noise ----------------------------------------------------------------------------------------


def load_noise(raw: Any, errors: ErrorList) -> list[NoiseEntry]:
    noise = []
    for path, entry in entries(raw, "noise", errors, "noise entries"):
        unknown_keys(entry, NOISE_KEYS, path, errors)
        if "model" not in entry:
            errors.message(f"{path}.model", f"missing; choose one of {', '.join(sorted(NOISE_MODELS))}")
            continue
        model = checked(entry, "model", f"{path}.model", choice(sorted(NOISE_MODELS)), errors)
        rates = _load_rates(entry.get("rates"), f"{path}.rates", errors)
        if model is None:
            continue
        options = _load_noise_options(model, entry.get("options"), f"{path}.options", errors)
        if rates is not None and options is not None:
            noise.append(NoiseEntry(model, rates, options))
    return noise


def _load_rates(raw: Any, path: str, errors: ErrorList) -> tuple[float, ...] | None:
    if raw is None:
        errors.message(path, "missing; give the target flip rates, e.g. [0, 0.2, 0.4]")
        return None
    values = as_list(raw)
    if not values:
        errors.invalid(path, raw, "a non-empty list of flip rates in [0, 1]")
        return None
    rates = []
    for index, value in enumerate(values):
        try:
            rates.append(number(minimum=0, maximum=1)(value))
        except Invalid as error:
            errors.invalid(f"{path}[{index}]", value, f"a flip rate: {error.expected}")
    if len(rates) < len(values):
        return None
    if len(set(rates)) < len(rates):
        errors.invalid(path, raw, "distinct flip rates (a rate is listed twice)")
        return None
    return tuple(rates)


def _load_noise_options(model: str, raw: Any, path: str, errors: ErrorList) -> dict[str, Any] | None:
    if raw is None:
        raw = {}
    if not is_mapping(raw, path, errors, f"options of noise model {model!r}"):
        return None
    noise_model = NOISE_MODELS[model]
    defaults = {field.name: field.default for field in dataclasses.fields(noise_model.options_type)}
    unknown_keys(raw, list(defaults), path, errors)
    values = {key: match_default_type(value, defaults[key]) for key, value in raw.items() if key in defaults}
    return _validate_each_then_all(
        values, path, lambda given: dataclasses.asdict(noise_model.make_options(given)), errors, "options"
    )


# --- seeds, models --------------------------------------------------------------------------------


def load_seeds(raw: Any, errors: ErrorList) -> list[int] | None:
    """A list of distinct seeds. A single number is refused: `seeds: 3` reads as "three seeds" as
    easily as "the seed 3"."""
    if not isinstance(raw, list):
        example = f"[{raw}] for the one seed {raw}, or [{', '.join(map(str, range(raw)))}] for {raw} seeds" if (
            isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 5
        ) else "[0, 1, 2] for three seeds"
        errors.invalid("seeds", raw, f"a list of seeds, e.g. {example} (a single number is ambiguous)")
        return None
    values = raw
    if not values:
        errors.invalid("seeds", raw, "a non-empty list of integers >= 0")
        return None
    seeds = []
    for index, value in enumerate(values):
        try:
            seeds.append(seed_check(value))
        except Invalid as error:
            errors.invalid(f"seeds[{index}]", value, error.expected)
    if len(seeds) < len(values):
        return None
    if len(set(seeds)) < len(seeds):
        errors.invalid("seeds", raw, "distinct seeds (a seed is listed twice)")
        return None
    return seeds


def load_models(raw: Any, errors: ErrorList) -> dict[str, ModelSettings]:
    """The valid entries by path ("models[0]", ...); problems reported."""
    models = {}
    if isinstance(raw, list):  # a plain name stands for {name: ...}
        raw = [{"name": entry} if isinstance(entry, str) else entry for entry in raw]
    for path, entry in entries(raw, "models", errors, "model entries"):
        model = load_settings(ModelSettings, entry, path, errors)
        if model is not None:
            models[path] = model
    owners: dict[str, str] = {}
    for path, model in models.items():
        if model.name in owners:
            errors.invalid(
                f"{path}.name", model.name, f"a model not listed before ({owners[model.name]} is the same)"
            )
        owners.setdefault(model.name, path)
    return models


# --- shared ---------------------------------------------------------------------------------------


def _validate_each_then_all(
    values: dict[str, Any], path: str, build: Any, errors: ErrorList, what: str
) -> dict[str, Any] | None:
    """Return build(values) as plain data; if it fails, name each value that fails on its own,
    or, where none does, report the combination."""
    try:
        return json.loads(json.dumps(build(values)))
    except (ValueError, TypeError) as combined_error:
        problems_before = len(errors)
        for key, value in values.items():
            try:
                build({key: value})
            except (ValueError, TypeError) as error:
                errors.invalid(f"{path}.{key}", value, f"a valid value ({error})")
        if len(errors) == problems_before:
            errors.message(path, f"these {what} do not work together: {combined_error}")
        return None
