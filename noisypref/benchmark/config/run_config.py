"""The run config: the one contract between a study and the engine, and the run id that names it.

A run config is plain data (it is written to config.json and read back)::

    {"study": ..., "dataset": {...}, "noise": {"model", "rate", "options"},
     "method": {"label", "name", "hyperparameters", ["reference"]}, "model": {...}, "training": {...},
     "evaluation": {...}, "seed": 0}

plus, for a run whose noisy training pairs a judge cleans first, ``"cleaning": {"judge", "options",
"treatment", "budget"}`` (`noisypref.benchmark.config.cleaning`); a run without it keeps its id.

each section being the plain form of its settings class (`noisypref.benchmark.config.sections`), every
default filled in, except fields added since 0.1 while at their default (`checks.run_id_section`).
`make_run_config` builds one from settings, `parse_run_config` checks one and returns `RunConfig`,
`run_id` names it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noisypref.benchmark.config.cleaning import CleaningSettings
from noisypref.benchmark.config.dataset import DatasetSettings
from noisypref.benchmark.config.references import symbolic_hyperparameters
from noisypref.benchmark.config.sections import (
    TESTBED,
    EvaluationSettings,
    MethodSettings,
    ModelSettings,
    NoiseSettings,
    TrainingSettings,
    method_config,
    seed_check,
)
from noisypref.checks import Invalid, show
from noisypref.settings import run_id_section

RUN_KEYS = ("study", "dataset", "noise", "method", "model", "training", "evaluation", "seed")
OPTIONAL_RUN_KEYS = ("cleaning",)  # present only where a judge cleans the training pairs
RUN_ID_HEX_DIGITS = 12


@dataclass(frozen=True)
class RunConfig:
    """A validated run config; ``raw`` is the dict it came from."""

    study: str
    dataset: DatasetSettings
    noise: NoiseSettings
    method: MethodSettings
    model: ModelSettings
    training: TrainingSettings
    evaluation: EvaluationSettings
    seed: int
    raw: dict[str, Any]
    cleaning: CleaningSettings | None = None

    @property
    def run_id(self) -> str:
        return run_id(self.raw)


def run_id(run_config: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of the config without "study"."""
    payload = json.dumps({key: value for key, value in run_config.items() if key != "study"}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:RUN_ID_HEX_DIGITS]


def make_run_config(
    *,
    study: str = "default",
    dataset: DatasetSettings | None = None,
    noise: NoiseSettings | None = None,
    method: MethodSettings | None = None,
    model: ModelSettings | None = None,
    training: TrainingSettings | None = None,
    evaluation: EvaluationSettings | None = None,
    seed: int = 0,
    cleaning: CleaningSettings | None = None,
) -> dict[str, Any]:
    """The run config of these settings (defaults for any not given: DPO on the default testbed, no noise,
    no cleaning)."""
    method = method or MethodSettings()
    hyperparameters = run_id_section(method_config(method.name, method.hyperparameters))
    # a symbolic value stays symbolic in the run config: its run id names the symbol, not a rate
    hyperparameters.update(symbolic_hyperparameters(method.hyperparameters))
    # label, name, hyperparameters, and "reference" unless it is a competitor's (since 0.2)
    method_section = {**run_id_section(method), "hyperparameters": hyperparameters}
    config = {
        "study": study,
        "dataset": (dataset or DatasetSettings()).run_dict(),
        "noise": run_id_section(noise or NoiseSettings()),
        "method": method_section,
        "model": run_id_section(model or ModelSettings()),
        "training": run_id_section(training or TrainingSettings()),
        "evaluation": run_id_section(evaluation or EvaluationSettings()),
        "seed": seed,
    }
    if cleaning is not None:
        config["cleaning"] = cleaning.run_dict()
    return json.loads(json.dumps(config))  # tuples -> lists: hashes the same after a JSON round trip


def default_run_config(**sections: Any) -> dict[str, Any]:
    """The default run config (`make_run_config()`) with whole sections replaced by ``sections``."""
    config = make_run_config()
    config.update(copy.deepcopy(sections))
    return config


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Check a run config; ``ValueError`` names the field path, the value and what is allowed."""
    if not isinstance(run_config, Mapping):
        raise ValueError(f"run config = {show(run_config)} is invalid: expected a mapping with keys {RUN_KEYS}")
    missing = [key for key in RUN_KEYS if key not in run_config]
    unknown = sorted(set(run_config) - set(RUN_KEYS) - set(OPTIONAL_RUN_KEYS))
    if missing or unknown:
        raise ValueError(
            f"run config: missing key(s) {missing}, unknown key(s) {unknown}; expected exactly {RUN_KEYS} "
            f"(and optionally {OPTIONAL_RUN_KEYS})"
        )
    try:
        seed = seed_check(run_config["seed"])
    except Invalid as error:
        raise ValueError(f"seed = {show(run_config['seed'])} is invalid: expected {error.expected}") from None
    sections = {}
    for name, settings_type in (  # each section holds every field but those added since 0.1
        ("dataset", DatasetSettings),
        ("noise", NoiseSettings),
        ("method", MethodSettings),
        ("model", ModelSettings),
        ("training", TrainingSettings),
        ("evaluation", EvaluationSettings),
    ):
        values = run_config[name]
        if isinstance(values, Mapping):
            required = [
                field.name
                for field in dataclasses.fields(settings_type)
                if "since" not in field.metadata and not (name == "dataset" and field.name == "label")
            ]
            missing = [key for key in required if key not in values]
            if missing:
                raise ValueError(f"{name}: missing key(s) {missing}; a run config gives every setting")
        sections[name] = settings_type.from_dict(values, name)
    dataset, model, evaluation = sections["dataset"], sections["model"], sections["evaluation"]
    if model.name == TESTBED and dataset.kind != TESTBED:
        raise ValueError(
            f"model.name = {TESTBED!r} is invalid with dataset.kind = {dataset.kind!r}: the testbed's "
            "reference policy needs the testbed dataset; give a hub id or a local model folder"
        )
    if evaluation.benchmarks and model.name == TESTBED:
        raise ValueError(
            "evaluation.benchmarks is invalid with model.name = 'testbed': the benchmarks need a chat "
            "model (the testbed's word-level tokenizer has no chat template)"
        )
    cleaning = None
    if "cleaning" in run_config:
        cleaning = CleaningSettings.from_dict(run_config["cleaning"], "cleaning")
    return RunConfig(
        study=str(run_config["study"]), seed=seed, raw=copy.deepcopy(dict(run_config)), cleaning=cleaning, **sections
    )
