"""The training loop's checkpoint: what ``checkpoint_dir/checkpoint.pt`` holds, and resuming from it.

One file, written atomically (``torch_save_atomic``) by rank 0: the step, the policy's weights, the
optimizer's state, the method's state (margin queue, β-DPO statistics) and the random generators a
step draws from (``rng_states``: the CPU's, and the current CUDA device's when CUDA is in use, so
dropout resumes exactly). A sharded run (``training.sharding: fsdp``) gathers full state dicts from
the shards to write it (``"sharding": "fsdp"`` in the file) and sends the shards out from rank 0's
memory-mapped copy to resume; a file written with one sharding mode is refused by the other.

Resuming (``resume``) drops the metrics lines logged after the checkpoint (and a torn last line). A
checkpoint that does not load is discarded with a warning naming it, and the run starts again from
step 0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from noisypref.benchmark.engine import distributed
from noisypref.benchmark.storage import torch_save_atomic
from noisypref.methods import PreferenceMethod

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (torn by a crash or a full disk while it was written)."""


def resume(
    checkpoint_dir: Path | None,
    metrics_path: Path | None,
    logps_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    method: PreferenceMethod,
    sharding: str,
) -> tuple[int, dict[str, float] | None]:
    """Restore the checkpoint in ``checkpoint_dir`` if there is one: ``(step, last logged metrics)``,
    ``(0, None)`` for a fresh start. ``logps_model`` is the engine's ``SequenceLogps`` (possibly
    wrapped for data parallelism; sharded in place under ``fsdp``)."""
    if checkpoint_dir is None or not (Path(checkpoint_dir) / CHECKPOINT_FILE).exists():
        return 0, None
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE
    start_step, last_record = 0, None
    try:
        if sharding == "fsdp":
            start_step = load_sharded_checkpoint(checkpoint_path, logps_model, optimizer, method)
        else:
            start_step = load_checkpoint(checkpoint_path, _unwrapped(logps_model).model, optimizer, method)
        logger.info("resuming from the checkpoint of step %d", start_step)
    except UnreadableCheckpointError as error:  # nothing was restored from it: a fresh start is exact
        logger.warning("%s; the run starts again from step 0", error)
        if distributed.is_main_process():
            checkpoint_path.unlink(missing_ok=True)
    if metrics_path is not None and distributed.is_main_process():
        logged = drop_metrics_after(metrics_path, start_step)
        last_record = logged[-1] if logged and start_step else None
    return start_step, last_record


def save(
    checkpoint_dir: Path,
    step: int,
    logps_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    method: PreferenceMethod,
    sharding: str,
) -> None:
    """The checkpoint of step ``step`` in ``checkpoint_dir``, written by rank 0; under sharding every
    process takes part in gathering the state."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if sharding == "fsdp":
        save_sharded_checkpoint(path, step, logps_model, optimizer, method)
    elif distributed.is_main_process():
        save_checkpoint(path, step, _unwrapped(logps_model).model, optimizer, method)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The ``SequenceLogps`` inside a ``DistributedDataParallel`` wrapper (itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def policy_state(wrapper_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's own keys from the state dict of its ``SequenceLogps`` wrapper."""
    return {name.removeprefix("model."): value for name, value in wrapper_state.items()}


def save_checkpoint(
    path: Path, step: int, policy: PreTrainedModel, optimizer: torch.optim.Optimizer, method: PreferenceMethod
) -> None:
    torch_save_atomic(
        path,
        {
            "step": step,
            "model": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "method": method.state_dict(),
            **rng_states(),
        },
    )
    logger.info("checkpoint of step %d written to %s", step, path)


def load_checkpoint(
    path: Path, policy: PreTrainedModel, optimizer: torch.optim.Optimizer, method: PreferenceMethod
) -> int:
    """Restore model, optimizer, method state and RNG of an unsharded run; return the step the
    checkpoint was taken at. `UnreadableCheckpointError`, having restored nothing, when the file does
    not load."""
    state = _check_checkpoint_sharding(path, read_checkpoint(path), "none")
    policy.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    restore_rng_states(state)
    return int(state["step"])


def save_sharded_checkpoint(
    path: Path, step: int, logps_model: torch.nn.Module, optimizer: torch.optim.Optimizer, method: PreferenceMethod
) -> None:
    """The full state gathered from the shards (every process takes part), written by rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(logps_model, optimizer, options=options)
    if distributed.is_main_process():
        torch_save_atomic(
            path,
            {
                "step": step,
                "sharding": "fsdp",
                "model": policy_state(model_state),
                "optimizer": optimizer_state,
                "method": method.state_dict(),
                **rng_states(),
            },
        )
        logger.info("checkpoint of step %d written to %s (full state gathered from the shards)", step, path)


def load_sharded_checkpoint(
    path: Path, logps_model: torch.nn.Module, optimizer: torch.optim.Optimizer, method: PreferenceMethod
) -> int:
    """Rank 0 reads the file (memory-mapped) and the shards are sent from it; the step, the method's
    state and the RNG state reach every process."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    def read() -> dict[str, Any]:
        if not distributed.is_main_process():
            return {}
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)

    state = distributed.agreed(read, "reading the checkpoint")
    small = {key: value for key, value in state.items() if key not in ("model", "optimizer")}
    small = distributed.broadcast_object(small, distributed.patient_group())
    _check_checkpoint_sharding(path, small, "fsdp")
    # Two calls: set_state_dict skips the model on a rank whose (empty) model state it is given.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    model_state = {f"model.{name}": value for name, value in state.get("model", {}).items()}
    set_model_state_dict(logps_model, model_state, options=options)
    set_optimizer_state_dict(logps_model, optimizer, state.get("optimizer", {}), options=options)
    method.load_state_dict(small["method"])
    restore_rng_states(small)
    return int(small["step"])


def _check_checkpoint_sharding(path: Path, state: dict[str, Any], sharding: str) -> dict[str, Any]:
    saved = state.get("sharding", "none")
    if (saved == "fsdp") != (sharding == "fsdp"):
        raise ValueError(
            f"{path} was written with training.sharding = {saved}; this run trains with {sharding}: delete "
            "the checkpoint folder to start the run afresh"
        )
    return state


def rng_states() -> dict[str, torch.Tensor]:
    """The random number generators a step draws from (dropout): the CPU's, and the current CUDA
    device's when CUDA is in use (under several processes, rank 0's, as for the CPU's)."""
    states = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(state: dict[str, Any]) -> None:
    """Set the generators ``rng_states`` saved; a CUDA state is restored when CUDA is here (a checkpoint
    written on the CPU leaves the CUDA generator as it is, one written on CUDA read on the CPU too)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's content; `UnreadableCheckpointError` naming the file when it does not load."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torn zip archive, truncated pickle, a disk error: all mean "not usable"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UnreadableCheckpointError(
            f"the checkpoint {path} cannot be read ({type(error).__name__}: {first_line}); it is discarded"
        ) from error
    if not isinstance(state, dict) or "step" not in state:
        raise UnreadableCheckpointError(f"the checkpoint {path} holds no training state; it is discarded")
    return state


def drop_metrics_after(metrics_path: Path, step: int) -> list[dict[str, Any]]:
    """Remove metric lines of steps after ``step`` (written after the checkpoint a run resumes from),
    and any line that is not a complete record (a torn last line of a killed run), with a warning
    naming the file and the line; returns the records kept (the last one is the run's latest
    metrics, should it resume at its last step)."""
    if not metrics_path.exists():
        return []
    kept, records = [], []
    for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            logged_step = record["step"] if isinstance(record, dict) else None
        except json.JSONDecodeError:
            logged_step = None
        if not isinstance(logged_step, int):
            logger.warning("%s, line %d is not a complete metrics record (%.60s); dropped", metrics_path, number, line)
            continue
        if logged_step <= step:
            kept.append(line)
            records.append(record)
    metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return records
