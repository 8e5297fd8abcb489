"""The γ-PO margin estimator: per-pair target margins for a training batch (DESIGN §3.1).

The candidate set is the batch's reward gaps, gathered across data-parallel ranks, plus gaps drawn
from a queue of earlier training gaps; `solvers.solve_margins` spreads the margin budget over it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from noisypref.checks import check_choice, check_integer, check_non_negative, check_positive
from noisypref.collectives import all_gather_rows
from noisypref.methods.margins.solvers import SOLVERS, solve_margins


class MarginEstimator:
    """γ-PO margins for a training loop: a candidate set from the batch plus a queue of past gaps.

    Calling it with a batch's detached reward gaps returns their margins γ_i (mean γ0 over the
    candidate set, no gradient, the batch's dtype and device). The candidate set is the batch —
    in training mode all-gathered across data-parallel ranks when ``torch.distributed`` runs with
    more than one process, so every rank solves the same problem; in evaluation mode this process's
    batch alone — plus up to ``candidates − batch`` gaps drawn
    without replacement from a FIFO queue of the last ``queue_size`` training gaps. The draw uses a
    CPU generator seeded with ``seed``, identical on every rank, and happens before the batch is
    queued. A batch of ``candidates`` or more gaps is the candidate set on its own. Only training
    batches enter the queue, which starts empty; an evaluation call changes no state (it draws
    from a copy of the generator). ``last_candidate_count`` is the size of the last candidate set.
    """

    def __init__(
        self,
        gamma0: float = 1.0,
        tau: float = 10.0,
        queue_size: int = 2048,
        candidates: int = 256,
        solver: str = "exact",
        iterations: int = 20,
        seed: int = 0,
    ) -> None:
        check_non_negative("gamma0", gamma0)
        check_positive("tau", tau)
        check_integer("queue_size", queue_size, minimum=0)
        check_integer("candidates", candidates, minimum=1)
        check_choice("solver", solver, SOLVERS)
        check_integer("iterations", iterations, minimum=1)
        check_integer("seed", seed, minimum=0)
        self.gamma0 = float(gamma0)
        self.tau = float(tau)
        self.queue_size = queue_size
        self.candidates = candidates
        self.solver = solver
        self.iterations = iterations
        self.seed = seed
        self.training = True
        self.last_candidate_count = 0
        self._queue = torch.zeros(0, dtype=torch.float64)
        self._generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> MarginEstimator:
        """Training mode: the gaps of each call enter the queue."""
        self.training = bool(mode)
        return self

    def eval(self) -> MarginEstimator:
        return self.train(False)

    def __call__(self, batch_gaps: torch.Tensor) -> torch.Tensor:
        if batch_gaps.dim() != 1:
            raise ValueError(
                f"batch_gaps must be 1-D (one gap per pair); got shape {tuple(batch_gaps.shape)}"
            )
        local_gaps = batch_gaps.detach().to(torch.float64)
        # Training steps run on every rank in lockstep; evaluation runs in one process (rank 0) and
        # never waits for the others.
        batch, offset = _all_gather_gaps(local_gaps) if self.training else (local_gaps, 0)
        if not bool(torch.isfinite(batch).all()):
            # A non-finite gap (a diverged step) gets NaN margins and leaves the queue alone: the loss
            # turns NaN and the training loop's nan_policy decides (fail, or skip the step).
            return torch.full_like(batch_gaps, math.nan)
        queue = self._queue.to(local_gaps.device)
        sample_size = min(queue.numel(), max(0, self.candidates - batch.numel()))
        if sample_size > 0:
            generator = self._generator
            if not self.training:  # evaluation leaves the training draws untouched
                generator = torch.Generator().set_state(self._generator.get_state())
            drawn = torch.randperm(queue.numel(), generator=generator)[:sample_size]
            candidate_gaps = torch.cat([batch, queue[drawn.to(queue.device)]])
        else:
            candidate_gaps = batch
        self.last_candidate_count = candidate_gaps.numel()
        margins = solve_margins(candidate_gaps, self.gamma0, self.tau, self.solver, self.iterations)
        if self.training:
            self._queue = torch.cat([queue, batch])[-self.queue_size :] if self.queue_size > 0 else queue
        return margins[offset : offset + local_gaps.numel()].to(batch_gaps.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The queue (oldest first, CPU float64) and the sampling generator's state."""
        return {"queue": self._queue.detach().cpu().clone(), "generator_state": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        queue = torch.as_tensor(state["queue"], dtype=torch.float64).detach().cpu()
        if queue.dim() != 1 or queue.numel() > self.queue_size:
            raise ValueError(
                f"state queue has shape {tuple(queue.shape)}; expected a 1-D tensor of at most "
                f"queue_size = {self.queue_size} gaps"
            )
        self._queue = queue.clone()
        self._generator.set_state(state["generator_state"])

    def __repr__(self) -> str:
        return (
            f"MarginEstimator(gamma0={self.gamma0}, tau={self.tau}, queue_size={self.queue_size}, "
            f"candidates={self.candidates}, solver={self.solver!r}, iterations={self.iterations}, seed={self.seed})"
        )


def _all_gather_gaps(local_gaps: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The gaps of every data-parallel rank in rank order, and where this rank's gaps start.

    Ranks may hold different batch sizes: the sizes are gathered first, every rank pads to the
    largest, and the padding is dropped after the gather.
    """
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return local_gaps, 0
    batch, sizes = all_gather_rows(local_gaps)
    return batch, sum(sizes[: distributed.get_rank()])
