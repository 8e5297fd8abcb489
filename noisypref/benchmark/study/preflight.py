"""Checks of a valid study against the world it will run in, before any run is claimed.

`load_study` checks the file on its own; what it cannot see is whether a model name resolves here
(a known alias, a local folder, or a hub id that is cached or reachable), whether a local data file
has what the study asks of it (scores for the noise models that read them, enough pairs for the
held-out split, at least batch_size training pairs, at least one pair whose responses differ), and
whether the machine has what a setting needs (flex attention trains on CUDA only; FlashAttention-2
needs CUDA and the flash-attn package, which transformers otherwise reports at each run's model load;
each tracker its package). `check_preflight` raises `StudyError` with every such problem (field path, value, what is
allowed) and logs a warning for each metric whose sample is too small to mean much, for each
known-rate reference whose method would refuse a realised flip rate near a rate of the study (those
runs will fail), and for each setting that is allowed but rarely meant (flip rates above 0.5, a
checkpoint interval longer than the run); `noisypref validate` and `noisypref run` call it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from noisypref.benchmark.config.dataset import DatasetSettings
from noisypref.benchmark.config.references import (
    REALISED_FLIP_RATE,
    symbolic_hyperparameters,
    with_symbols_replaced,
)
from noisypref.benchmark.config.sections import TESTBED, method_config
from noisypref.benchmark.study.schema import Study
from noisypref.noise_injection import get_noise_model
from noisypref.noise_injection.base import high_rate_warning
from noisypref.sampling import flip_count
from noisypref.settings import ErrorList

logger = logging.getLogger(__name__)

Problem = tuple[str, Any, str]  # (field path, value, what is allowed)

HUB_PROBE_TIMEOUT_S = 10.0  # one request, no retries: an unreachable hub fails the check fast
OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")  # as huggingface_hub reads HF_HUB_OFFLINE
# Below this many comparisons a share (accuracy, win rate) has a standard error above 0.05.
MIN_METRIC_SAMPLE = 100
SHOWN_ROWS = 5


def check_preflight(study: Study, source: str | Path, *, machine: bool = True) -> None:
    """Raise StudyError naming `source` with every preflight problem; log the small-sample warnings.
    `machine=False` leaves out what depends on this machine (model names, CUDA): for a study meant
    for another one."""
    files = load_local_files(study)
    errors = ErrorList()
    for path, value, expected in preflight_problems(study, files, machine=machine):
        errors.invalid(path, value, expected)
    errors.raise_if_any(str(source))
    for warning in small_sample_warnings(study, files) + known_rate_warnings(study) + setting_warnings(study):
        logger.warning("%s: %s", source, warning)


def preflight_problems(
    study: Study, files: dict[int, Any] | None = None, *, machine: bool = True
) -> list[Problem]:
    """Every problem of `study` that only the machine and its files reveal (see the module doc).
    `files`: the study's local data files as `load_local_files` returns them (read here if None);
    `machine=False`: the local files only, not the model names or CUDA."""
    files = load_local_files(study) if files is None else files
    problems: list[Problem] = []
    for index, model in enumerate(study.models if machine else ()):
        path = f"models[{index}]"
        if model.attn_implementation == "flex_attention" and not _cuda_available():
            problems.append(
                (
                    f"{path}.attn_implementation",
                    model.attn_implementation,
                    "'sdpa' or 'eager' on this machine: flex_attention trains on CUDA only, and torch sees "
                    "no CUDA device here",
                )
            )
        if model.attn_implementation == "flash_attention_2":
            missing = [
                what
                for what, present in (
                    ("the flash-attn package (pip install flash-attn)", _flash_attn_installed()),
                    ("a CUDA device", _cuda_available()),
                )
                if not present
            ]
            if missing:
                problems.append(
                    (
                        f"{path}.attn_implementation",
                        model.attn_implementation,
                        f"'sdpa' or 'eager' on this machine: flash_attention_2 needs {' and '.join(missing)}, "
                        "which this machine lacks",
                    )
                )
        reason = model_unavailable_reason(model.name)
        if reason is not None:
            problems.append((f"{path}.name", model.name, reason))
    for index, pairs in files.items():
        if pairs is not None:
            problems += _local_file_problems(study, study.datasets[index], pairs, f"datasets[{index}]")
    if machine:
        from noisypref.benchmark.study.tracking import missing_tracker_reasons

        missing = missing_tracker_reasons(study.tracking.trackers)
        if missing:
            problems.append(
                ("tracking.trackers", list(study.tracking.trackers), f"trackers installed here: {'; '.join(missing.values())}")
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Models


def model_unavailable_reason(name: str) -> str | None:
    """None when `name` is the testbed policy, a packaged alias, a local folder, or a hub model id
    that is in the local hub cache or found on the hub; else what is allowed and why `name` is not."""
    from noisypref.benchmark.engine.models import PACKAGED_MODELS

    if name == TESTBED or name.lower() in PACKAGED_MODELS or Path(name).expanduser().is_dir():
        return None
    allowed = (
        f"{TESTBED!r}, a known alias ({', '.join(sorted(PACKAGED_MODELS))}), an existing local folder, "
        "or a hub model id"
    )
    here = f"no folder {name} exists (seen from {Path.cwd()})"
    if name.startswith((".", "/", "~")) or Path(name).exists():
        return f"{allowed}; {here}"
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        return f"{allowed}; {here}, and it is not a valid hub id"
    if isinstance(cached, str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in OFFLINE_VALUES:
        return f"{allowed}; {here}, it is not in the local hub cache, and HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(name, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return None  # it exists; loading it needs the user's token, as for any gated model
    except RepositoryNotFoundError:
        return f"{allowed}; {here}, and the hub has no model {name} (or it is private: log in first)"
    except Exception as error:  # noqa: BLE001 (any transport error: the hub cannot be reached from here)
        return (
            f"{allowed}; {here}, it is not in the local hub cache, and the hub cannot be reached "
            f"({type(error).__name__}: {error}); download it where the hub is reachable, or give a local folder"
        )
    return None


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Local data files


def load_local_files(study: Study) -> dict[int, Any]:
    """The pairs of each local data file by dataset index; None for a file that does not load (the
    data-file check of `noisypref validate` / `run` reports it with the file's own message)."""
    from noisypref.benchmark.data.loaders import load_preferences

    files = {}
    for index, dataset in enumerate(study.datasets):
        if dataset.kind != "file":
            continue
        try:
            files[index] = load_preferences(dataset.source, dataset.split)
        except (ValueError, FileNotFoundError):
            files[index] = None
    return files


def _local_file_problems(study: Study, dataset: DatasetSettings, pairs: Any, path: str) -> list[Problem]:
    problems: list[Problem] = []
    total = len(pairs)
    heldout = flip_count(dataset.heldout_fraction, total)
    if heldout < 1 or heldout >= total:
        problems.append(
            (
                f"{path}.source",
                dataset.source,
                f"a file with enough pairs for heldout_fraction = {dataset.heldout_fraction}: its {total} "
                f"pair(s) split into {heldout} held-out and {total - heldout} training pair(s), and a run "
                f"needs at least 1 of each (at least {_smallest_splittable(dataset.heldout_fraction)} pairs "
                "at this fraction)",
            )
        )
    train_pairs, _ = dataset.pair_counts(total, study.evaluation.max_heldout_pairs)
    for section_path, training in _training_sections(study):
        if training.batch_size > train_pairs > 0:
            problems.append(
                (
                    f"{section_path}.batch_size",
                    training.batch_size,
                    f"at most the {train_pairs} training pairs of {path} ({dataset.source}): every optimiser "
                    "step takes batch_size distinct pairs",
                )
            )
    identical = sum(
        chosen == rejected for chosen, rejected in zip(pairs["chosen"], pairs["rejected"], strict=True)
    )
    if identical == total:
        problems.append(
            (
                f"{path}.source",
                dataset.source,
                f"a file with at least one informative pair: in all {total} pairs chosen equals rejected, "
                "so no label says anything",
            )
        )
    for noise_index, noise in enumerate(study.noise):
        if not any(rate > 0 for rate in noise.rates):
            continue  # rate-0 runs flip nothing and read no score
        required = get_noise_model(noise.model).make_options(noise.options).required_columns
        for column in required:
            reason = _missing_scores(pairs, column)
            if reason is not None:
                problems.append(
                    (
                        f"noise[{noise_index}].model",
                        noise.model,
                        f"a noise model that {dataset.source} ({path}) can feed, or a file with a finite "
                        f"{column} on every pair: {reason}",
                    )
                )
    return problems


def _missing_scores(pairs: Any, column: str) -> str | None:
    if column not in pairs.column_names:
        return f"the file has no {column} column"
    values = np.array([math.nan if value is None else value for value in pairs[column]], dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(values)).tolist()
    if not bad_rows:
        return None
    shown = ", ".join(map(str, bad_rows[:SHOWN_ROWS])) + (", ..." if len(bad_rows) > SHOWN_ROWS else "")
    return f"{len(bad_rows)} of {len(values)} pair(s) have a missing or NaN {column} (pairs {shown})"


def _smallest_splittable(fraction: float) -> int:
    """The fewest pairs that `fraction` splits into at least one held-out and one training pair."""
    total = 2
    while not 1 <= flip_count(fraction, total) < total:
        total += 1
    return total


# ---------------------------------------------------------------------------------------------
# Sample sizes


def small_sample_warnings(study: Study, files: dict[int, Any]) -> list[str]:
    """One line per metric that the study computes on fewer than MIN_METRIC_SAMPLE comparisons."""
    warnings = []
    for index, dataset in enumerate(study.datasets):
        file_pairs = len(files[index]) if files.get(index) is not None else None
        counts = dataset.pair_counts(file_pairs, study.evaluation.max_heldout_pairs)
        if counts is None:
            continue  # a hub dataset's size is known only once it is downloaded
        heldout = counts[1]
        if dataset.kind == TESTBED:
            where = f"datasets[{index}] (testbed) has {heldout} held-out pair(s)"
        else:
            where = f"datasets[{index}] ({dataset.source}) has {heldout} held-out pair(s)"
        limits = [
            f"{name} = {value}"
            for name, value in (
                (f"datasets[{index}].max_pairs", dataset.max_pairs),
                ("evaluation.max_heldout_pairs", study.evaluation.max_heldout_pairs),
            )
            if value is not None
        ]
        if limits:
            where += f" with {' and '.join(limits)}"
        if 0 < heldout < MIN_METRIC_SAMPLE:
            warnings.append(f"{where}: heldout_accuracy is computed {_too_small(heldout)}")
    if any(dataset.kind == TESTBED for dataset in study.datasets):
        sizes = {
            (evaluation.num_eval_prompts, evaluation.samples_per_prompt)
            for evaluation in [study.evaluation, *(variant.evaluation for variant in study.method_variants())]
            if evaluation.gold_reward
        }
        for prompts, samples in sorted(sizes):
            if prompts * samples < MIN_METRIC_SAMPLE:
                warnings.append(
                    f"evaluation.num_eval_prompts = {prompts} x samples_per_prompt = {samples}: "
                    f"gold_win_rate and gold_lc_win_rate are computed {_too_small(prompts * samples)}"
                )
    return warnings


def known_rate_warnings(study: Study) -> list[str]:
    """One line per known-rate reference and noise rate at which its method would refuse the symbol's
    value, taking the target rate for the realised one (they differ by the noise model's rounding or
    draw): the run resolves it and fails with the method's reason (rDPO needs ε < 0.5)."""
    rates = sorted({rate for noise in study.noise for rate in noise.rates if rate > 0})
    warnings = []
    for index, entry in enumerate(study.methods):
        for variant in entry.variants():
            symbols = symbolic_hyperparameters(variant.hyperparameters)
            if not symbols:
                continue
            refused = []
            for rate in rates:
                try:
                    method_config(variant.name, with_symbols_replaced(variant.hyperparameters, dict.fromkeys(symbols, rate)))
                except (ValueError, TypeError) as error:
                    refused.append((rate, error))
            if refused:
                shown = ", ".join(f"{rate:g}" for rate, _ in refused)
                warnings.append(
                    f"methods[{index}] ({variant.label}): {', '.join(symbols)} = {REALISED_FLIP_RATE!r} is about "
                    f"the target rate, and at flip rate(s) {shown} {variant.name!r} refuses it ({refused[0][1]}): "
                    "those runs will fail"
                )
    return warnings


def setting_warnings(study: Study) -> list[str]:
    """One line per setting that is allowed but rarely meant: flip rates above 0.5, checkpoints that
    are never written."""
    warnings = []
    for noise_index, noise in enumerate(study.noise):
        for rate_index, rate in enumerate(noise.rates):
            warning = high_rate_warning(rate)
            if warning is not None:
                warnings.append(f"noise[{noise_index}].rates[{rate_index}] = {rate:g}: {warning}")
    for section_path, training in _training_sections(study):
        if training.checkpoint_every > training.steps:
            warnings.append(
                f"{section_path}.checkpoint_every = {training.checkpoint_every} with steps = {training.steps}: "
                "no checkpoint is ever written (one is written every checkpoint_every steps), so an "
                "interrupted run starts again from step 0"
            )
    return warnings


def _training_sections(study: Study) -> list[tuple[str, Any]]:
    """The study's training section and each method entry's that overrides it, with their paths."""
    sections = [("training", study.training)]
    sections += [
        (f"methods[{index}].training", method.training)
        for index, method in enumerate(study.methods)
        if method.training_overrides
    ]
    return sections


def _too_small(sample: int) -> str:
    return (
        f"on {sample} comparisons only (standard error up to {0.5 / math.sqrt(sample):.3f}); "
        f"at least {MIN_METRIC_SAMPLE} give a standard error below 0.05"
    )
