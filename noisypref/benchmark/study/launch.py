"""A study under a multi-process launch: every run spread across all the processes.

``torchrun --nproc_per_node N -m noisypref run STUDY`` (or ``accelerate launch``) starts N copies of
``noisypref run``. Rank 0 leads: it schedules the study as a single process would (claims each run,
records results and failures, writes results.parquet and the report) and, before it executes a run,
sends the run to the other ranks over a gloo control group. The others follow: they execute each run
they receive — training on their share of every step, as ``training.sharding`` says — and write
nothing; they stop when rank 0 sends the end of the study.

A run that raises on a follower is logged there; rank 0 records the run's outcome as it sees it. A
failure while preparing a run fails it on every process (``distributed.agreed``) and the study goes
on; a process that fails in the middle of a training step leaves the others waiting in a collective
until torch's timeout ends them, and the launch must be started again (it resumes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from noisypref.benchmark.engine import distributed

logger = logging.getLogger(__name__)

Executor = Callable[[dict[str, Any], Path, Path, str | None], Any]


class Leader:
    """Rank 0's executor: announces each run to the followers, then executes its own part."""

    def __init__(self, executor: Executor, control: dist.ProcessGroup) -> None:
        self.executor = executor
        self.control = control

    def __call__(self, config: dict[str, Any], run_dir: Path, cache_dir: Path, device: str | None) -> Any:
        message = {"config": config, "run_dir": str(run_dir), "cache_dir": str(cache_dir), "device": device}
        distributed.broadcast_object(message, self.control)
        return self.executor(config, run_dir, cache_dir, device)

    def finish(self) -> None:
        """Tell the followers that the study has no more runs."""
        distributed.broadcast_object(None, self.control)


def follow(executor: Executor, control: dist.ProcessGroup) -> int:
    """Execute the runs rank 0 announces until it announces the end; returns the number executed."""
    executed = 0
    while True:
        message = distributed.broadcast_object(None, control)
        if message is None:
            return executed
        executed += 1
        try:
            executor(message["config"], Path(message["run_dir"]), Path(message["cache_dir"]), message["device"])
        except Exception as error:  # noqa: BLE001 (rank 0 records the run; this rank goes on to the next)
            logger.warning("rank %d: run in %s failed here: %s", distributed.rank(), message["run_dir"], error)


def control_group() -> dist.ProcessGroup:
    """Join the launch's process group; the study's messages travel on its patient gloo group."""
    distributed.init_from_environment()
    return distributed.patient_group()
