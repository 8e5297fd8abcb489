"""Checks of a valid study against the world it will run in, before any run is claimed.

`load_study` checks the file on its own; what it cannot see is whether a model name resolves here
(a known alias, a local folder, or a hub id that is cached or reachable), whether a local data file
has what the study asks of it (scores for the noise models that read them, enough pairs for the
held-out split, at least one pair whose responses differ), and whether the machine has what a
setting needs (flex attention trains on CUDA only; FlashAttention-2 needs CUDA and the flash-attn
package, which transformers otherwise reports at each run's model load). `check_preflight` raises `StudyError` with
every such problem (field path, value, what is allowed) and logs a warning for each metric whose
sample is too small to mean much; `noisypref validate` and `noisypref run` call it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from noisypref.benchmark.config.checks import ErrorList
from noisypref.benchmark.config.sections import TESTBED, DatasetSettings
from noisypref.benchmark.study.schema import Study
from noisypref.noise_injection import get_noise_model
from noisypref.sampling import flip_count

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
    for warning in small_sample_warnings(study, files):
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
        if dataset.kind == TESTBED:
            heldout = dataset.testbed.num_heldout_pairs
            where = f"datasets[{index}].testbed.num_heldout_pairs = {heldout}"
        elif files.get(index) is not None:
            heldout = flip_count(dataset.heldout_fraction, len(files[index]))
            where = f"datasets[{index}] ({dataset.source}) has {heldout} held-out pair(s)"
        else:
            continue  # a hub dataset's size is known only once it is downloaded
        if heldout is not None and 0 < heldout < MIN_METRIC_SAMPLE:
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


def _too_small(sample: int) -> str:
    return (
        f"on {sample} comparisons only (standard error up to {0.5 / math.sqrt(sample):.3f}); "
        f"at least {MIN_METRIC_SAMPLE} give a standard error below 0.05"
    )
