"""Study files: the YAML schema, loaded into frozen dataclasses and validated before anything runs.

    name: my_study                       # names the output folder runs/<name>/
    description: optional free text
    datasets:                            # default: [{kind: testbed}]
      - {label: testbed, kind: testbed, testbed: {num_train_pairs: 1024}, max_pairs: null}
      - {label: uf, kind: hub, source: HuggingFaceH4/ultrafeedback_binarized, split: train_prefs,
         heldout_fraction: 0.1, max_pairs: 4096}
      - {label: hh, kind: hub, source: Anthropic/hh-rlhf, split: test,
         hub_options: {data_dir: harmless-base}}        # options of datasets.load_dataset
    noise:
      - {model: symmetric, rates: [0, 0.2, 0.4], options: {mode: exact}}
    methods:                             # any hyperparameter given as a list is swept
      - {name: dpo}
      - {name: gamma_dpo, hyperparameters: {tau: [1, 3, 10]}}      # labels gamma_dpo(tau=1), ...
      - {label: dpo_long, name: dpo, training: {steps: 400}}       # per-method overrides
    seeds: [0, 1]                        # default: [0]
    models: [{name: testbed}]            # default: [{name: testbed}]; a plain name stands for {name: ...}
      # also: {name: smollm2-135m-instruct, lora: {r: 16}, reference: cached | live}   (ModelSettings)
    training: {steps: 200, ...}          # defaults: TrainingSettings
    evaluation: {num_eval_prompts: 256, ...}   # defaults: EvaluationSettings
      # also: {benchmarks: {alpaca_eval: {...}, arena_hard: {...}}}  (noisypref.benchmark.evaluation.chat_benchmarks)

`load_study` reads a file, `parse_study` a mapping; both raise `StudyError` (a ValueError) listing
every problem, each with its field path, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from noisypref import methods as method_registry
from noisypref.benchmark.config.checks import (
    ErrorList,
    Invalid,
    SettingsError,
    choice,
    is_mapping,
    load_settings,
    number,
    optional,
    settings_dict,
    show,
    text,
    unknown_keys,
)
from noisypref.benchmark.config.sections import (
    TESTBED,
    DatasetSettings,
    EvaluationSettings,
    MethodSettings,
    ModelSettings,
    ReportSettings,
    TrackingSettings,
    TrainingSettings,
    _match_default_type,
    method_config,
    seed_check,
)
from noisypref.benchmark.evaluation.alpaca_eval import HUB_DATASET as ALPACA_EVAL_HUB_ID
from noisypref.benchmark.evaluation.chat_benchmarks import parse_benchmarks
from noisypref.benchmark.testbed.config import TestbedConfig
from noisypref.noise_injection import NOISE_MODELS
from noisypref.plugins import PluginError, import_plugins

STUDY_KEYS = (
    "name",
    "description",
    "plugins",
    "datasets",
    "noise",
    "methods",
    "seeds",
    "models",
    "training",
    "evaluation",
    "report",
    "tracking",
)
NOISE_KEYS = ("model", "rates", "options")
METHOD_KEYS = ("label", "name", "hyperparameters", "training", "evaluation")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
COMBINATION_PROBLEMS_SHOWN = 3


# ---------------------------------------------------------------------------------------------
# Grid entries


@dataclass(frozen=True)
class NoiseSpec:
    model: str
    rates: tuple[float, ...]
    options: dict[str, Any]  # every option of the model, defaults filled in

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rates": list(self.rates), "options": self.options}


@dataclass(frozen=True)
class MethodVariant:
    """One method setting of the grid: a method entry with one value chosen for each swept hyperparameter."""

    label: str
    name: str
    hyperparameters: dict[str, Any]  # every hyperparameter of the method
    training: TrainingSettings
    evaluation: EvaluationSettings

    @property
    def settings(self) -> MethodSettings:
        return MethodSettings(label=self.label, name=self.name, hyperparameters=self.hyperparameters)


@dataclass(frozen=True)
class MethodSpec:
    label: str | None  # None: the method name
    name: str
    candidates: dict[str, tuple[Any, ...]]  # every hyperparameter -> the values to sweep (one if not swept)
    training: TrainingSettings  # the study's training settings with this entry's overrides
    evaluation: EvaluationSettings
    training_overrides: dict[str, Any]
    evaluation_overrides: dict[str, Any]

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
            variants.append(MethodVariant(label, self.name, hyperparameters, self.training, self.evaluation))
        return variants

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"label": self.label} if self.label else {}
        entry["name"] = self.name
        entry["hyperparameters"] = {
            name: list(values) if len(values) > 1 else values[0] for name, values in self.candidates.items()
        }
        if self.training_overrides:
            entry["training"] = self.training_overrides
        if self.evaluation_overrides:
            entry["evaluation"] = self.evaluation_overrides
        return entry


@dataclass(frozen=True)
class Study:
    name: str
    description: str | None
    datasets: tuple[DatasetSettings, ...]
    noise: tuple[NoiseSpec, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    models: tuple[ModelSettings, ...]
    training: TrainingSettings
    evaluation: EvaluationSettings
    plugins: tuple[str, ...] = ()
    report: ReportSettings = ReportSettings()
    # how runs are watched (trackers), not what they compute: left out of study.yaml (to_dict), so
    # that `--track` never makes a study folder hold "another study"
    tracking: TrackingSettings = TrackingSettings()

    def method_variants(self) -> list[MethodVariant]:
        return [variant for method in self.methods for variant in method.variants()]

    def to_dict(self) -> dict[str, Any]:
        """The resolved study (every default filled in) as plain data; `parse_study` reads it back."""
        resolved: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            resolved["description"] = self.description
        if self.plugins:
            resolved["plugins"] = list(self.plugins)
        resolved.update(
            datasets=[dataset.study_dict() for dataset in self.datasets],
            noise=[noise.to_dict() for noise in self.noise],
            methods=[method.to_dict() for method in self.methods],
            seeds=list(self.seeds),
            models=[settings_dict(model) for model in self.models],
            training=settings_dict(self.training),
            evaluation=settings_dict(self.evaluation),
            report=settings_dict(self.report),
        )
        return json.loads(json.dumps(resolved))  # tuples -> lists: plain YAML/JSON data


def format_value(value: Any) -> str:
    """A hyperparameter value in a label: 3.0 -> 3, 0.3 -> 0.3, 1e-06 -> 1e-06."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


# ---------------------------------------------------------------------------------------------
# Loading


class _StudyLoader(yaml.SafeLoader):
    """Safe YAML, plus: 1e-3 is a number (YAML 1.1 reads it as text) and a repeated key is an error."""


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                "found a list or mapping as a key; a key must be a name",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StudyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates
)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such study file: {path}") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not a text file in UTF-8 (byte {error.start} is {error.object[error.start : error.end]!r}); "
            "a study file is YAML text"
        ) from None
    except OSError as error:  # a folder, a file we may not read, ...
        raise ValueError(f"cannot read the study file {path}: {error.strerror}") from None
    try:
        stream = io.StringIO(text)
        stream.name = str(path)  # YAML's messages then name the file, not "<unicode string>"
        return yaml.load(stream, Loader=_StudyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None


def load_study(path: str | Path, *, check_files: bool = True) -> Study:
    """Read and validate a study file; raises StudyError listing every problem."""
    return parse_study(read_yaml(path), source=str(path), check_files=check_files)


def parse_study(raw: Any, source: str = "study", *, check_files: bool = True) -> Study:
    """Validate a study mapping (as read from YAML) into a `Study`; raises StudyError listing every problem.

    `check_files`: whether the data files of `file` datasets must exist (relative paths are read
    from the current folder); off to read the study of a finished study folder from anywhere.
    """
    errors = ErrorList()
    if not isinstance(raw, Mapping):
        errors.invalid("(top level)", raw, f"a mapping with the keys {', '.join(STUDY_KEYS)}")
        errors.raise_if_any(source)
    plugins = _load_plugins(raw.get("plugins", []), errors)  # first: they register methods and noise models
    unknown_keys(raw, STUDY_KEYS, "", errors)
    for required in ("name", "noise", "methods"):
        if required not in raw:
            errors.message(required, "missing; every study needs a name, noise and methods")

    name = _checked(raw, "name", "name", text(pattern=NAME_PATTERN, described_as=_NAME_RULE), errors)
    description = _checked(raw, "description", "description", optional(text()), errors)
    training = load_settings(TrainingSettings, raw.get("training"), "training", errors)
    evaluation = load_settings(EvaluationSettings, raw.get("evaluation"), "evaluation", errors)
    report = load_settings(ReportSettings, raw.get("report"), "report", errors)
    tracking = load_settings(TrackingSettings, raw.get("tracking"), "tracking", errors)
    datasets = _load_datasets(raw.get("datasets", [{"kind": TESTBED}]), check_files, errors)
    noise = _load_noise(raw.get("noise", []), errors)
    methods = _load_methods(raw.get("methods", []), raw, training, evaluation, errors)
    seeds = _load_seeds(raw.get("seeds", [0]), errors)
    models = _load_models(raw.get("models", [{"name": TESTBED}]), errors)
    _check_testbed_model_pairing(datasets, models, errors)
    _check_benchmarks(evaluation, methods, models, check_files, errors)
    _check_unique_labels(methods, errors)
    errors.raise_if_any(source)
    return Study(
        name=name,
        description=description,
        datasets=tuple(datasets.values()),
        noise=tuple(noise),
        methods=tuple(methods.values()),
        seeds=tuple(seeds),
        models=tuple(models.values()),
        training=training,
        evaluation=evaluation,
        plugins=plugins,
        report=report,
        tracking=tracking,
    )


def _load_plugins(raw: Any, errors: ErrorList) -> tuple[str, ...]:
    """Import the study's plugin modules (and the installed entry points); problems reported."""
    values = _as_list(raw)
    names = []
    for index, value in enumerate(values):
        path = f"plugins[{index}]" if isinstance(raw, list) else "plugins"
        try:
            names.append(text(pattern=r"[A-Za-z_][\w.]*", described_as="an importable module name, e.g. my_lab.losses")(value))
        except Invalid as error:
            errors.invalid(path, value, error.expected)
            continue
        try:
            import_plugins([value])
        except PluginError as error:
            errors.invalid(path, value, f"a module that imports ({error})")
    return tuple(names)


_NAME_RULE = "a name of letters, digits, '.', '_' and '-' starting with a letter or digit (it names a folder)"


def _checked(raw: Mapping[str, Any], key: str, path: str, check: Any, errors: ErrorList) -> Any:
    if key not in raw:
        return None
    try:
        return check(raw[key])
    except Invalid as error:
        errors.invalid(path, raw[key], error.expected)
        return None


def _entries(raw: Any, path: str, errors: ErrorList, what: str) -> list[tuple[str, Mapping[str, Any]]]:
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


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


# --- datasets -------------------------------------------------------------------------------------


def _load_datasets(raw: Any, check_files: bool, errors: ErrorList) -> dict[str, DatasetSettings]:
    """The valid entries by path ("datasets[0]", ...); problems reported."""
    datasets = {}
    for path, entry in _entries(raw, "datasets", errors, "dataset entries"):
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
    if isinstance(entry.get("testbed"), Mapping):  # name each bad testbed field, not only the section
        _report_testbed_fields(entry["testbed"], f"{path}.testbed", errors)
    if len(errors) > problems_before:
        return None
    dataset = load_settings(DatasetSettings, entry, path, errors)
    if dataset is None:
        return None
    if dataset.kind == "file" and check_files and not Path(dataset.source).is_file():
        errors.invalid(f"{path}.source", dataset.source, "an existing json / jsonl / jsonl.gz / parquet file")
        return None
    return dataclasses.replace(dataset, label=dataset.display_label)


def _report_testbed_fields(raw: Mapping[str, Any], path: str, errors: ErrorList) -> None:
    """Unknown keys, each value that fails on its own, or else the combination that fails."""
    defaults = {field.name: field.default for field in dataclasses.fields(TestbedConfig)}
    unknown_keys(raw, list(defaults), path, errors)
    values = {key: _match_default_type(value, defaults[key]) for key, value in raw.items() if key in defaults}
    _validate_each_then_all(
        values, path, lambda given: TestbedConfig.from_dict(given).to_dict(), errors, "testbed settings"
    )


# --- noise ----------------------------------------------------------------------------------------


def _load_noise(raw: Any, errors: ErrorList) -> list[NoiseSpec]:
    noise = []
    for path, entry in _entries(raw, "noise", errors, "noise entries"):
        unknown_keys(entry, NOISE_KEYS, path, errors)
        if "model" not in entry:
            errors.message(f"{path}.model", f"missing; choose one of {', '.join(sorted(NOISE_MODELS))}")
            continue
        model = _checked(entry, "model", f"{path}.model", choice(sorted(NOISE_MODELS)), errors)
        rates = _load_rates(entry.get("rates"), f"{path}.rates", errors)
        if model is None:
            continue
        options = _load_noise_options(model, entry.get("options"), f"{path}.options", errors)
        if rates is not None and options is not None:
            noise.append(NoiseSpec(model, rates, options))
    return noise


def _load_rates(raw: Any, path: str, errors: ErrorList) -> tuple[float, ...] | None:
    if raw is None:
        errors.message(path, "missing; give the target flip rates, e.g. [0, 0.2, 0.4]")
        return None
    values = _as_list(raw)
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
    values = {key: _match_default_type(value, defaults[key]) for key, value in raw.items() if key in defaults}
    return _validate_each_then_all(
        values, path, lambda given: dataclasses.asdict(noise_model.make_options(given)), errors, "options"
    )


# --- methods --------------------------------------------------------------------------------------


def _load_methods(
    raw: Any,
    study_raw: Mapping[str, Any],
    training: TrainingSettings | None,
    evaluation: EvaluationSettings | None,
    errors: ErrorList,
) -> dict[str, MethodSpec]:
    """The valid entries by path ("methods[0]", ...); problems reported."""
    methods = {}
    available = method_registry.available_methods()
    for path, entry in _entries(raw, "methods", errors, "method entries"):
        unknown_keys(entry, METHOD_KEYS, path, errors)
        if "name" not in entry:
            errors.message(f"{path}.name", f"missing; choose one of {', '.join(available)}")
            continue
        name = _checked(entry, "name", f"{path}.name", choice(available), errors)
        label = _checked(entry, "label", f"{path}.label", text(), errors)
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
        methods[path] = MethodSpec(
            label=label,
            name=name,
            candidates=candidates,
            training=method_training[0],
            evaluation=method_evaluation[0],
            training_overrides=method_training[1],
            evaluation_overrides=method_evaluation[1],
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
    return settings, {key: getattr(settings, key) for key in raw}


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
        values = [_match_default_type(item, default) for item in values]
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
            method_config(name, hyperparameters)
        except (ValueError, TypeError) as error:
            failures.append(f"{_show_changed(hyperparameters, defaults)}: {error}")
    if not failures:
        return None if has_unknown_keys else candidates
    # Name each value that is wrong on its own; only if none is, report the combinations.
    for key in (key for key in raw if key in defaults):
        for index, item in enumerate(candidates[key]):
            try:
                method_config(name, {key: item})
            except (ValueError, TypeError) as error:
                item_path = f"{path}.{key}[{index}]" if key in swept_keys else f"{path}.{key}"
                errors.invalid(item_path, item, f"a valid {key} for {name!r} ({error})")
    if len(errors) == problems_before:
        shown = "; ".join(failures[:COMBINATION_PROBLEMS_SHOWN])
        if len(failures) > COMBINATION_PROBLEMS_SHOWN:
            shown += f"; and {len(failures) - COMBINATION_PROBLEMS_SHOWN} more"
        errors.message(path, f"{len(failures)} combination(s) of values do not work together: {shown}")
    return None


def _show_changed(hyperparameters: dict[str, Any], defaults: dict[str, Any]) -> str:
    changed = {key: value for key, value in hyperparameters.items() if value != defaults.get(key)}
    return "{" + ", ".join(f"{key}={show(value)}" for key, value in changed.items()) + "}"


def _check_unique_labels(methods: Mapping[str, MethodSpec], errors: ErrorList) -> None:
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


# --- seeds, models --------------------------------------------------------------------------------


def _load_seeds(raw: Any, errors: ErrorList) -> list[int] | None:
    values = _as_list(raw)
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


def _load_models(raw: Any, errors: ErrorList) -> dict[str, ModelSettings]:
    """The valid entries by path ("models[0]", ...); problems reported."""
    models = {}
    if isinstance(raw, list):  # a plain name stands for {name: ...}
        raw = [{"name": entry} if isinstance(entry, str) else entry for entry in raw]
    for path, entry in _entries(raw, "models", errors, "model entries"):
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


def _check_testbed_model_pairing(
    datasets: Mapping[str, DatasetSettings], models: Mapping[str, ModelSettings], errors: ErrorList
) -> None:
    real_data = [(path, dataset) for path, dataset in datasets.items() if dataset.kind != TESTBED]
    for path, model in models.items():
        if model.name == TESTBED and real_data:
            dataset_path, dataset = real_data[0]
            errors.invalid(
                f"{path}.name",
                model.name,
                "a hub model id or local folder: the testbed policy only reads testbed data, and every "
                f"model is trained on every dataset ({dataset_path} is a {dataset.kind} dataset); "
                "put testbed and real-data grids in separate studies",
            )


def _check_benchmarks(
    evaluation: EvaluationSettings | None,
    methods: Mapping[str, MethodSpec],
    models: Mapping[str, ModelSettings],
    check_files: bool,
    errors: ErrorList,
) -> None:
    """Benchmarks need a chat model, and their local files must exist where the study runs."""
    sections = [("evaluation.benchmarks", evaluation)] + [
        (f"{path}.evaluation.benchmarks", method.evaluation) for path, method in methods.items()
    ]
    for path, settings in sections:
        if settings is None or not settings.benchmarks:
            continue
        if path != "evaluation.benchmarks" and settings.benchmarks == getattr(evaluation, "benchmarks", None):
            continue  # inherited from the study's evaluation section: reported there
        testbed_models = [model_path for model_path, model in models.items() if model.name == TESTBED]
        if testbed_models:
            errors.message(
                path,
                f"needs chat models, but {testbed_models[0]} is the testbed policy (no chat template); "
                "put benchmarks in a study of real models",
            )
        benchmarks = parse_benchmarks(settings.benchmarks)
        files = []
        if benchmarks.alpaca_eval is not None and benchmarks.alpaca_eval.source != ALPACA_EVAL_HUB_ID:
            files.append(("alpaca_eval.source", benchmarks.alpaca_eval.source))
        if benchmarks.arena_hard is not None:
            files.append(("arena_hard.source", benchmarks.arena_hard.source))
        for key, source in files:
            if check_files and not Path(source).is_file():
                errors.invalid(
                    f"{path}.{key}", source, "an existing file (paths are read from the current folder)"
                )


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
