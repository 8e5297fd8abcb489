"""Collectives shared by the methods (the γ candidate set) and the engine (metrics, reference log-probs)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_rows(
    values: torch.Tensor, group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, list[int]]:
    """The rows (first dimension) of ``values`` from every process of ``group``, concatenated in rank
    order, and how many rows each process gave. Processes may give different numbers of rows: the
    counts are gathered first, every process pads to the largest, and the padding is dropped."""
    count = torch.tensor([values.shape[0]], dtype=torch.long, device=values.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    sizes = [int(size.item()) for size in counts]
    padded = values.new_zeros((max(sizes), *values.shape[1:]))
    padded[: values.shape[0]] = values
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]), sizes
