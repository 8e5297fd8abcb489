"""MarginEstimator across two data-parallel ranks (gloo on the CPU): every rank solves the same candidate set."""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from noisypref.methods.margins import MarginEstimator, solve_margins

SETTINGS = {"gamma0": 2.0, "tau": 0.5, "queue_size": 6, "candidates": 9, "seed": 5}
EVALUATION_GAPS = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def rank_batches(rank: int) -> list[torch.Tensor]:
    """Different gaps and different batch sizes on the two ranks, three steps each."""
    generator = torch.Generator().manual_seed(100 + rank)
    sizes = [3, 4, 2] if rank == 0 else [5, 1, 4]
    return [torch.randn(size, generator=generator, dtype=torch.float64) * 3 for size in sizes]


def run_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    # A short timeout: an evaluation call that waited for the other rank would fail, not hang.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        estimator = MarginEstimator(**SETTINGS)
        margins = [estimator(batch) for batch in rank_batches(rank)]
        state = estimator.state_dict()
        # Evaluation runs on rank 0 alone (the run's evaluation): no gather, no wait for rank 1.
        evaluation = estimator.eval()(EVALUATION_GAPS) if rank == 0 else None
        dist.barrier()
        torch.save(
            {"margins": margins, "state": state, "evaluation": evaluation}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_ranks_share_candidate_sets_and_queues(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(run_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    batches = [rank_batches(rank) for rank in range(2)]

    # Step 1 (empty queue): the candidate set is the gathered batch, rank 0's gaps first.
    first = torch.cat([batches[0][0], batches[1][0]])
    torch.testing.assert_close(
        torch.cat([results[0]["margins"][0], results[1]["margins"][0]]),
        solve_margins(first, 2.0, 0.5),
        rtol=0,
        atol=0,
    )

    # Later steps draw from the queue: both ranks must equal one process fed the gathered batches.
    single = MarginEstimator(**SETTINGS)
    for step in range(3):
        gathered = torch.cat([batches[0][step], batches[1][step]])
        expected = single(gathered)
        size0 = batches[0][step].numel()
        torch.testing.assert_close(results[0]["margins"][step], expected[:size0], rtol=0, atol=0)
        torch.testing.assert_close(results[1]["margins"][step], expected[size0:], rtol=0, atol=0)

    assert torch.equal(results[0]["state"]["queue"], results[1]["state"]["queue"])
    assert torch.equal(results[0]["state"]["queue"], single.state_dict()["queue"])
    assert torch.equal(results[0]["state"]["generator_state"], results[1]["state"]["generator_state"])

    # Rank 0's evaluation call: its own gaps plus queue draws, as one process would compute them.
    evaluated = MarginEstimator(**SETTINGS)
    evaluated.load_state_dict(results[0]["state"])
    torch.testing.assert_close(results[0]["evaluation"], evaluated.eval()(EVALUATION_GAPS), rtol=0, atol=0)
