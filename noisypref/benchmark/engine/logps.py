"""Per-sequence log-probs of response tokens: chosen and rejected in one padding-free forward pass.

Packing (``noisypref.benchmark.engine.batches``): the sequences of a batch are packed into rows, each
sequence's ``position_ids`` starting again at 0. Given no attention mask, transformers
reads such position ids as packed sequences and restricts attention to each sequence (a block-diagonal
causal mask under SDPA, eager and flex attention), so a token never sees another sequence.
FlashAttention is the exception: transformers infers the boundaries from ``position_ids`` only for a
batch of one row (``_is_packed_sequence`` in ``modeling_flash_attention_utils``) and otherwise runs
plain causal attention over each row, across its sequences, without error; so for FlashAttention the
boundaries of every segment of the rows laid end to end go to the model explicitly (``cu_seq_lens_q``,
``max_length_q``, ... : its variable-length kernel). ``SequenceLogps`` checks once per model, on
sequences packed into two rows, that packed sequences get the hidden states they get alone, and
falls back to one right-padded row per sequence for a model that does not keep them apart.

The language-model head is applied to the response positions only, in chunks whose log-softmax is
recomputed in the backward pass instead of stored, so no ``[batch, length, vocabulary]`` float32
tensor is held.

Per-token terms some methods need besides the sums (``SequenceLogps.forward``'s ``shared_lengths`` and
``token_weights``, on the packed and the padded layouts alike): the sum over each sequence's first
``shared_lengths[s]`` response tokens (LD-DPO's shared prefix: ``min(|yw|, |yl|)`` of its pair), and
WPO's per-sequence weight term ``(1/|y|) Σ_t [log π(y_t) − log Σ_v π(v)²]``, without gradient.

``forward_pairs`` turns one forward pass over a batch of pairs into the method's input, ``PairLogps``
(with the reference log-probs of the pairs, cached or computed live: ``engine.reference``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from noisypref.benchmark.engine import batches
from noisypref.benchmark.engine.batches import (
    SequenceBatch,
    copied_to,
    pair_batch,
    pair_shared_lengths,
    sequence_batch,
)
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.methods import PairLogps, PreferenceMethod
from noisypref.methods.base import SHARED_PREFIX_FIELDS, WEIGHT_FIELDS

logger = logging.getLogger(__name__)

# Model config attributes that transform the head's output before the softmax; a model with any of
# them set runs its own forward (full logits) instead of the response-only head.
LOGIT_TRANSFORM_ATTRIBUTES = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)
# Attention implementations that read packed sequences' boundaries from the cu_seq_lens / max_length
# keywords only (see the module docstring): flash_attention_2 / _3 and the hub's flash kernels.
VARLEN_BOUNDARY_MARKER = "flash"


class PairReference(Protocol):
    """Reference log-probs by pair: ``engine.reference``'s cached ``ReferenceLogps`` or ``LiveReference``."""

    def pair_fields(
        self, pairs: TokenizedPairs, indices: torch.Tensor, *, shared_prefix: bool = False
    ) -> dict[str, torch.Tensor]: ...


class SequenceLogps(nn.Module):
    """Wraps a causal LM: ``forward(batch)`` gives each sequence's summed response log-prob (float32).

    A module of its own so that data parallelism (``DistributedDataParallel``) or FSDP can wrap it:
    gradients are synchronised, and the root's sharded weights gathered, around this forward. ``supports_packing`` says whether the model keeps packed
    sequences apart (checked once at construction); callers build batches with ``pack=`` it.
    """

    def __init__(self, model: PreTrainedModel, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.response_only_head = not any(
            getattr(model.config, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORM_ATTRIBUTES
        )
        self.supports_packing = packing_is_exact(model)

    def forward(
        self, batch: SequenceBatch, shared_lengths: torch.Tensor | None = None, token_weights: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Each sequence's summed response log-prob; with ``shared_lengths`` (one count per sequence) or
        ``token_weights``, a dict: ``"sum"``, ``"shared"`` (the sum over the first ``shared_lengths[s]``
        response tokens) and ``"weight_log"`` (WPO's term, module docstring), as asked."""
        # The token at position t + 1 is predicted from position t (of the same sequence: a sequence's
        # first token is a prompt token, never a response token).
        positions = batch.predicting_positions
        targets = batch.input_ids.flatten()[positions + 1]
        inputs = model_inputs(self.model, batch)
        if self.response_only_head:
            hidden = self.model.base_model(**inputs).last_hidden_state
            token_logps, log_sum_squares = self._head_log_probs(
                hidden.flatten(0, 1)[positions], targets, token_weights
            )
        else:
            logits = self.model(**inputs).logits.flatten(0, 1)[positions]
            token_logps = _target_log_probs(logits, targets)
            log_sum_squares = _log_sum_squared_probs(logits) if token_weights else None
        sequences = batch.sequence_index.flatten()[positions + 1]
        zeros = torch.zeros(batch.num_sequences, dtype=torch.float32, device=batch.input_ids.device)
        sums = zeros.index_add(0, sequences, token_logps)
        if shared_lengths is None and not token_weights:
            return sums
        terms = {"sum": sums}
        if shared_lengths is not None:
            place = _response_place(sequences, batch.num_sequences)
            in_prefix = place < shared_lengths.to(sequences.device)[sequences]
            terms["shared"] = zeros.index_add(0, sequences, token_logps * in_prefix)
        if token_weights:
            # WPO (Zhou et al. 2024, eq. 2): log π(y_t) aligned by log Σ_v π(v)², mean over the response
            aligned = zeros.index_add(0, sequences, token_logps.detach() - log_sum_squares)
            terms["weight_log"] = aligned / batch.response_lengths.to(aligned).clamp(min=1)
        return terms

    def _head_log_probs(
        self, hidden: torch.Tensor, targets: torch.Tensor, token_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target log-probs of the response positions; with ``token_weights``, log Σ_v p_v² (detached)."""
        head = self.model.get_output_embeddings()

        def chunk_log_probs(hidden_chunk, target_chunk) -> tuple[torch.Tensor, ...]:
            logits = head(hidden_chunk)
            log_probs = _target_log_probs(logits, target_chunk)
            return (log_probs, _log_sum_squared_probs(logits)) if token_weights else (log_probs,)

        if hidden.shape[0] <= self.chunk_tokens:
            pieces = [chunk_log_probs(hidden, targets)]
        else:
            pieces = []
            for start in range(0, hidden.shape[0], self.chunk_tokens):
                stop = start + self.chunk_tokens
                if torch.is_grad_enabled():
                    chunk = (hidden[start:stop], targets[start:stop])
                    pieces.append(checkpoint(chunk_log_probs, *chunk, use_reentrant=False))
                else:
                    pieces.append(chunk_log_probs(hidden[start:stop], targets[start:stop]))
        log_probs = torch.cat([piece[0] for piece in pieces])
        return log_probs, torch.cat([piece[1] for piece in pieces]) if token_weights else None


def _target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, in float32."""
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _log_sum_squared_probs(logits: torch.Tensor) -> torch.Tensor:
    """log Σ_v softmax(logits)_v² per row, in float32, without gradient (WPO's alignment term)."""
    logits = logits.detach().float()
    return torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)


def _response_place(sequences: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Each response token's place in its response (0, 1, …), given the sequence of every response token
    in layout order: a sequence's response tokens are contiguous and in order in both layouts."""
    order = torch.arange(sequences.numel(), device=sequences.device)
    first = torch.full((num_sequences,), sequences.numel(), dtype=order.dtype, device=sequences.device)
    first = first.scatter_reduce(0, sequences, order, reduce="amin")
    return order - first[sequences]


def needs_varlen_boundaries(model: PreTrainedModel) -> bool:
    """Whether the model's attention keeps packed sequences apart only when given their boundaries."""
    return VARLEN_BOUNDARY_MARKER in str(getattr(model.config, "_attn_implementation", None) or "")


def model_inputs(model: PreTrainedModel, batch: SequenceBatch) -> dict:
    """The keywords of the model's forward pass over ``batch``: no attention mask (packed sequences are
    told apart by their position ids, or for FlashAttention by their segments), no cache."""
    inputs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    if needs_varlen_boundaries(model):
        inputs.update(batch.varlen_attention_inputs())
    return inputs


@torch.no_grad()
def packing_is_exact(model: PreTrainedModel) -> bool:
    """Whether sequences packed into rows, two rows here, get the hidden states they get alone.

    The first row holds a sequence as long as the row, the second two short ones and the row's
    padding; the short ones are compared, per token, by the norm of the difference relative to the
    norm of the hidden state: a sequence that sees another one is off by about 1 (measured on random
    Qwen2 models of 2 and 24 layers), float32 rounding by 1e-6, bf16's by 3e-3 to 6e-3 (the testbed
    model with bf16 weights under SDPA). FlashAttention needs half precision, so a model that runs it
    is checked under the engine's autocast (bf16 on CUDA); other attention runs in the model's own
    precision."""
    vocabulary = model.get_input_embeddings().num_embeddings
    device = model.device
    long, first, second = list(range(1, max(16, batches.PACKED_WIDTH_MULTIPLE) + 1)), [1, 2, 3], [4, 5]  # a full row
    prompts = [[token % vocabulary for token in tokens] for tokens in (long, first, second)]
    batch = sequence_batch(prompts, [[], [], []], pad_token_id=0, pack=True).to(device)
    if batch.input_ids.shape[0] != 2:  # the layout the probe relies on
        raise AssertionError(f"the packing probe expected 2 rows, got {batch.input_ids.shape[0]}")
    flash = needs_varlen_boundaries(model)
    precision = autocast_for(device) if flash else contextlib.nullcontext()
    half_precision = (flash and device.type == "cuda") or model.dtype in (torch.bfloat16, torch.float16)
    was_training = model.training
    model.eval()
    with precision:
        packed = model.base_model(**model_inputs(model, batch)).last_hidden_state
        alone = [
            model.base_model(input_ids=torch.tensor([tokens], device=device), use_cache=False).last_hidden_state[0]
            for tokens in prompts[1:]
        ]
    model.train(was_training)
    worst = 0.0
    for index, expected in zip((1, 2), alone, strict=True):
        got = packed[batch.sequence_index == index].float()
        # per token: the norm of the difference relative to the token's own hidden state
        relative = (got - expected.float()).norm(dim=-1) / expected.float().norm(dim=-1).clamp(min=1e-6)
        worst = max(worst, float(relative.max()))
    exact = worst < (5e-2 if half_precision else 1e-3)
    if not exact:
        logger.warning(
            "%s (attention %s) does not keep packed sequences apart (hidden states differ by %.2g of their "
            "norm); using one padded row per sequence",
            type(model).__name__,
            getattr(model.config, "_attn_implementation", None),
            worst,
        )
    return exact


@contextlib.contextmanager
def autocast_for(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; nothing elsewhere (CPU runs stay float32 and deterministic)."""
    if device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


@torch.no_grad()
def summed_response_logps(
    model: PreTrainedModel,
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int = 128,
    on_batch: Callable[[int], None] | None = None,
    shared_lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Summed response log-probs of many sequences (no gradient), in batches of similar length; on the CPU.
    ``on_batch`` receives the number of sequences of each batch done (progress). With ``shared_lengths``
    (one count per sequence) the result has two columns: the sum, and the sum over the first
    ``shared_lengths[i]`` response tokens."""
    device = model.device
    logps_model = SequenceLogps(model)
    was_training = model.training
    model.eval()
    by_length = sorted(range(len(prompt_ids)), key=lambda row: len(prompt_ids[row]) + len(response_ids[row]))
    shape = (len(prompt_ids),) if shared_lengths is None else (len(prompt_ids), 2)
    result = torch.empty(shape, dtype=torch.float32)
    for start in range(0, len(by_length), batch_size):
        rows = by_length[start : start + batch_size]
        batch = sequence_batch(
            [prompt_ids[row] for row in rows],
            [response_ids[row] for row in rows],
            pad_token_id,
            pack=logps_model.supports_packing,
        ).to(device)
        with autocast_for(device):
            if shared_lengths is None:
                result[rows] = logps_model(batch).float().cpu()
            else:
                terms = logps_model(batch, shared_lengths=torch.tensor([shared_lengths[row] for row in rows]))
                result[rows] = torch.stack([terms["sum"], terms["shared"]], dim=1).float().cpu()
        if on_batch is not None:
            on_batch(len(rows))
    model.train(was_training)
    return result


def per_token_terms(method: PreferenceMethod) -> dict[str, bool]:
    """The per-token terms ``forward_pairs`` computes for ``method`` (its ``ld_alpha``, ``use_weighting``)."""
    needed = method.optional_fields()
    return {
        "shared_prefix": bool(needed & set(SHARED_PREFIX_FIELDS)),
        "token_weights": bool(needed & set(WEIGHT_FIELDS)),
    }


def forward_pairs(
    logps_model: torch.nn.Module,
    pairs: TokenizedPairs,
    indices: torch.Tensor,
    reference: PairReference | None,
    pad_token_id: int,
    device: torch.device,
    *,
    pack: bool,
    shared_prefix: bool = False,
    token_weights: bool = False,
) -> PairLogps:
    """Policy log-probs of the pairs ``indices``: chosen and rejected in one forward pass of
    ``logps_model`` (a ``SequenceLogps``, possibly wrapped for data parallelism); with ``shared_prefix``
    and ``token_weights`` also the per-token terms of LD-DPO and WPO (``PairLogps``' optional fields)."""
    batch = pair_batch(pairs, indices.tolist(), pad_token_id, pack=pack).to(device)
    fields: dict[str, torch.Tensor] = {}
    with autocast_for(device):
        if shared_prefix or token_weights:
            shared_lengths = pair_shared_lengths(batch) if shared_prefix else None
            terms = logps_model(batch, shared_lengths=shared_lengths, token_weights=token_weights)
            summed_logps = terms["sum"]
            if shared_prefix:
                shared = terms["shared"].float().chunk(2)
                fields.update(zip(("policy_chosen_shared", "policy_rejected_shared"), shared, strict=True))
            if token_weights:
                weight_logs = terms["weight_log"].float().chunk(2)
                fields.update(zip(("chosen_weight_log", "rejected_weight_log"), weight_logs, strict=True))
        else:
            summed_logps = logps_model(batch)
    policy_chosen, policy_rejected = summed_logps.float().chunk(2)
    chosen_length, rejected_length = batch.response_lengths.float().chunk(2)
    if reference is not None:
        reference_fields = reference.pair_fields(pairs, indices, shared_prefix=shared_prefix)
        fields.update({name: copied_to(values, device) for name, values in reference_fields.items()})
    return PairLogps(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        chosen_length=chosen_length,
        rejected_length=rejected_length,
        **fields,
    )
