"""Reference-model log-probs, computed once per (reference model, tokenised dataset) and cached on disk.

The file ``cache_dir/reference_logps/<key>.pt`` holds, per ``pair_id``, the summed log-probs of the
pair's two responses in canonical order, ``(logp_a, logp_b)`` (see ``noisypref.benchmark.engine.tokenization``).
``key`` hashes the model identity and the dataset's ``content_key``, which ignores the labels: every
method, noise model, flip rate and seed on the same data reads the same file, and a flipped pair
just takes the two values the other way round. A method that needs LD-DPO's shared-prefix sums
(``ld_alpha``) reads a file of its own (``shared_prefix=True``, its key says so) that also holds
``(shared_a, shared_b)``: each response summed over its first ``min(|a|, |b|)`` tokens, which, like
the totals, do not depend on the label.

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
from noisypref.benchmark.engine.batches import pair_batch, pair_shared_lengths
from noisypref.benchmark.engine.logps import SequenceLogps, autocast_for, summed_response_logps
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.benchmark.progress import phase
from noisypref.benchmark.storage import cached_torch_file

logger = logging.getLogger(__name__)

REFERENCE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReferenceLogps:
    """Reference log-probs of the two responses of every pair, aligned with a ``TokenizedPairs``."""

    logp_a: torch.Tensor
    logp_b: torch.Tensor
    # LD-DPO's shared-prefix sums (module docstring); None unless computed with shared_prefix=True
    shared_a: torch.Tensor | None = None
    shared_b: torch.Tensor | None = None

    def chosen_and_rejected(
        self, pairs: TokenizedPairs, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the chosen and the rejected response of the pairs ``indices``."""
        return _by_label(pairs, indices, self.logp_a, self.logp_b)

    def pair_fields(
        self, pairs: TokenizedPairs, indices: torch.Tensor, *, shared_prefix: bool = False
    ) -> dict[str, torch.Tensor]:
        """The reference fields of ``PairLogps`` for the pairs ``indices`` (with the shared-prefix sums)."""
        chosen, rejected = self.chosen_and_rejected(pairs, indices)
        fields = {"reference_chosen": chosen, "reference_rejected": rejected}
        if shared_prefix:
            if self.shared_a is None or self.shared_b is None:
                raise ValueError(
                    "these reference log-probs have no shared-prefix sums; compute them with shared_prefix"
                )
            shared = _by_label(pairs, indices, self.shared_a, self.shared_b)
            fields.update(reference_chosen_shared=shared[0], reference_rejected_shared=shared[1])
        return fields


def _by_label(
    pairs: TokenizedPairs, indices: torch.Tensor, value_a: torch.Tensor, value_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair values in canonical order as (chosen, rejected) of the pairs ``indices``."""
    chosen_is_a = pairs.chosen_is_a[indices]
    value_a, value_b = value_a[indices], value_b[indices]
    return torch.where(chosen_is_a, value_a, value_b), torch.where(chosen_is_a, value_b, value_a)


def reference_cache_path(
    cache_dir: str | Path, model_identity: str, pairs: TokenizedPairs, *, shared_prefix: bool = False
) -> Path:
    payload = [REFERENCE_FORMAT_VERSION, model_identity, pairs.content_key]
    if shared_prefix:  # only then: the files without shared-prefix sums keep their names
        payload.append("shared_prefix")
    key = hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()[:32]
    return Path(cache_dir) / "reference_logps" / f"reference-{key}.pt"


def reference_logps(
    model: PreTrainedModel,
    pairs: TokenizedPairs,
    *,
    model_identity: str,
    cache_dir: str | Path | None,
    pad_token_id: int,
    batch_size: int = 64,
    shared_prefix: bool = False,
) -> ReferenceLogps:
    """The reference log-probs of ``pairs`` under ``model``, from the cache when present.

    ``model_identity`` must name the model's weights and numerics (e.g. a content hash of the
    checkpoint plus dtype and device type): it is the cache key's model half. Without a
    ``cache_dir`` nothing is cached. ``shared_prefix`` adds LD-DPO's shared-prefix sums.
    """

    def compute() -> dict:
        shared_lengths = None
        if shared_prefix:
            responses = zip(pairs.response_a_ids, pairs.response_b_ids, strict=True)
            shared = [min(len(response_a), len(response_b)) for response_a, response_b in responses]
            shared_lengths = shared + shared
        with phase(f"reference log-probs of {len(pairs)} pairs", 2 * len(pairs), "sequence") as progress:
            logps = _summed_response_logps_across_processes(
                model,
                pairs.prompt_ids + pairs.prompt_ids,
                pairs.response_a_ids + pairs.response_b_ids,
                pad_token_id,
                batch_size,
                progress.advance,
                shared_lengths,
            )
        stored = {
            "pair_ids": pairs.pair_ids,
            "model_identity": model_identity,
            "content_key": pairs.content_key,
        }
        if shared_prefix:
            logps, shared_logps = logps.unbind(dim=1)
            stored["shared_a"] = shared_logps[: len(pairs)].clone()
            stored["shared_b"] = shared_logps[len(pairs) :].clone()
        stored["logp_a"] = logps[: len(pairs)].clone()
        stored["logp_b"] = logps[len(pairs) :].clone()
        return stored

    description = f"reference log-probs of {len(pairs)} pairs"
    if cache_dir is None:
        stored = compute()
    else:
        path = reference_cache_path(cache_dir, model_identity, pairs, shared_prefix=shared_prefix)
        if distributed.world_size() == 1:
            stored = cached_torch_file(path, compute, description)
        else:
            stored = _cached_across_processes(path, compute, description)
    names = ("logp_a", "logp_b", "shared_a", "shared_b") if shared_prefix else ("logp_a", "logp_b")
    if stored["pair_ids"] == pairs.pair_ids:
        return ReferenceLogps(*(stored[name] for name in names))
    position = {pair_id: row for row, pair_id in enumerate(stored["pair_ids"])}
    rows = torch.tensor([position[pair_id] for pair_id in pairs.pair_ids])
    return ReferenceLogps(*(stored[name][rows] for name in names))


def _summed_response_logps_across_processes(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_token_id: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    shared_lengths: list[int] | None = None,
) -> torch.Tensor:
    """``summed_response_logps`` with the sequences dealt out to the processes of a launch (by length, so each
    gets a similar number of tokens) and the results gathered on every process."""
    if distributed.world_size() == 1:
        return summed_response_logps(
            model, prompt_ids, response_ids, pad_token_id, batch_size=batch_size, on_batch=on_batch,
            shared_lengths=shared_lengths,
        )  # fmt: skip
    by_length = sorted(range(len(prompt_ids)), key=lambda row: len(prompt_ids[row]) + len(response_ids[row]))
    mine = by_length[distributed.rank() :: distributed.world_size()]
    values = distributed.agreed(  # a failure here (out of memory) must not leave the others in the gather
        lambda: summed_response_logps(
            model,
            [prompt_ids[row] for row in mine],
            [response_ids[row] for row in mine],
            pad_token_id,
            batch_size,
            shared_lengths=None if shared_lengths is None else [shared_lengths[row] for row in mine],
        ),
        "computing its share of the reference log-probs",
    )
    columns = 1 if shared_lengths is None else 2
    local = torch.cat(
        [torch.tensor(mine, dtype=torch.float64)[:, None], values.double().reshape(len(mine), columns)], dim=1
    )
    gathered = distributed.gather(local, group=distributed.patient_group())
    result = torch.empty((len(prompt_ids), columns), dtype=torch.float32)
    result[gathered[:, 0].long()] = gathered[:, 1:].float()
    return result[:, 0] if shared_lengths is None else result


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

    def chosen_and_rejected(
        self, pairs: TokenizedPairs, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the chosen and the rejected response of the pairs ``indices``."""
        fields = self.pair_fields(pairs, indices)
        return fields["reference_chosen"], fields["reference_rejected"]

    @torch.no_grad()
    def pair_fields(
        self, pairs: TokenizedPairs, indices: torch.Tensor, *, shared_prefix: bool = False
    ) -> dict[str, torch.Tensor]:
        """The reference fields of ``PairLogps`` for the pairs ``indices`` (with the shared-prefix sums)."""
        batch = pair_batch(
            pairs, indices.tolist(), self.pad_token_id, pack=self.logps_model.supports_packing
        ).to(self.model.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.context(), autocast_for(self.model.device):
                if shared_prefix:
                    terms = self.logps_model(batch, shared_lengths=pair_shared_lengths(batch))
                    logps, shared = terms["sum"].float(), terms["shared"].float()
                else:
                    logps = self.logps_model(batch).float()
        finally:
            self.model.train(was_training)
        fields = dict(zip(("reference_chosen", "reference_rejected"), logps.chunk(2), strict=True))
        if shared_prefix:
            names = ("reference_chosen_shared", "reference_rejected_shared")
            fields.update(zip(names, shared.chunk(2), strict=True))
        return fields
