"""Study files: the YAML schema, loaded into frozen dataclasses and validated before anything runs.

    name: my_study                       # names the output folder runs/<name>/
    description: optional free text
    plugins: [my_lab.losses]             # modules to import first: your own methods and noise models
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
    training: {steps: 200, checkpoint_every: 50, save_model: false, ...}   # defaults: TrainingSettings
    evaluation: {num_eval_prompts: 256, ...}   # defaults: EvaluationSettings
      # also: {benchmarks: {alpaca_eval: {...}, arena_hard: {...}}}  (noisypref.benchmark.evaluation.chat_benchmarks)
    report: {primary_metrics: [heldout_accuracy, gold_win_rate], baseline: dpo}   # what the report leads with
    cleaning: [none, {judge: reward_model}]   # default [none]: cleaners crossed with methods (study.cleaning_entries)

Every section is a settings class of `noisypref.benchmark.config.sections` (its defaults and checks
are defined there once); this module adds what only a study has: sweeps, grids, labels, plugins.

`load_study` reads a file, `parse_study` a mapping; both raise `StudyError` (a ValueError) listing
every problem, each with its field path, the bad value and what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.checks import (
    ErrorList,
    Invalid,
    load_settings,
    optional,
    settings_dict,
    text,
    unknown_keys,
)
from noisypref.benchmark.config.sections import (
    TESTBED,
    DatasetSettings,
    EvaluationSettings,
    ModelSettings,
    ReportSettings,
    TrackingSettings,
    TrainingSettings,
)
from noisypref.benchmark.evaluation.alpaca_eval import HUB_DATASET as ALPACA_EVAL_HUB_ID
from noisypref.benchmark.evaluation.chat_benchmarks import parse_benchmarks
from noisypref.benchmark.study.cleaning_entries import NO_CLEANING_ENTRY, CleaningEntry, load_cleaning
from noisypref.benchmark.study.entries import (
    NoiseEntry,
    as_list,
    checked,
    load_datasets,
    load_models,
    load_noise,
    load_seeds,
)
from noisypref.benchmark.study.sweeps import MethodEntry, MethodVariant, check_unique_labels, load_methods
from noisypref.benchmark.study.yaml_io import read_yaml
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
    "cleaning",
)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"



@dataclass(frozen=True)
class Study:
    name: str
    description: str | None
    datasets: tuple[DatasetSettings, ...]
    noise: tuple[NoiseEntry, ...]
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...]
    models: tuple[ModelSettings, ...]
    training: TrainingSettings
    evaluation: EvaluationSettings
    plugins: tuple[str, ...] = ()
    report: ReportSettings = ReportSettings()
    # how runs are watched (trackers), not what they compute: left out of study.yaml (to_dict), so
    # that `--track` never makes a study folder hold "another study"
    tracking: TrackingSettings = TrackingSettings()
    cleaning: tuple[CleaningEntry, ...] = (NO_CLEANING_ENTRY,)

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
        if self.cleaning != (NO_CLEANING_ENTRY,):  # a study without cleaning resolves as before
            resolved["cleaning"] = [entry.to_plain() for entry in self.cleaning]
        return json.loads(json.dumps(resolved))  # tuples -> lists: plain YAML/JSON data


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

    name = checked(raw, "name", "name", text(pattern=NAME_PATTERN, described_as=_NAME_RULE), errors)
    description = checked(raw, "description", "description", optional(text()), errors)
    training = load_settings(TrainingSettings, raw.get("training"), "training", errors)
    evaluation = load_settings(EvaluationSettings, raw.get("evaluation"), "evaluation", errors)
    report = load_settings(ReportSettings, raw.get("report"), "report", errors)
    tracking = load_settings(TrackingSettings, raw.get("tracking"), "tracking", errors)
    datasets = load_datasets(raw.get("datasets", [{"kind": TESTBED}]), check_files, errors)
    noise = load_noise(raw.get("noise", []), errors)
    methods = load_methods(raw.get("methods", []), raw, training, evaluation, errors)
    seeds = load_seeds(raw.get("seeds", [0]), errors)
    models = load_models(raw.get("models", [{"name": TESTBED}]), errors)
    cleaning = load_cleaning(raw.get("cleaning"), errors)
    _check_testbed_model_pairing(datasets, models, errors)
    _check_benchmarks(evaluation, methods, models, check_files, errors)
    check_unique_labels(methods, errors)
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
        cleaning=tuple(cleaning),
    )


def _load_plugins(raw: Any, errors: ErrorList) -> tuple[str, ...]:
    """Import the study's plugin modules (and the installed entry points); problems reported."""
    values = as_list(raw)
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
    methods: Mapping[str, MethodEntry],
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

