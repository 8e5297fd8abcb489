"""One run across several processes: data parallelism or fully sharded data parallelism (FSDP).

A launcher (``torchrun --nproc_per_node N``, or ``accelerate launch`` with a multi-GPU config) starts
N copies of ``noisypref run`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address in their environment. ``init_from_environment`` joins them into one process group (NCCL on
GPUs, each process on GPU ``LOCAL_RANK``; gloo on CPUs). Every process trains on its share of each
step's pairs; rank 0 alone evaluates the trained model and writes the run's files.

``training.sharding``:

- ``none``: every process holds the whole model; gradients are averaged by ``DistributedDataParallel``.
- ``fsdp``: PyTorch's ``fully_shard`` (FSDP2): parameters, gradients and optimizer state are split
  across the processes, one FSDP unit per transformer layer (the classes the model lists in
  ``_no_split_modules``) plus the root (embeddings, final norm, LM head). On CUDA, layers compute in
  bf16 and gradients are reduced in float32. After training the full weights are gathered to rank 0.

A launch through ``accelerate`` with an FSDP config (``ACCELERATE_USE_FSDP=true``) is taken as
``sharding: fsdp``; DeepSpeed launches are refused (the engine does not drive a DeepSpeed engine).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from noisypref.collectives import all_gather_rows

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long a process waits for rank 0 outside training steps (the next run's broadcast, a cache that
# rank 0 builds): rank 0 may evaluate a large model for hours while the others wait. Collectives of
# a training step keep torch's default timeout.
PATIENT_TIMEOUT = datetime.timedelta(days=7)
_patient: dist.ProcessGroup | None = None


def launched_world_size() -> int:
    """The number of processes of the launch (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank: in the joined group, else the launcher's ``RANK`` (0 without a launch)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0


def is_main_process() -> bool:
    return rank() == 0


def world_size() -> int:
    """Processes in the joined process group (1 when none is joined)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def init_from_environment() -> None:
    """Join the launch's process group once (nothing without a launcher). Every process calls it at
    the same point: it also opens the patient group, a collective."""
    global _patient
    if launched_world_size() <= 1:
        return
    if dist.is_available() and dist.is_initialized():  # joined by the caller's own code
        if _patient is None:
            _patient = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
        return
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError(
            "launched with a DeepSpeed accelerate config: noisypref's engine does not run DeepSpeed. "
            "Use configs/accelerate/fsdp.yaml (or torchrun) with training.sharding: fsdp, which shards "
            "parameters, gradients and optimizer state like ZeRO stage 3"
        )
    # CPU tensors over gloo, CUDA tensors over NCCL: a run on the CPU of a GPU machine works too.
    backend = "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    _patient = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    logger.info(
        "process %d of %d joined the process group (%s)", dist.get_rank(), dist.get_world_size(), backend
    )


def end_launch() -> None:
    """Leave the launch's process group (at the end of ``noisypref run`` on every process). Without it
    the process groups are torn down by the interpreter's exit, in no defined order with NCCL's and
    gloo's threads: a torchrun test once ended with SIGABRT at exit (issue 28)."""
    global _patient
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # every group, the patient one too
    _patient = None


def patient_group() -> dist.ProcessGroup | None:
    """A gloo group whose waits last up to ``PATIENT_TIMEOUT`` (rank 0 may build caches or evaluate
    for long while the others wait); ``None`` without a launch."""
    return _patient


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it (e.g. building a cache they then read); when
    it fails on rank 0 the others skip it and raise.

    Files that transformers' ``save_pretrained`` writes are written on rank 0 only, so a cache built
    by another rank would be empty."""
    if world_size() == 1:
        yield
        return
    if not is_main_process():
        if not broadcast_object(None, _patient):
            raise RuntimeError("rank 0 failed in a step the other processes wait for (its log says why)")
        yield
        return
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        broadcast_object(succeeded, _patient)


def sharding_mode(configured: str) -> str:
    """``configured``, or ``fsdp`` when accelerate's launcher asked for FSDP."""
    if configured == "none" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        logger.info("launched with an accelerate FSDP config: training with training.sharding = fsdp")
        return "fsdp"
    return configured


def agreed(function: Callable[[], T], what: str) -> T:
    """``function()``, raising on every process when it raised on any, so that no process goes on to
    wait in a collective for one that has given up. A collective on the patient group."""
    if world_size() == 1:
        return function()
    failure: Exception | None = None
    try:
        result = function()
    except Exception as error:  # noqa: BLE001 (re-raised below, after the others have heard of it)
        failure = error
    succeeded = torch.tensor([0 if failure is not None else 1])
    dist.all_reduce(succeeded, op=dist.ReduceOp.MIN, group=_patient)
    if failure is not None:
        raise failure
    if not succeeded.item():
        raise RuntimeError(
            f"another process of the launch failed {what} (its log says why); this one stops too"
        )
    return result


def gather(values: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """``values`` of every process concatenated along the first dimension, rank order (any sizes).
    ``group``: the default group, or e.g. ``patient_group()`` (gloo: CPU tensors)."""
    if world_size() == 1:
        return values
    return all_gather_rows(values, group)[0]


def all_true(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every process."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def layer_classes(model: nn.Module) -> set[str]:
    """Names of the transformer-layer classes the model (or a model it wraps) declares unsplittable."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def shard_model(wrapper: nn.Module, model: nn.Module, device: torch.device) -> int:
    """Shard ``model``'s layers and, as the root unit, ``wrapper`` (whose forward calls the model, so
    the root's parameters are gathered around it). Returns the number of layer units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = _device_mesh(device)
    options: dict = {"mesh": mesh}
    if device.type == "cuda":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    classes = layer_classes(model)
    layers = [module for module in model.modules() if type(module).__name__ in classes]
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(wrapper, **options)
    logger.info("sharded %d layer units and the root across %d processes", len(layers), world_size())
    return len(layers)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded parameters and buffers of a sharded ``model`` on rank 0's CPU ({} elsewhere).
    A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly sharded (DTensor) one."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size(),))


def broadcast_object(value: object, group: dist.ProcessGroup | None) -> object:
    """Rank 0's ``value`` on every process of ``group``."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0, group=group)
    return holder[0]
