"""One run: data, noise, training, evaluation, result files.

``execute_run(run_config, run_dir, cache_dir)`` reads a fully resolved run config (a plain dict,
see ``default_run_config``), and writes into ``run_dir``:

    config.json     the run config as given
    flips.csv       which training pairs were flipped (pair_id, is_flipped, flip_probability)
    cleaning.csv    with a ``cleaning`` section: the judge's score of each noisy training pair, whether it
                    flagged it and the action taken (keep / remove / flip); its summary is result.json's
                    "cleaning"
    metrics.jsonl   training metrics, one line per logged step
    pairs.parquet   per training pair after training: pair_id, is_flipped, reward_gap (eval mode),
                    gamma (γ methods only); the reports' γ diagnostics read it
    alpaca_eval/, arena_hard/   generations, annotations and answer files of evaluation.benchmarks
    result.json     every metric, the config, seed, library versions and wall time, the run's
                    "reference" kind (none, clean_only, known_rate, oracle: config.references) and
                    the method's "hyperparameters" as trained (a known-rate run's realised_flip_rate
                    symbols resolved; those named in "symbolic_hyperparameters"); written last and
                    atomically, so a run is complete exactly when result.json exists
    checkpoint/     the mid-run checkpoint (training.checkpoint_every), removed once result.json is
                    written unless training.keep_checkpoint

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
import logging
import math
import platform
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

import noisypref
from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.config.references import NO_REFERENCE, run_reference_kind, symbolic_hyperparameters
from noisypref.benchmark.config.run_config import RunConfig, parse_run_config
from noisypref.benchmark.config.sections import TESTBED
from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.models import default_device
from noisypref.benchmark.engine.reference import LiveReference
from noisypref.benchmark.engine.train import train
from noisypref.benchmark.evaluation.chat_benchmarks import run_benchmarks
from noisypref.benchmark.progress import HEARTBEAT_FILE, heartbeat
from noisypref.benchmark.run.evaluate import evaluate_run
from noisypref.benchmark.run.prepare import (
    live_reference,
    prepare_run,
    training_seed,
    truncation_summary,
    unsharded_policy,
)
from noisypref.benchmark.storage import make_files_shareable, write_json_atomic
from noisypref.folder_layout import (
    CHECKPOINT_FOLDER,
    CONFIG_FILE,
    ITEMS_FILE,
    METRICS_LOG_FILE,
    PAIRS_FILE,
    RESULT_FILE,
)

logger = logging.getLogger(__name__)


declare("final_loss", "final training loss", "none", noisy_labels=True, comparable=False,
        description="the method's loss at the last logged step, on the noisy training labels (scales differ by method)")


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
    device = device or default_device()
    if device == "cpu" and config.model.attn_implementation == "flex_attention":
        raise ValueError(
            "model.attn_implementation = 'flex_attention' trains on CUDA only (PyTorch has no CPU backward "
            "for flex attention); use sdpa on the CPU, where packed rows get a block-diagonal mask"
        )
    distributed.init_from_environment()
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process():
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, config.raw)
    seed_text = f"seed {config.seed}" + (
        f", training seed {config.training.seed}" if config.training.seed is not None else ""
    )
    reference = run_reference_kind(
        config.method.reference_kind, None if config.cleaning is None else config.cleaning.reference_kind
    )
    logger.info(
        "run %s: %s%s on %s, noise %s %.2f, %s",
        config.run_id,
        config.method.label,
        f" ({reference} reference)" if reference != NO_REFERENCE else "",
        config.dataset.display_label,
        config.noise.model,
        config.noise.rate,
        seed_text,
    )
    threads = 1 if device == "cpu" and config.model.name == TESTBED else torch.get_num_threads()
    try:
        beating = run_dir / HEARTBEAT_FILE if distributed.is_main_process() else None
        with torch_threads(threads), heartbeat(beating):
            metrics, details = _train_and_evaluate(config, run_dir, cache_dir, torch.device(device))
    except torch.cuda.OutOfMemoryError as error:
        raise RunFailed(out_of_memory_reason(config, error)) from error
    except Exception as error:
        raise RunFailed(f"{type(error).__name__}: {error}") from error
    result = {
        "run_id": config.run_id,
        "status": "succeeded",
        "label": config.method.label,
        "reference": reference,
        "metrics": metrics,
        "config": config.raw,
        "seed": config.seed,
        "realised_flip_rate": metrics["realised_flip_rate"],
        "versions": library_versions(),
        "device": device,
        "wall_time_s": time.perf_counter() - started,
        **details,
    }
    if distributed.is_main_process():
        write_json_atomic(run_dir / RESULT_FILE, result)
        checkpoint_dir = run_dir / CHECKPOINT_FOLDER
        if checkpoint_dir.is_dir() and not config.training.keep_checkpoint:  # a finished run never resumes
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    logger.info(
        "run %s done in %.1f s: %s",
        config.run_id,
        result["wall_time_s"],
        ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()),
    )
    return result


def _train_and_evaluate(
    config: RunConfig, run_dir: Path, cache_dir: Path, device: torch.device
) -> tuple[dict[str, float], dict[str, Any]]:
    prepared = prepare_run(config, run_dir, cache_dir, device)
    metrics_path = run_dir / METRICS_LOG_FILE
    checkpoint_dir = run_dir / CHECKPOINT_FOLDER if config.training.checkpoint_every else None
    if (checkpoint_dir is None or not checkpoint_dir.exists()) and distributed.is_main_process():
        metrics_path.unlink(missing_ok=True)  # a fresh run; a resumed one keeps its earlier steps
    training = train(
        prepared.policy,
        prepared.method,
        prepared.train_tokens,
        config.training,
        reference=prepared.train_reference,
        pad_token_id=prepared.pad_token_id,
        seed=training_seed(config),
        metrics_path=metrics_path,
        checkpoint_dir=checkpoint_dir,
        device=device.type,
        gradient_checkpointing=config.model.gradient_checkpointing,
    )
    if not distributed.is_main_process():  # rank 0 evaluates the trained model and writes the run's files
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
    missing: dict[str, str] = {}  # metric -> why it could not be computed
    if "loss" not in training.final_metrics:
        missing["final_loss"] = (
            f"no logged step had a finite loss ({training.skipped_steps} of {training.steps} steps were skipped "
            "as non-finite, training.nan_policy = skip)"
        )
    metrics = {
        **({"final_loss": training.final_metrics["loss"]} if "loss" in training.final_metrics else {}),
        **evaluate_run(
            config,
            prepared,
            cache_dir,
            device,
            pairs_path=run_dir / PAIRS_FILE,
            items_path=run_dir / ITEMS_FILE,
            missing=missing,
        ),
    }
    if config.training.save_model:  # the trained policy, loadable with from_pretrained
        prepared.policy.save_pretrained(run_dir / "model", safe_serialization=True)
        prepared.tokenizer.save_pretrained(run_dir / "model")
        make_files_shareable(run_dir / "model")
    benchmark_details: dict[str, Any] = {}
    if config.evaluation.benchmarks and distributed.is_main_process():
        benchmark_metrics, benchmark_details = run_benchmarks(
            config.evaluation.benchmarks,
            prepared.policy,
            prepared.tokenizer,
            run_dir,
            model_id=f"noisypref-{config.run_id}",
            seed=config.seed,
        )
        metrics.update(benchmark_metrics)
    details = {
        "hyperparameters": prepared.hyperparameters,
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
        "truncation": truncation_summary(config, prepared.train_tokens, prepared.heldout_tokens),
    }
    symbols = symbolic_hyperparameters(config.method.hyperparameters)
    if symbols:
        details["symbolic_hyperparameters"] = symbols
    if prepared.cleaning is not None:
        details["cleaning"] = prepared.cleaning.summary()
    if benchmark_details:
        details["benchmarks"] = benchmark_details
    if missing:
        details["missing_metrics"] = missing
    return metrics, details


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
