"""Reference-model log-probs, computed once per (reference model, tokenised dataset) and cached on disk.

The file ``cache_dir/reference_logps/<key>.pt`` holds, per ``pair_id``, the summed log-probs of the
pair's two responses in canonical order, ``(logp_a, logp_b)`` (see ``noisypref.benchmark.engine.tokenization``).
``key`` hashes the model identity and the dataset's ``content_key``, which ignores the labels: every
method, noise model, flip rate and seed on the same data reads the same file, and a flipped pair
just takes the two values the other way round.

``LiveReference`` is the alternative for ``model.reference: live``: the reference model is kept in
memory and scores each batch when it is used (a second copy of the model, or, for a LoRA policy, the
policy with its adapters switched off). Same interface, no cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.logps import (
    SequenceLogps,
    autocast_for,
    copied_to,
    pair_batch,
    sequence_logps,
)
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.benchmark.progress import phase
from noisypref.benchmark.storage import cached_torch_file
from noisypref.methods import PairLogps

logger = logging.getLogger(__name__)

REFERENCE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReferenceLogps:
    """Reference log-probs of the two responses of every pair, aligned with a ``TokenizedPairs``."""

    logp_a: torch.Tensor
    logp_b: torch.Tensor

    def chosen_and_rejected(
        self, pairs: TokenizedPairs, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the chosen and the rejected response of the pairs ``indices``."""
        chosen_is_a = pairs.chosen_is_a[indices]
        logp_a, logp_b = self.logp_a[indices], self.logp_b[indices]
        return torch.where(chosen_is_a, logp_a, logp_b), torch.where(chosen_is_a, logp_b, logp_a)


def reference_cache_path(cache_dir: str | Path, model_identity: str, pairs: TokenizedPairs) -> Path:
    payload = json.dumps([REFERENCE_FORMAT_VERSION, model_identity, pairs.content_key])
    key = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
    return Path(cache_dir) / "reference_logps" / f"reference-{key}.pt"


def reference_logps(
    model: PreTrainedModel,
    pairs: TokenizedPairs,
    *,
    model_identity: str,
    cache_dir: str | Path | None,
    pad_token_id: int,
    batch_size: int = 64,
) -> ReferenceLogps:
    """The reference log-probs of ``pairs`` under ``model``, from the cache when present.

    ``model_identity`` must name the model's weights and numerics (e.g. a content hash of the
    checkpoint plus dtype and device type): it is the cache key's model half. Without a
    ``cache_dir`` nothing is cached.
    """

    def compute() -> dict:
        with phase(f"reference log-probs of {len(pairs)} pairs", 2 * len(pairs), "sequence") as progress:
            logps = _sequence_logps_across_processes(
                model,
                pairs.prompt_ids + pairs.prompt_ids,
                pairs.response_a_ids + pairs.response_b_ids,
                pad_token_id,
                batch_size,
                progress.advance,
            )
        return {
            "pair_ids": pairs.pair_ids,
            "logp_a": logps[: len(pairs)].clone(),
            "logp_b": logps[len(pairs) :].clone(),
            "model_identity": model_identity,
            "content_key": pairs.content_key,
        }

    description = f"reference log-probs of {len(pairs)} pairs"
    if cache_dir is None:
        stored = compute()
    elif distributed.world_size() == 1:
        stored = cached_torch_file(
            reference_cache_path(cache_dir, model_identity, pairs), compute, description
        )
    else:
        stored = _cached_across_processes(
            reference_cache_path(cache_dir, model_identity, pairs), compute, description
        )
    if stored["pair_ids"] == pairs.pair_ids:
        return ReferenceLogps(stored["logp_a"], stored["logp_b"])
    position = {pair_id: row for row, pair_id in enumerate(stored["pair_ids"])}
    rows = torch.tensor([position[pair_id] for pair_id in pairs.pair_ids])
    return ReferenceLogps(stored["logp_a"][rows], stored["logp_b"][rows])


def _sequence_logps_across_processes(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_token_id: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``sequence_logps`` with the sequences dealt out to the processes of a launch (by length, so each
    gets a similar number of tokens) and the results gathered on every process."""
    if distributed.world_size() == 1:
        return sequence_logps(model, prompt_ids, response_ids, pad_token_id, batch_size=batch_size, on_batch=on_batch)
    by_length = sorted(range(len(prompt_ids)), key=lambda row: len(prompt_ids[row]) + len(response_ids[row]))
    mine = by_length[distributed.rank() :: distributed.world_size()]
    values = distributed.agreed(  # a failure here (out of memory) must not leave the others in the gather
        lambda: sequence_logps(
            model,
            [prompt_ids[row] for row in mine],
            [response_ids[row] for row in mine],
            pad_token_id,
            batch_size,
        ),
        "computing its share of the reference log-probs",
    )
    local = torch.stack([torch.tensor(mine, dtype=torch.float64), values.double()], dim=1).reshape(-1, 2)
    gathered = distributed.gather(local, group=distributed.patient_group())
    result = torch.empty(len(prompt_ids), dtype=torch.float32)
    result[gathered[:, 0].long()] = gathered[:, 1].float()
    return result


def _cached_across_processes(path: Path, compute: Callable[[], dict], description: str) -> dict:
    """The cache file when rank 0 finds it; otherwise every process computes its share and rank 0 writes it."""
    if distributed.broadcast_object(path.exists(), distributed.patient_group()):
        # Every process reads rank 0's file: on several machines the cache folder must be shared.
        logger.info("%s: cache hit %s", description, path)
        return distributed.agreed(lambda: torch.load(path, weights_only=True), f"reading {path}")
    value = compute()
    return distributed.agreed(
        lambda: (
            cached_torch_file(path, lambda: value, description) if distributed.is_main_process() else value
        ),
        f"writing {path}",
    )


class LiveReference:
    """Reference log-probs computed on demand by a frozen reference model (``model.reference: live``).

    ``context`` wraps each reference forward pass; for a LoRA policy that serves as its own reference
    it switches the adapters off (``noisypref.benchmark.engine.models.adapters_disabled``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_token_id: int,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.context = context
        self.logps_model = SequenceLogps(model)

    @torch.no_grad()
    def chosen_and_rejected(
        self, pairs: TokenizedPairs, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the chosen and the rejected response of the pairs ``indices``."""
        batch = pair_batch(
            pairs, indices.tolist(), self.pad_token_id, pack=self.logps_model.supports_packing
        ).to(self.model.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.context(), autocast_for(self.model.device):
                logps = self.logps_model(batch).float()
        finally:
            self.model.train(was_training)
        return logps.chunk(2)


def forward_pairs(
    logps_model: torch.nn.Module,
    pairs: TokenizedPairs,
    indices: torch.Tensor,
    reference: ReferenceLogps | None,
    pad_token_id: int,
    device: torch.device,
    *,
    pack: bool,
) -> PairLogps:
    """Policy log-probs of the pairs ``indices``: chosen and rejected in one forward pass of
    ``logps_model`` (a ``SequenceLogps``, possibly wrapped for data parallelism)."""
    batch = pair_batch(pairs, indices.tolist(), pad_token_id, pack=pack).to(device)
    with autocast_for(device):
        sequence_logps = logps_model(batch)
    policy_chosen, policy_rejected = sequence_logps.float().chunk(2)
    chosen_length, rejected_length = batch.response_lengths.float().chunk(2)
    reference_chosen = reference_rejected = None
    if reference is not None:
        reference_chosen, reference_rejected = (
            copied_to(values, device) for values in reference.chosen_and_rejected(pairs, indices)
        )
    return PairLogps(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        chosen_length=chosen_length,
        rejected_length=rejected_length,
        reference_chosen=reference_chosen,
        reference_rejected=reference_rejected,
    )
