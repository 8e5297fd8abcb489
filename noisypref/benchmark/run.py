"""One run: data, noise, training, evaluation, result files (the run-config contract).

``execute_run(run_config, run_dir, cache_dir)`` reads a fully resolved run config (a plain dict,
see ``default_run_config``), and writes into ``run_dir``:

    config.json     the run config as given
    flips.csv       which training pairs were flipped (pair_id, is_flipped, flip_probability)
    metrics.jsonl   training metrics, one line per logged step
    pairs.parquet   per training pair after training: pair_id, is_flipped, reward_gap (eval mode),
                    gamma (γ methods only); the reports' γ diagnostics read it
    alpaca_eval/, arena_hard/   generations, annotations and answer files of evaluation.benchmarks
    result.json     every metric, the config, seed, library versions and wall time; written last and
                    atomically, so a run is complete exactly when result.json exists

Steps: resolve the dataset (the testbed via ``build_testbed``, or a file / hub id via
``load_preferences`` + ``split_heldout`` with a fixed split seed, so every run on a dataset shares
its held-out pairs and caches), inject noise into the training pairs only, tokenise (cached), compute
or load the reference log-probs (cached; or ``model.reference: live``, a reference model kept in
memory), optionally add LoRA adapters (``model.lora``, needs peft), train the policy from the
reference model, evaluate, run the configured benchmarks.
Invalid configs raise ``ValueError`` naming the field path; anything failing later raises
``RunFailed`` and no result.json is written.

On a CPU the testbed runs on one torch thread (its author's measurement: several threads are far
slower for a model that small); other models use torch's thread setting as it is.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import noisypref
from noisypref.benchmark import distributed
from noisypref.benchmark.benchmarks import Benchmarks, check_runnable, parse_benchmarks, run_benchmarks
from noisypref.benchmark.data import load_preferences, split_heldout
from noisypref.benchmark.evaluate import (
    EvaluationConfig,
    gold_reward_metrics,
    method_outputs,
    noise_detection,
    preference_accuracy,
    reference_samples,
)
from noisypref.benchmark.models import (
    LoraSettings,
    adapters_disabled,
    apply_lora,
    load_causal_lm,
    resolve_model,
)
from noisypref.benchmark.reference import LiveReference, ReferenceLogps, reference_logps
from noisypref.benchmark.storage import atomic_path, write_json_atomic
from noisypref.benchmark.testbed import Testbed, TestbedConfig, build_testbed
from noisypref.benchmark.tokenization import TokenizedPairs, tokenize_pairs
from noisypref.benchmark.train import TrainingConfig, train
from noisypref.methods import PreferenceMethod, build
from noisypref.noise_injection import FlipRecord, get_noise_model, inject

logger = logging.getLogger(__name__)

RUN_KEYS = ("study", "dataset", "noise", "method", "model", "training", "evaluation", "seed")
DATASET_KINDS = ("testbed", "file", "hub")
TESTBED = "testbed"
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")
REFERENCE_MODES = ("cached", "live")
DATASET_KEYS = ("kind", "testbed", "source", "split", "heldout_fraction", "max_pairs", "hub_options")
MODEL_KEYS = ("name", "dtype", "attn_implementation", "gradient_checkpointing", "lora", "reference")
HELDOUT_SPLIT_SEED = 0
RUN_ID_HEX_DIGITS = 12
# The reference policy's gold-reward samples depend only on the reference model, the prompts, the
# sampling settings and the seed, so every method and flip rate of a seed shares them: a process keeps
# the last REFERENCE_SAMPLES_KEPT of them (0 samples afresh every run; benchmarks/study_cost.py).
REFERENCE_SAMPLES_KEPT = 64
_reference_samples: dict[str, list[str]] = {}


class RunFailed(RuntimeError):
    """A valid run that could not complete; ``reason`` says why (the study layer records it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def out_of_memory_reason(config: RunConfig, error: BaseException) -> str:
    """Why a run ran out of GPU memory, and the settings that lower the memory a step needs."""
    training = config.training
    micro_batch = training.batch_size // training.gradient_accumulation
    suggestions = []
    # More micro-batches of the same optimiser step: same batch_size, same updates, less activation memory.
    accumulation = next(
        (
            steps
            for steps in range(training.gradient_accumulation + 1, training.batch_size + 1)
            if training.batch_size % steps == 0 and training.batch_size // steps <= micro_batch // 2
        ),
        None,
    )
    if accumulation is not None:
        suggestions.append(
            f"training.gradient_accumulation: {accumulation} ({training.batch_size // accumulation} pairs per "
            f"micro-batch instead of {micro_batch}; batch_size {training.batch_size} and the updates stay the same)"
        )
    if not config.model.gradient_checkpointing:
        suggestions.append("model.gradient_checkpointing: true (activations recomputed in the backward pass)")
    if config.model.dtype == "float32":
        suggestions.append("model.dtype: bfloat16 (half the memory of float32 weights)")
    if training.max_length >= 128:
        shorter = training.max_length // 2
        prompt = min(training.max_prompt_length, shorter // 2)
        suggestions.append(
            f"training.max_length: {shorter}, max_prompt_length: {prompt} (now {training.max_length}, "
            f"{training.max_prompt_length}; longer pairs are cut)"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    advice = "; ".join(suggestions) if suggestions else "a smaller model, or a GPU with more memory"
    return (
        f"out of GPU memory with {micro_batch} pairs per micro-batch of up to {training.max_length} tokens "
        f"({first_line}). Settings that need less memory: {advice}"
    )


# ---------------------------------------------------------------------------------------------
# The run config


@dataclass(frozen=True)
class DatasetSection:
    kind: str
    testbed: TestbedConfig | None
    source: str | None
    split: str | None
    heldout_fraction: float
    max_pairs: int | None
    hub_options: dict[str, Any]  # keyword options of datasets.load_dataset (kind hub)


@dataclass(frozen=True)
class ModelSection:
    name: str
    dtype: str
    attn_implementation: str
    gradient_checkpointing: bool
    lora: LoraSettings | None  # None: full fine-tuning
    reference: str  # "cached": log-probs computed once and cached; "live": the model kept in memory


@dataclass(frozen=True)
class RunConfig:
    """A validated run config; ``raw`` is the dict it came from."""

    dataset: DatasetSection
    noise_model: str
    noise_rate: float
    noise_options: dict[str, Any]
    method_label: str
    method_name: str
    method_hyperparameters: dict[str, Any]
    model: ModelSection
    training: TrainingConfig
    evaluation: EvaluationConfig
    benchmarks: Benchmarks  # evaluation.benchmarks
    seed: int
    raw: dict[str, Any]

    @property
    def run_id(self) -> str:
        return run_id(self.raw)


def default_run_config(**sections: Any) -> dict[str, Any]:
    """The contract's default run (DPO on the default testbed, no noise), sections replaced by ``sections``."""
    config: dict[str, Any] = {
        "study": "default",
        "dataset": {
            "kind": "testbed",
            "testbed": TestbedConfig().to_dict(),
            "source": None,
            "split": None,
            "heldout_fraction": 0.1,
            "max_pairs": None,
            "hub_options": {},
        },
        "noise": {"model": "symmetric", "rate": 0.0, "options": {}},
        "method": {"label": "dpo", "name": "dpo", "hyperparameters": {"beta": 0.1}},
        "model": {
            "name": TESTBED,
            "dtype": "auto",
            "attn_implementation": "sdpa",
            "gradient_checkpointing": False,
            "lora": None,
            "reference": "cached",
        },
        "training": {
            name: getattr(TrainingConfig(), name)
            for name in (
                "steps",
                "batch_size",
                "gradient_accumulation",
                "learning_rate",
                "weight_decay",
                "warmup_ratio",
                "max_grad_norm",
                "max_length",
                "max_prompt_length",
                "log_every",
                "nan_policy",
            )
        },
        "evaluation": {**dataclasses.asdict(EvaluationConfig()), "benchmarks": {}},
        "seed": 0,
    }
    config.update(copy.deepcopy(sections))
    return config


def run_id(run_config: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of the config without "study"."""
    payload = json.dumps({key: value for key, value in run_config.items() if key != "study"}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:RUN_ID_HEX_DIGITS]


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate a run config; ``ValueError`` names the field path, the value and what is allowed."""
    _exact_keys(run_config, "run config", RUN_KEYS)
    seed = run_config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r} is invalid: expected an integer >= 0")
    dataset = _dataset_section(_section(run_config, "dataset", DATASET_KEYS))
    noise = _section(run_config, "noise", ("model", "rate", "options"))
    method = _section(run_config, "method", ("label", "name", "hyperparameters"))
    model = _model_section(_section(run_config, "model", MODEL_KEYS))
    training_values = run_config["training"]
    if not isinstance(training_values, Mapping):
        raise ValueError(f"training = {training_values!r} is invalid: expected a mapping")
    training = TrainingConfig.from_dict(
        {**training_values, "gradient_checkpointing": model.gradient_checkpointing}
    )
    evaluation_values = run_config["evaluation"]
    if not isinstance(evaluation_values, Mapping):
        raise ValueError(f"evaluation = {evaluation_values!r} is invalid: expected a mapping")
    if "benchmarks" not in evaluation_values:
        raise ValueError("evaluation.benchmarks: missing; give {} for no benchmarks")
    benchmarks = parse_benchmarks(evaluation_values["benchmarks"])
    evaluation = EvaluationConfig.from_dict(
        {key: value for key, value in evaluation_values.items() if key != "benchmarks"}
    )

    rate = noise["rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate = {rate!r} is invalid: expected a number in [0, 1]")
    options = noise["options"] if noise["options"] is not None else {}
    if not isinstance(options, Mapping):
        raise ValueError(f"noise.options = {options!r} is invalid: expected a mapping")
    try:
        get_noise_model(noise["model"]).make_options(dict(options))
    except (ValueError, TypeError) as error:
        raise ValueError(f"noise: {error}") from None
    hyperparameters = method["hyperparameters"] if method["hyperparameters"] is not None else {}
    if not isinstance(hyperparameters, Mapping):
        raise ValueError(f"method.hyperparameters = {hyperparameters!r} is invalid: expected a mapping")
    try:
        build(method["name"], seed=seed, **hyperparameters)
    except (ValueError, TypeError) as error:
        raise ValueError(f"method: {error}") from None
    if model.name == TESTBED and dataset.kind != TESTBED:
        raise ValueError(
            f"model.name = {TESTBED!r} is invalid with dataset.kind = {dataset.kind!r}: the testbed's "
            "reference policy needs the testbed dataset; give a hub id or a local model folder"
        )
    if benchmarks and model.name == TESTBED:
        raise ValueError(
            "evaluation.benchmarks is invalid with model.name = 'testbed': the benchmarks need a chat "
            "model (the testbed's word-level tokenizer has no chat template)"
        )
    return RunConfig(
        dataset=dataset,
        noise_model=noise["model"],
        noise_rate=float(rate),
        noise_options=dict(options),
        method_label=str(method["label"]),
        method_name=method["name"],
        method_hyperparameters=dict(hyperparameters),
        model=model,
        training=training,
        evaluation=evaluation,
        benchmarks=benchmarks,
        seed=seed,
        raw=copy.deepcopy(dict(run_config)),
    )


def _section(run_config: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    return _exact_keys(run_config[name], name, keys)


def _exact_keys(values: Any, name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """``values``, when it is a mapping with exactly ``keys``; else ``ValueError`` naming ``name``."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} = {values!r} is invalid: expected a mapping with keys {keys}")
    missing = [key for key in keys if key not in values]
    unknown = sorted(set(values) - set(keys))
    if missing or unknown:
        raise ValueError(
            f"{name}: missing key(s) {missing}, unknown key(s) {unknown}; expected exactly {keys}"
        )
    return values


def _dataset_section(values: Mapping[str, Any]) -> DatasetSection:
    kind = values["kind"]
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset.kind = {kind!r} is invalid: expected one of {DATASET_KINDS}")
    testbed = None
    if kind == TESTBED:
        if not isinstance(values["testbed"], Mapping):
            raise ValueError(
                f"dataset.testbed = {values['testbed']!r} is invalid: expected the TestbedConfig fields"
            )
        try:
            testbed = TestbedConfig.from_dict(values["testbed"])
        except ValueError as error:
            raise ValueError(f"dataset.testbed: {error}") from None
    elif not (isinstance(values["source"], str) and values["source"]):
        raise ValueError(
            f"dataset.source = {values['source']!r} is invalid: expected a file path or hub id for kind {kind!r}"
        )
    fraction = values["heldout_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"dataset.heldout_fraction = {fraction!r} is invalid: expected a number in (0, 1)")
    max_pairs = values["max_pairs"]
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1
    ):
        raise ValueError(f"dataset.max_pairs = {max_pairs!r} is invalid: expected null or an integer >= 1")
    split = values["split"]
    if split is not None and not isinstance(split, str):
        raise ValueError(f"dataset.split = {split!r} is invalid: expected null or a split name")
    hub_options = values["hub_options"]
    if not isinstance(hub_options, Mapping) or not all(isinstance(key, str) for key in hub_options):
        raise ValueError(
            f"dataset.hub_options = {hub_options!r} is invalid: expected a mapping of datasets.load_dataset "
            "keyword options (e.g. {data_dir: harmless-base})"
        )
    if hub_options and kind != "hub":
        raise ValueError(
            f"dataset.hub_options = {dict(hub_options)!r} is invalid: it applies to kind 'hub' only"
        )
    if "split" in hub_options or "path" in hub_options:
        raise ValueError(
            f"dataset.hub_options = {dict(hub_options)!r} is invalid: give the split as dataset.split and "
            "the dataset as dataset.source"
        )
    return DatasetSection(
        kind, testbed, values["source"], split, float(fraction), max_pairs, dict(hub_options)
    )


def _model_section(values: Mapping[str, Any]) -> ModelSection:
    if not (isinstance(values["name"], str) and values["name"]):
        raise ValueError(
            f"model.name = {values['name']!r} is invalid: expected 'testbed', a hub id or a local folder"
        )
    if values["dtype"] not in DTYPES:
        raise ValueError(f"model.dtype = {values['dtype']!r} is invalid: expected one of {DTYPES}")
    if values["attn_implementation"] not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"model.attn_implementation = {values['attn_implementation']!r} is invalid: "
            f"expected one of {ATTENTION_IMPLEMENTATIONS}"
        )
    if not isinstance(values["gradient_checkpointing"], bool):
        raise ValueError(
            f"model.gradient_checkpointing = {values['gradient_checkpointing']!r} is invalid: expected true or false"
        )
    lora = values["lora"]
    if lora is not None:
        if not isinstance(lora, Mapping):
            raise ValueError(
                f"model.lora = {lora!r} is invalid: expected null (full fine-tuning) or a mapping of "
                "r, alpha, dropout, target_modules"
            )
        try:
            lora = LoraSettings.from_dict(lora)
        except ValueError as error:
            raise ValueError(f"model.{error}") from None
    if values["reference"] not in REFERENCE_MODES:
        raise ValueError(
            f"model.reference = {values['reference']!r} is invalid: expected one of {REFERENCE_MODES}"
        )
    return ModelSection(
        values["name"],
        values["dtype"],
        values["attn_implementation"],
        values["gradient_checkpointing"],
        lora,
        values["reference"],
    )


# ---------------------------------------------------------------------------------------------
# Executing a run


@dataclass
class RunData:
    train_pairs: datasets.Dataset
    heldout_pairs: datasets.Dataset
    testbed: Testbed | None


def execute_run(
    run_config: Mapping[str, Any], run_dir: str | Path, cache_dir: str | Path, device: str | None = None
) -> dict[str, Any]:
    """Run one training + evaluation job and return its result (also written to run_dir/result.json).

    ``device``: ``None`` (CUDA when available, else the CPU), ``"cpu"`` or ``"cuda"``.
    Raises ``ValueError`` for an invalid config and ``RunFailed`` when the run fails.
    """
    started = time.perf_counter()
    config = parse_run_config(run_config)
    run_dir, cache_dir = Path(run_dir), Path(cache_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and config.model.attn_implementation == "flex_attention":
        raise ValueError(
            "model.attn_implementation = 'flex_attention' trains on CUDA only (PyTorch has no CPU backward "
            "for flex attention); use sdpa on the CPU, where packed rows get a block-diagonal mask"
        )
    distributed.init_from_environment()
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_main_process():
        (run_dir / "result.json").unlink(missing_ok=True)
        write_json_atomic(run_dir / "config.json", config.raw)
    logger.info(
        "run %s: %s on %s, noise %s %.2f, seed %d",
        config.run_id,
        config.method_label,
        config.dataset.kind,
        config.noise_model,
        config.noise_rate,
        config.seed,
    )
    threads = 1 if device == "cpu" and config.model.name == TESTBED else torch.get_num_threads()
    try:
        with torch_threads(threads):
            metrics, details = _train_and_evaluate(config, run_dir, cache_dir, torch.device(device))
    except torch.cuda.OutOfMemoryError as error:
        raise RunFailed(out_of_memory_reason(config, error)) from error
    except Exception as error:
        raise RunFailed(f"{type(error).__name__}: {error}") from error
    result = {
        "run_id": config.run_id,
        "status": "succeeded",
        "label": config.method_label,
        "metrics": metrics,
        "config": config.raw,
        "seed": config.seed,
        "realised_flip_rate": metrics["realised_flip_rate"],
        "versions": library_versions(),
        "device": device,
        "wall_time_s": time.perf_counter() - started,
        **details,
    }
    if _is_main_process():
        write_json_atomic(run_dir / "result.json", result)
    logger.info(
        "run %s done in %.1f s: %s",
        config.run_id,
        result["wall_time_s"],
        ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()),
    )
    return result


@dataclass
class PreparedRun:
    """Everything a run trains and evaluates on, built before training starts."""

    data: RunData
    flips: FlipRecord
    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pad_token_id: int
    method: PreferenceMethod
    train_tokens: TokenizedPairs
    heldout_tokens: TokenizedPairs
    train_reference: ReferenceLogps | LiveReference | None
    heldout_reference: ReferenceLogps | LiveReference | None


def _train_and_evaluate(
    config: RunConfig, run_dir: Path, cache_dir: Path, device: torch.device
) -> tuple[dict[str, float], dict[str, Any]]:
    prepared = prepare_run(config, run_dir, cache_dir, device)
    metrics_path = run_dir / "metrics.jsonl"
    checkpoint_dir = run_dir / "checkpoint" if config.training.checkpoint_every else None
    if (checkpoint_dir is None or not checkpoint_dir.exists()) and _is_main_process():
        metrics_path.unlink(missing_ok=True)  # a fresh run; a resumed one keeps its earlier steps
    training = train(
        prepared.policy,
        prepared.method,
        prepared.train_tokens,
        config.training,
        reference=prepared.train_reference,
        pad_token_id=prepared.pad_token_id,
        seed=config.seed,
        metrics_path=metrics_path,
        checkpoint_dir=checkpoint_dir,
        device=device.type,
    )
    if not _is_main_process():  # rank 0 evaluates the trained model and writes the run's files
        return {
            "final_loss": training.final_metrics.get("loss", math.nan),
            "realised_flip_rate": prepared.flips.realised_rate,
        }, {}
    if training.full_state_dict is not None:  # trained sharded: rank 0 evaluates an unsharded copy
        prepared.policy = unsharded_policy(config, prepared.data, training.full_state_dict, cache_dir, device)
        if config.model.lora is not None and isinstance(prepared.train_reference, LiveReference):
            # the policy with its adapters off is the reference: the new copy's, not the shards'
            prepared.train_reference = prepared.heldout_reference = live_reference(
                config, prepared.data, prepared.policy, prepared.pad_token_id, cache_dir, device
            )
    metrics = {
        "final_loss": training.final_metrics["loss"],
        **evaluate_run(config, prepared, cache_dir, device, pairs_path=run_dir / "pairs.parquet"),
    }
    benchmark_details: dict[str, Any] = {}
    if config.benchmarks and _is_main_process():
        benchmark_metrics, benchmark_details = run_benchmarks(
            config.benchmarks,
            prepared.policy,
            prepared.tokenizer,
            run_dir,
            model_id=f"noisypref-{config.run_id}",
            seed=config.seed,
        )
        metrics.update(benchmark_metrics)
    details = {
        "noise": prepared.flips.summary(),
        "training": {
            "steps": training.steps,
            "skipped_steps": training.skipped_steps,
            "pairs_per_second": training.pairs_per_second,
            "wall_time_s": training.wall_time_s,
            "processes": training.processes,
            "sharding": training.sharding,
            "final_step_metrics": training.final_metrics,
        },
        "num_train_pairs": len(prepared.train_tokens),
        "num_heldout_pairs": len(prepared.heldout_tokens),
    }
    if benchmark_details:
        details["benchmarks"] = benchmark_details
    return metrics, details


def prepare_run(config: RunConfig, run_dir: Path, cache_dir: Path, device: torch.device) -> PreparedRun:
    """Data, noise (written to flips.csv), the policy, the method, token ids and reference log-probs.

    Under a multi-process launch rank 0 builds the cached data, model and tokens first and the others
    then read them; the reference log-probs are computed by all of them, each its share. A failure
    on any process while loading fails the run on every one."""

    def load() -> tuple:
        with distributed.main_process_first():
            if _is_main_process():  # rank 0 runs the benchmarks: a missing file or API key fails now
                check_runnable(config.benchmarks)
            return load_data_model_and_tokens(config, run_dir, cache_dir, device)

    data, flips, policy, tokenizer, identity, pad_token_id, train_tokens, heldout_tokens = distributed.agreed(
        load, "preparing the run"
    )
    method = build(config.method_name, seed=config.seed, **config.method_hyperparameters)
    train_reference = heldout_reference = None
    cached = method.requires_reference and config.model.reference == "cached"
    if cached:  # computed before training changes the policy; usually a cache hit
        options = dict(model_identity=identity, cache_dir=cache_dir, pad_token_id=pad_token_id)
        train_reference = reference_logps(policy, train_tokens, **options)
        heldout_reference = reference_logps(policy, heldout_tokens, **options)
    if config.model.lora is not None:
        torch.manual_seed(config.seed)  # the adapters' initialisation
        apply_lora(policy, config.model.lora)
    if method.requires_reference and not cached:
        train_reference = heldout_reference = live_reference(
            config, data, policy, pad_token_id, cache_dir, device
        )
    return PreparedRun(
        data,
        flips,
        policy,
        tokenizer,
        pad_token_id,
        method,
        train_tokens,
        heldout_tokens,
        train_reference,
        heldout_reference,
    )


def unsharded_policy(
    config: RunConfig, data: RunData, state: dict[str, torch.Tensor], cache_dir: Path, device: torch.device
) -> PreTrainedModel:
    """A fresh policy (with adapters under LoRA) holding the trained weights ``state``, for evaluation."""
    policy, _ = load_causal_lm(
        reference_model_location(config, data, cache_dir),
        config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        device=device,
    )
    if config.model.lora is not None:
        apply_lora(policy, config.model.lora)
    policy.load_state_dict(state)
    policy.eval()
    return policy


def load_data_model_and_tokens(
    config: RunConfig, run_dir: Path, cache_dir: Path, device: torch.device
) -> tuple:
    """The data, its flips (written to flips.csv), the policy, its tokenizer, its cache identity, the pad
    token and the token ids of the training and held-out pairs."""
    data = resolve_dataset(config, cache_dir)
    noisy_pairs, flips = inject(
        data.train_pairs, config.noise_model, config.noise_rate, config.seed, **config.noise_options
    )
    if _is_main_process():
        with atomic_path(run_dir / "flips.csv") as temporary:
            flips.to_csv(temporary)
    policy, tokenizer, identity = load_model_and_tokenizer(config, data, cache_dir, device)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = dict(max_length=config.training.max_length, max_prompt_length=config.training.max_prompt_length)
    train_tokens = tokenize_pairs(noisy_pairs, tokenizer, cache_dir=cache_dir, **lengths)
    heldout_tokens = tokenize_pairs(data.heldout_pairs, tokenizer, cache_dir=cache_dir, **lengths)
    return data, flips, policy, tokenizer, identity, pad_token_id, train_tokens, heldout_tokens


def live_reference(
    config: RunConfig,
    data: RunData,
    policy: PreTrainedModel,
    pad_token_id: int,
    cache_dir: Path,
    device: torch.device,
) -> LiveReference:
    """The reference model kept in memory: a LoRA policy with its adapters off, else a second copy."""
    if config.model.lora is not None:
        return LiveReference(policy, pad_token_id, context=lambda: adapters_disabled(policy))
    reference_model, _ = load_causal_lm(
        reference_model_location(config, data, cache_dir),
        config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        device=device,
    )
    reference_model.requires_grad_(False)
    return LiveReference(reference_model, pad_token_id)


def evaluate_run(
    config: RunConfig,
    run: PreparedRun,
    cache_dir: Path,
    device: torch.device,
    pairs_path: Path | None = None,
) -> dict[str, float]:
    """The metrics of DESIGN §5 that the config asks for (gold-reward metrics on the testbed only).

    ``pairs_path``: where to write the per-pair diagnostics of the training pairs (pairs.parquet).
    """
    metrics = {"realised_flip_rate": run.flips.realised_rate}
    # Batches of the training micro-batch size: a γ method's candidate set is then as in training.
    batch_size = config.training.batch_size // config.training.gradient_accumulation
    train_outputs = method_outputs(
        run.policy, run.method, run.train_tokens, run.train_reference, run.pad_token_id, batch_size
    )
    if pairs_path is not None and _is_main_process():
        write_pair_diagnostics(pairs_path, run.train_tokens.pair_ids, run.flips, train_outputs)
    metrics["train_accuracy"] = float(np.mean(train_outputs["reward_gap"] > 0))
    if config.evaluation.noise_detection:
        metrics.update(noise_detection(train_outputs, run.flips.table["is_flipped"].to_numpy()))
    if config.evaluation.heldout_accuracy:
        heldout = method_outputs(
            run.policy,
            run.method,
            run.heldout_tokens,
            run.heldout_reference,
            run.pad_token_id,
            batch_size,
        )
        metrics["heldout_accuracy"] = preference_accuracy(
            heldout["chosen_reward"], heldout["rejected_reward"]
        )
    testbed = run.data.testbed
    if config.evaluation.gold_reward and testbed is not None:
        prompts = testbed.eval_prompts[: config.evaluation.num_eval_prompts]
        if len(prompts) < config.evaluation.num_eval_prompts:
            logger.warning(
                "the testbed has %d evaluation prompts; evaluation.num_eval_prompts asks for %d",
                len(prompts),
                config.evaluation.num_eval_prompts,
            )
        location = reference_model_location(config, run.data, cache_dir)
        reference_model = None

        def load_reference() -> PreTrainedModel:
            nonlocal reference_model
            if reference_model is None:
                reference_model, _ = load_causal_lm(
                    location,
                    config.model.dtype,
                    attn_implementation=config.model.attn_implementation,
                    device=device,
                )
            return reference_model

        responses = cached_reference_samples(config, location, prompts, device, load_reference, run.tokenizer)
        metrics.update(
            gold_reward_metrics(
                run.policy,
                load_reference() if config.evaluation.kl_samples > 0 else None,
                run.tokenizer,
                prompts,
                testbed.gold_reward,
                config.evaluation,
                seed=config.seed,
                reference_responses=responses,
            )
        )
    not_finite = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if not_finite:
        raise ValueError(f"non-finite evaluation metrics: {not_finite}")
    return metrics


def cached_reference_samples(
    config: RunConfig,
    location: str,
    prompts: list[str],
    device: torch.device,
    load_reference: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
) -> list[str]:
    """``reference_samples`` of the reference model at ``location``, from this process's memory when
    an earlier run sampled the same model (by its files' sizes and times), prompts, settings and seed."""
    evaluation = config.evaluation
    identity = [
        checkpoint_identity(location),
        config.model.dtype,
        config.model.attn_implementation,
        device.type,
        prompts,
        [evaluation.samples_per_prompt, evaluation.temperature, evaluation.max_new_tokens, config.seed],
    ]
    key = hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()
    if key not in _reference_samples:
        responses = reference_samples(load_reference(), tokenizer, prompts, evaluation, config.seed)
        if REFERENCE_SAMPLES_KEPT == 0:
            return responses
        while len(_reference_samples) >= REFERENCE_SAMPLES_KEPT:
            del _reference_samples[next(iter(_reference_samples))]
        _reference_samples[key] = responses
    return list(_reference_samples[key])


def write_pair_diagnostics(
    path: Path, pair_ids: list[str], flips: FlipRecord, outputs: Mapping[str, np.ndarray]
) -> None:
    """pairs.parquet: pair_id, is_flipped, the final reward gap (eval mode) and, for γ methods, γ."""
    flipped = dict(zip(flips.table["pair_id"], flips.table["is_flipped"].astype(bool), strict=True))
    columns = {
        "pair_id": pair_ids,
        "is_flipped": [flipped[pair_id] for pair_id in pair_ids],
        "reward_gap": outputs["reward_gap"],
    }
    if "gamma" in outputs:
        columns["gamma"] = outputs["gamma"]
    with atomic_path(path) as temporary:
        pd.DataFrame(columns).to_parquet(temporary, index=False)


def resolve_dataset(config: RunConfig, cache_dir: Path) -> RunData:
    """Training and clean held-out pairs of the run's dataset (training pairs capped at max_pairs)."""
    section = config.dataset
    testbed = None
    if section.kind == TESTBED:
        testbed = build_testbed(section.testbed, cache_dir)
        train_pairs, heldout_pairs = testbed.train_pairs, testbed.heldout_pairs
    else:
        dataset = load_preferences(section.source, section.split, **section.hub_options)
        train_pairs, heldout_pairs = split_heldout(dataset, section.heldout_fraction, seed=HELDOUT_SPLIT_SEED)
    if section.max_pairs is not None and section.max_pairs < len(train_pairs):
        train_pairs = train_pairs.select(range(section.max_pairs))
    return RunData(train_pairs, heldout_pairs, testbed)


def load_model_and_tokenizer(
    config: RunConfig, data: RunData, cache_dir: Path, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The policy (initialised as the reference model), its tokenizer, and the reference model's identity
    for the reference log-prob cache (weights, dtype, attention and device type)."""
    location = reference_model_location(config, data, cache_dir)
    policy, tokenizer = load_causal_lm(
        location, config.model.dtype, attn_implementation=config.model.attn_implementation, device=device
    )
    if data.testbed is not None and config.model.name == TESTBED:
        weights = f"testbed-reference-{data.testbed.config.reference_policy_key()}"
    else:
        weights = checkpoint_identity(location)
    numerics = [config.model.dtype, config.model.attn_implementation, device.type]
    return policy, tokenizer, json.dumps([weights, *numerics])


def reference_model_location(config: RunConfig, data: RunData, cache_dir: Path) -> str:
    if config.model.name == TESTBED:
        return str(data.testbed.reference_model_dir)
    return resolve_model(config.model.name, cache_dir)


def checkpoint_identity(name_or_path: str) -> str:
    """A local folder: its path and its files' sizes and modification times; a hub id: id and snapshot."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(
            (item.name, item.stat().st_size, item.stat().st_mtime_ns)
            for item in path.iterdir()
            if item.is_file()
        )
        return json.dumps({"folder": str(path.resolve()), "files": files})
    config_file = transformers.utils.cached_file(name_or_path, "config.json")
    return json.dumps({"hub": name_or_path, "snapshot": Path(config_file).parent.name})


def library_versions() -> dict[str, str]:
    import accelerate

    return {
        "noisypref": noisypref.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_main_process() -> bool:
    return distributed.is_main_process()
