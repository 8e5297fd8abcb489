"""The ``methods`` entries of a study file: hyperparameter sweeps expanded into labelled variants,
per-entry training and evaluation overrides, references (``reference: clean_only``, hyperparameters
set to ``realised_flip_rate``; `config.references`), each competitor's own base for the with/without
comparison, every problem reported with its path."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from noisypref import methods as method_registry
from noisypref.benchmark.config.references import (
    CLEAN_ONLY,
    NO_REFERENCE,
    REALISED_FLIP_RATE,
    is_symbol,
    reference_kind,
)
from noisypref.benchmark.config.sections import (
    EvaluationSettings,
    MethodSettings,
    TrainingSettings,
    match_default_type,
    method_config,
    reference_check,
)
from noisypref.benchmark.study.entries import checked, entries
from noisypref.checks import choice, show, text
from noisypref.settings import ErrorList, SettingsError, is_mapping, settings_dict, unknown_keys

METHOD_KEYS = ("label", "name", "hyperparameters", "reference", "training", "evaluation")
COMBINATION_PROBLEMS_SHOWN = 3


@dataclass(frozen=True)
class MethodVariant:
    """One method setting of the grid: a method entry with one value chosen for each swept hyperparameter."""

    label: str
    name: str
    hyperparameters: dict[str, Any]  # every hyperparameter of the method (a symbol stays a symbol)
    training: TrainingSettings
    evaluation: EvaluationSettings
    reference: str = NO_REFERENCE  # as the entry states it: none or clean_only

    @property
    def settings(self) -> MethodSettings:
        return MethodSettings(
            label=self.label, name=self.name, hyperparameters=self.hyperparameters, reference=self.reference
        )

    @property
    def reference_kind(self) -> str:
        """none (a competitor, ranked), clean_only or known_rate (a reference: drawn, never ranked)."""
        return reference_kind(self.reference, self.hyperparameters)


@dataclass(frozen=True)
class MethodEntry:
    """A ``methods`` entry of a study file: one method, its hyperparameter sweeps and overrides."""

    label: str | None  # None: the method name
    name: str
    candidates: dict[str, tuple[Any, ...]]  # every hyperparameter -> the values to sweep (one if not swept)
    training: TrainingSettings  # the study's training settings with this entry's overrides
    evaluation: EvaluationSettings
    training_overrides: dict[str, Any]
    evaluation_overrides: dict[str, Any]
    reference: str = NO_REFERENCE  # none or clean_only, as the entry states it

    @property
    def swept(self) -> list[str]:
        return [name for name, values in self.candidates.items() if len(values) > 1]

    def variants(self) -> list[MethodVariant]:
        """One variant per combination of swept values, labelled e.g. ``gamma_dpo(tau=3)``."""
        base_label = self.label or self.name
        swept = self.swept
        variants = []
        for combination in itertools.product(*self.candidates.values()):
            hyperparameters = dict(zip(self.candidates, combination, strict=True))
            label = base_label
            if swept:
                label += (
                    "(" + ", ".join(f"{name}={format_value(hyperparameters[name])}" for name in swept) + ")"
                )
            variants.append(
                MethodVariant(label, self.name, hyperparameters, self.training, self.evaluation, self.reference)
            )
        return variants

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"label": self.label} if self.label else {}
        entry["name"] = self.name
        entry["hyperparameters"] = {
            name: list(values) if len(values) > 1 else values[0] for name, values in self.candidates.items()
        }
        if self.reference != NO_REFERENCE:
            entry["reference"] = self.reference
        if self.training_overrides:
            entry["training"] = self.training_overrides
        if self.evaluation_overrides:
            entry["evaluation"] = self.evaluation_overrides
        return entry


def format_value(value: Any) -> str:
    """A hyperparameter value in a label: 3.0 -> 3, 0.3 -> 0.3, 1e-06 -> 1e-06."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


# --- methods --------------------------------------------------------------------------------------


def load_methods(
    raw: Any,
    study_raw: Mapping[str, Any],
    training: TrainingSettings | None,
    evaluation: EvaluationSettings | None,
    errors: ErrorList,
) -> dict[str, MethodEntry]:
    """The valid entries by path ("methods[0]", ...); problems reported."""
    methods = {}
    available = method_registry.available_methods()
    for path, entry in entries(raw, "methods", errors, "method entries"):
        unknown_keys(entry, METHOD_KEYS, path, errors)
        if "name" not in entry:
            errors.message(f"{path}.name", f"missing; choose one of {', '.join(available)}")
            continue
        name = checked(entry, "name", f"{path}.name", choice(available), errors)
        label = checked(entry, "label", f"{path}.label", text(), errors)
        reference = checked(entry, "reference", f"{path}.reference", reference_check, errors) or NO_REFERENCE
        method_training = _override(
            TrainingSettings, training, study_raw.get("training"), entry.get("training"), f"{path}.training", errors
        )
        method_evaluation = _override(
            EvaluationSettings, evaluation, study_raw.get("evaluation"), entry.get("evaluation"), f"{path}.evaluation", errors
        )
        if name is None:
            continue
        candidates = _load_hyperparameters(
            name, entry.get("hyperparameters"), f"{path}.hyperparameters", errors
        )
        if candidates is None or method_training is None or method_evaluation is None:
            continue
        symbolic = sorted({key for key, values in candidates.items() for value in values if is_symbol(value)})
        if reference == CLEAN_ONLY and symbolic:
            errors.invalid(
                f"{path}.reference",
                reference,
                f"no reference here, or no {REALISED_FLIP_RATE!r} in hyperparameters ({', '.join(symbolic)}): a "
                "clean_only run trains on no flipped pair, so an assumed flip rate has nothing to assume",
            )
            continue
        methods[path] = MethodEntry(
            label=label,
            name=name,
            candidates=candidates,
            training=method_training[0],
            evaluation=method_evaluation[0],
            training_overrides=method_training[1],
            evaluation_overrides=method_evaluation[1],
            reference=reference,
        )
    return methods


def _override(
    settings_type: type, study_settings: Any, study_raw: Any, raw: Any, path: str, errors: ErrorList
) -> tuple[Any, dict[str, Any]] | None:
    """(the study's settings with a method entry's overrides applied, the checked overrides).

    The overrides are checked on top of the study's own values, and only their problems are reported
    here: a problem of the study's section alone is reported there."""
    if raw is None:
        return (study_settings, {}) if study_settings is not None else None
    if not is_mapping(raw, path, errors, "settings"):
        return None
    names = [field.name for field in dataclasses.fields(settings_type)]
    if unknown_keys(raw, names, path, errors):
        return None
    base = dict(study_raw) if isinstance(study_raw, Mapping) else {}
    try:
        settings = settings_type(**{key: value for key, value in {**base, **raw}.items() if key in names})
    except SettingsError as error:
        for name, value, expected in error.problems:
            if name in raw:
                errors.invalid(f"{path}.{name}", value, expected)
        return None
    if study_settings is None:
        return None
    return settings, {key: value for key, value in settings_dict(settings).items() if key in raw}


def _load_hyperparameters(
    name: str, raw: Any, path: str, errors: ErrorList
) -> dict[str, tuple[Any, ...]] | None:
    if raw is None:
        raw = {}
    if not is_mapping(raw, path, errors, f"hyperparameters of method {name!r}"):
        return None
    defaults = method_registry.hyperparameter_defaults(name)
    has_unknown_keys = unknown_keys(raw, list(defaults), path, errors)
    problems_before = len(errors)
    candidates: dict[str, tuple[Any, ...]] = {}
    swept_keys: set[str] = set()
    for key, default in defaults.items():
        if key not in raw:
            if default is dataclasses.MISSING:
                errors.message(f"{path}.{key}", f"missing; method {name!r} has no default for it")
            candidates[key] = (default,)
            continue
        value = raw[key]
        # A list sweeps, unless the hyperparameter itself is a list (then a list of lists sweeps).
        sweeps = isinstance(value, list) and not (
            isinstance(default, (list, tuple)) and not all(isinstance(item, list) for item in value)
        )
        values = value if sweeps else [value]
        if not values:
            errors.invalid(f"{path}.{key}", value, "a value, or a non-empty list of values to sweep")
            continue
        values = [match_default_type(item, default) for item in values]
        if len({json.dumps(item, sort_keys=True) for item in values}) < len(values):
            errors.invalid(f"{path}.{key}", value, "distinct values to sweep (a value is listed twice)")
            continue
        candidates[key] = tuple(values)
        if sweeps:
            swept_keys.add(key)
    if len(errors) > problems_before:
        return None
    failures = []
    for combination in itertools.product(*candidates.values()):
        hyperparameters = dict(zip(candidates, combination, strict=True))
        try:
            _check_method(name, hyperparameters)
        except (ValueError, TypeError) as error:
            failures.append(f"{_show_changed(hyperparameters, defaults)}: {error}")
    if not failures:
        return None if has_unknown_keys else candidates
    # Name each value that is wrong on its own; only if none is, report the combinations.
    for key in (key for key in raw if key in defaults):
        for index, item in enumerate(candidates[key]):
            try:
                _check_method(name, {key: item})
            except (ValueError, TypeError) as error:
                item_path = f"{path}.{key}[{index}]" if key in swept_keys else f"{path}.{key}"
                errors.invalid(item_path, item, f"a valid {key} for {name!r} ({error})")
    if len(errors) == problems_before:
        shown = "; ".join(failures[:COMBINATION_PROBLEMS_SHOWN])
        if len(failures) > COMBINATION_PROBLEMS_SHOWN:
            shown += f"; and {len(failures) - COMBINATION_PROBLEMS_SHOWN} more"
        errors.message(path, f"{len(failures)} combination(s) of values do not work together: {shown}")
    return None


def base_labels(variants: Sequence[MethodVariant]) -> dict[str, str | None]:
    """Each variant's own base among ``variants``, by label: the with/without pairing of dynamic margins.

    A competitor whose method declares a ``base_method`` (γ-DPO: DPO, γ-SimPO: SimPO) is paired with
    the first competitor of that method whose every hyperparameter the two share (by the base's names,
    ``base_hyperparameter_names``: γ-SimPO's gamma0 is SimPO's gamma) has the same value, and whose
    training and evaluation settings are the same. None for a method without a base, when the study
    has no such variant, and for references (drawn, never compared)."""
    competitors = [variant for variant in variants if variant.reference_kind == NO_REFERENCE]
    pairs: dict[str, str | None] = {variant.label: None for variant in variants}
    for variant in competitors:
        method_class = method_registry.method_class(variant.name)
        if method_class.base_method is None:
            continue
        for candidate in competitors:
            if candidate.name == method_class.base_method and _same_shared_settings(
                variant, candidate, method_class.base_hyperparameter_names
            ):
                pairs[variant.label] = candidate.label
                break
    return pairs


def _same_shared_settings(variant: MethodVariant, base: MethodVariant, base_names: Mapping[str, str]) -> bool:
    for name, value in variant.hyperparameters.items():
        base_name = base_names.get(name, name)
        if base_name in base.hyperparameters and base.hyperparameters[base_name] != value:
            return False
    return variant.training == base.training and variant.evaluation == base.evaluation


def _check_method(name: str, hyperparameters: dict[str, Any]) -> None:
    """The method's own checks (in their own words), then what a run of it needs (MethodSettings)."""
    method_config(name, hyperparameters)
    MethodSettings(label=name, name=name, hyperparameters=hyperparameters)


def _show_changed(hyperparameters: dict[str, Any], defaults: dict[str, Any]) -> str:
    changed = {key: value for key, value in hyperparameters.items() if value != defaults.get(key)}
    return "{" + ", ".join(f"{key}={show(value)}" for key, value in changed.items()) + "}"


def check_unique_labels(methods: Mapping[str, MethodEntry], errors: ErrorList) -> None:
    owners: dict[str, str] = {}
    for path, method in methods.items():
        for variant in method.variants():
            if variant.label in owners:
                first = "this entry" if owners[variant.label] == path else owners[variant.label]
                clash = f"{variant.label!r} also labels runs of {first}; labels must be unique after expanding sweeps"
                if method.label is None:
                    errors.message(f"{path}.label", f"missing: {clash}, so give the entries distinct labels")
                else:
                    errors.invalid(f"{path}.label", method.label, f"a distinct label ({clash})")
                break
            owners[variant.label] = path

