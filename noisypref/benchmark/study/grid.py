"""Expanding a study into runs: datasets x noise entries x rates x cleaning x methods x seeds x models.

Each run is a fully resolved run config (`noisypref.benchmark.config.run_config`) named by its run id. Runs whose
configs are identical are merged: every rate-0 run means "no flips", whatever the noise model, so
its noise section is written one way (`NO_NOISE`) and it runs once for all noise models.
Method references (`noisypref.benchmark.config.references`) are left out at rate 0, where each is its own
base run (a clean_only run has no flipped pair to remove, a known-rate one gets ε = 0), and under every
cleaning entry but ``none``. A cleaned run whose cleaning reads the flip record (the oracle judge) or the
realised rate (budget ``realised_rate``) is a reference of its own: its kind is the cleaning's.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from noisypref.benchmark.config.references import run_reference_kind
from noisypref.benchmark.config.run_config import make_run_config, run_id
from noisypref.benchmark.config.sections import NoiseSettings
from noisypref.benchmark.study.plan import PlannedRun
from noisypref.benchmark.study.schema import Study
from noisypref.folder_layout import NO_CLEANING, NO_NOISE_LABEL, NO_REFERENCE

# A rate of 0 flips nothing under every noise model; written as the symmetric model with its defaults.
NO_NOISE_MODEL = "symmetric"


def grid_point_count(study: Study) -> int:
    """Grid points before identical runs are merged."""
    noise_points = sum(len(noise.rates) for noise in study.noise)
    return (
        len(study.datasets)
        * noise_points
        * len(study.cleaning)
        * len(study.method_variants())
        * len(study.seeds)
        * len(study.models)
    )


def skipped_reference_points(study: Study) -> int:
    """Grid points of method references that `plan_runs` leaves out: at rate 0 under every cleaning entry
    (each is its own base run), and above rate 0 under every cleaning entry but ``none``."""
    references = [variant for variant in study.method_variants() if variant.reference_kind != NO_REFERENCE]
    cleaned = sum(1 for cleaning in study.cleaning if cleaning.label != NO_CLEANING)
    skipped_cleaning = sum(
        len(study.cleaning) if rate == 0 else cleaned for noise in study.noise for rate in noise.rates
    )
    return len(study.datasets) * skipped_cleaning * len(references) * len(study.seeds) * len(study.models)


def plan_runs(study: Study) -> list[PlannedRun]:
    """Every distinct run of the study, in grid order (first occurrence of merged runs); references at
    rate 0 left out."""
    runs: dict[str, PlannedRun] = {}
    noise_points = [(noise, rate) for noise in study.noise for rate in noise.rates]
    base_labels = study.base_labels()
    grid = itertools.product(
        study.datasets, noise_points, study.cleaning, study.method_variants(), study.seeds, study.models
    )
    for dataset, (noise, rate), cleaning, variant, seed, model in grid:
        # references stand at rates above 0 and on the noisy pairs as they are (no cleaning)
        if variant.reference_kind != NO_REFERENCE and (rate == 0 or cleaning.label != NO_CLEANING):
            continue
        config = make_run_config(
            study=study.name,
            dataset=dataset,
            noise=_noise_settings(noise.model, rate, noise.options),
            method=variant.settings,
            model=model,
            training=variant.training,
            evaluation=variant.evaluation,
            seed=seed,
            cleaning=cleaning.settings,
        )
        identifier = run_id(config)
        if identifier in runs:
            merged = runs[identifier]
            runs[identifier] = dataclasses.replace(merged, grid_points=merged.grid_points + 1)
            continue
        runs[identifier] = PlannedRun(
            run_id=identifier,
            config=config,
            dataset=dataset.label,
            noise_model=noise.model if rate > 0 else NO_NOISE_LABEL,
            noise_rate=rate,
            method=variant.label,
            seed=seed,
            model=model.name,
            grid_points=1,
            reference=run_reference_kind(
                variant.reference_kind, None if cleaning.settings is None else cleaning.settings.reference_kind
            ),
            base_label=base_labels[variant.label],
            cleaning=cleaning.label,
        )
    return list(runs.values())


def _noise_settings(model: str, rate: float, options: dict[str, Any]) -> NoiseSettings:
    if rate > 0:
        return NoiseSettings(model=model, rate=rate, options=options)
    return NoiseSettings(model=NO_NOISE_MODEL, rate=0.0)
