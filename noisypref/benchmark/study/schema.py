"""Study files: the YAML schema, loaded into frozen dataclasses and validated before anything runs.

    name: my_study                       # names the output folder runs/<name>/
    description: optional free text
    plugins: [my_lab.losses]             # modules to import first: your own methods and noise models
                                         # (installed, on PYTHONPATH, or beside this file)
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
      - {label: clean_only, name: dpo, reference: clean_only}      # the oracle: no flipped pair trained on
      - {label: cdpo_known, name: cdpo, hyperparameters: {label_smoothing: realised_flip_rate}}
                                         # a known-rate reference: ε = the run's realised flip rate
    seeds: [0, 1]                        # default: [0]
    models: [{name: testbed}]            # default: [{name: testbed}]; a plain name stands for {name: ...}
      # also: {name: smollm2-135m-instruct, lora: {r: 16}, reference: cached | live}   (ModelSettings)
    training: {steps: 200, checkpoint_every: 50, save_model: false, ...}   # defaults: TrainingSettings
    evaluation: {num_eval_prompts: 256, ...}   # defaults: EvaluationSettings
      # also: {benchmarks: {alpaca_eval: {...}, arena_hard: {...}}}  (noisypref.benchmark.config.benchmarks)
    report: {primary_metrics: [heldout_accuracy, gold_win_rate], baseline: dpo,   # what the report leads with
             pairs: [{method: gamma_dpo, base: robust_dpo}]}   # with/without pairs beyond the automatic ones
    cleaning: [none, {judge: reward_model}]   # default [none]: cleaners crossed with methods (study.cleaning_entries)

Every section is a settings class of `noisypref.benchmark.config.sections` (its defaults and checks
are defined there once); this module adds what only a study has: sweeps, grids, labels, plugins.

`load_study` reads a file, `parse_study` a mapping; both raise `StudyError` (a ValueError) listing
every problem, each with its field path, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.benchmarks import ALPACA_EVAL_HUB_DATASET
from noisypref.benchmark.config.dataset import DatasetSettings
from noisypref.benchmark.config.references import NO_REFERENCE
from noisypref.benchmark.config.sections import (
    TESTBED,
    EvaluationSettings,
    ModelSettings,
    TrackingSettings,
    TrainingSettings,
)
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
from noisypref.benchmark.study.sweeps import (
    MethodEntry,
    MethodVariant,
    base_labels,
    check_unique_labels,
    load_methods,
)
from noisypref.benchmark.study.yaml_io import read_yaml
from noisypref.checks import Invalid, optional, text
from noisypref.plugins import PluginError, add_plugin_folders, import_plugins
from noisypref.report_settings import PAIR_KEYS, ReportSettings
from noisypref.settings import ErrorList, load_settings, settings_dict, unknown_keys

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
MAX_NAME_CHARACTERS = 100  # the name is a folder name (runs/<name>/): file systems allow 255 bytes
NAME_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARACTERS - 1}}}"



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

    def base_labels(self) -> dict[str, str | None]:
        """Each method label's own base label (the with/without pairing, `sweeps.base_labels`)."""
        return base_labels(self.method_variants())

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


def load_study(path: str | Path, *, check_files: bool = True, plugin_folders: Sequence[str | Path] = ()) -> Study:
    """Read and validate a study file; raises StudyError listing every problem. Its plugin modules
    are looked up in the installed packages, then beside the file, then in ``plugin_folders``."""
    folders = [Path(path).parent, *plugin_folders]
    return parse_study(read_yaml(path), source=str(path), check_files=check_files, plugin_folders=folders)


def parse_study(
    raw: Any, source: str = "study", *, check_files: bool = True, plugin_folders: Sequence[str | Path] = ()
) -> Study:
    """Validate a study mapping (as read from YAML) into a `Study`; raises StudyError listing every problem.

    `check_files`: whether the data files of `file` datasets must exist (relative paths are read
    from the current folder); off to read the study of a finished study folder from anywhere.
    `plugin_folders`: searched for the plugin modules after the installed packages.
    """
    errors = ErrorList()
    if not isinstance(raw, Mapping):
        errors.invalid("(top level)", raw, f"a mapping with the keys {', '.join(STUDY_KEYS)}")
        errors.raise_if_any(source)
    plugins = _load_plugins(raw.get("plugins", []), plugin_folders, errors)  # first: they register methods and noise models
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
    testbeds = [path for path, dataset in datasets.items() if dataset.kind == TESTBED]
    cleaning = load_cleaning(raw.get("cleaning"), errors, testbed=testbeds[0] if testbeds else None)
    _check_testbed_model_pairing(datasets, models, errors)
    _check_benchmarks(evaluation, methods, models, check_files, errors)
    check_unique_labels(methods, errors)
    _check_report_pairs(report, methods, errors)
    _check_batch_sizes(datasets, training, methods, evaluation, errors)
    if report is not None and isinstance(raw.get("report"), Mapping):
        _check_report(raw["report"], report, methods, errors)
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


def _load_plugins(raw: Any, folders: Sequence[str | Path], errors: ErrorList) -> tuple[str, ...]:
    """Import the study's plugin modules (and the installed entry points), looking in ``folders``
    after the installed packages; problems reported."""
    values = as_list(raw)
    if values and folders:
        add_plugin_folders(folders)
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


_NAME_RULE = (
    f"a name of at most {MAX_NAME_CHARACTERS} letters, digits, '.', '_' and '-' starting with a letter or "
    "digit (it names a folder)"
)


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


def _check_report_pairs(
    report: ReportSettings | None, methods: Mapping[str, MethodEntry], errors: ErrorList
) -> None:
    """Each declared with/without pair names two distinct competitors of the study."""
    if report is None:
        return
    variants = [variant for method in methods.values() for variant in method.variants()]
    competitors = [variant.label for variant in variants if variant.reference_kind == NO_REFERENCE]
    references = {variant.label for variant in variants if variant.reference_kind != NO_REFERENCE}
    for index, pair in enumerate(report.pairs):
        for key in PAIR_KEYS:
            label = pair[key]
            if label not in competitors:
                why = " (it labels a reference: drawn, never compared)" if label in references else ""
                errors.invalid(
                    f"report.pairs[{index}].{key}",
                    label,
                    f"the label of one of the study's competitors{why}: {', '.join(competitors)}",
                )
        if pair["method"] == pair["base"]:
            errors.invalid(f"report.pairs[{index}].base", pair["base"], "a label other than the pair's method")


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
        benchmarks = settings.benchmarks
        files = []
        if benchmarks.alpaca_eval is not None and benchmarks.alpaca_eval.source != ALPACA_EVAL_HUB_DATASET:
            files.append(("alpaca_eval.source", benchmarks.alpaca_eval.source))
        if benchmarks.arena_hard is not None:
            files.append(("arena_hard.source", benchmarks.arena_hard.source))
        for key, source in files:
            if check_files and not Path(source).is_file():
                errors.invalid(
                    f"{path}.{key}", source, "an existing file (paths are read from the current folder)"
                )



def _check_batch_sizes(
    datasets: Mapping[str, DatasetSettings],
    training: TrainingSettings | None,
    methods: Mapping[str, MethodEntry],
    evaluation: EvaluationSettings | None,
    errors: ErrorList,
) -> None:
    """A step trains on batch_size distinct pairs: no more than a dataset has (known here for the
    testbed; a data file's size is checked by the preflight, a hub dataset's by the engine)."""
    sections = [("training", training)] + [
        (f"{path}.training", method.training) for path, method in methods.items() if "batch_size" in method.training_overrides
    ]
    for section_path, settings in sections:
        if settings is None:
            continue
        for dataset_path, dataset in datasets.items():
            counts = dataset.pair_counts(max_heldout_pairs=getattr(evaluation, "max_heldout_pairs", None))
            if counts is not None and settings.batch_size > counts[0]:
                errors.invalid(
                    f"{section_path}.batch_size",
                    settings.batch_size,
                    f"at most the {counts[0]} training pairs of {dataset_path} (label {dataset.label!r}): "
                    "every optimiser step takes batch_size distinct pairs",
                )
                break


def _check_report(
    raw: Mapping[str, Any], report: ReportSettings, methods: Mapping[str, MethodEntry], errors: ErrorList
) -> None:
    """What the report leads with must exist: declared metrics, and a baseline among the study's
    competitors' labels (a reference is never the baseline). Checked only where the study sets them to
    something other than the default (the default baseline falls back quietly)."""
    if "primary_metrics" in raw:
        declared = declared_metrics()
        for index, name in enumerate(report.primary_metrics):
            if name not in declared:
                close = difflib.get_close_matches(name, list(declared), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.invalid(
                    f"report.primary_metrics[{index}]",
                    name,
                    f"a metric a run computes{hint}: one of {', '.join(sorted(declared))}",
                )
    # the default baseline falls back quietly (a resolved study.yaml spells it out, so "given" alone cannot tell)
    if "baseline" in raw and methods and report.baseline != ReportSettings().baseline:
        labels = [
            variant.label
            for method in methods.values()
            for variant in method.variants()
            if variant.reference_kind == NO_REFERENCE
        ]
        if report.baseline not in labels:
            errors.invalid(
                "report.baseline", report.baseline, f"a competitor's method label of this study: {', '.join(labels)}"
            )


def declared_metrics() -> dict[str, Any]:
    """Every metric the engine declares (noisypref.benchmark.config.metrics), by name. The engine's
    modules declare them where they compute them: imported here, inside the check, because they load
    torch, and only a study that names its primary metrics needs them."""
    import noisypref.benchmark.run.execute  # noqa: F401
    from noisypref.benchmark.config.metrics import METRICS

    return dict(METRICS)
