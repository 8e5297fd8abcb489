"""Per-sequence log-probs of response tokens: chosen and rejected in one padding-free forward pass.

Packing: the sequences of a batch are packed first-fit-decreasing into rows as long as the longest
sequence, each sequence's ``position_ids`` starting again at 0. Given no attention mask, transformers
reads such position ids as packed sequences and restricts attention to each sequence (a block-diagonal
causal mask under SDPA/eager, variable-length kernels under flash-attention), so a token never sees
another sequence. ``SequenceLogps`` checks this once per model on two tiny sequences and falls back
to one right-padded row per sequence for a model that does not honour it. On the testbed packing
removes about a third of the positions a right-padded batch computes.

The language-model head is applied to the response positions only, in chunks whose log-softmax is
recomputed in the backward pass instead of stored, so no ``[batch, length, vocabulary]`` float32
tensor is held.

Per-token terms some methods need besides the sums (``SequenceLogps.forward``'s ``shared_lengths`` and
``token_weights``, on the packed and the padded layouts alike): the sum over each sequence's first
``shared_lengths[s]`` response tokens (LD-DPO's shared prefix: ``min(|yw|, |yl|)`` of its pair), and
WPO's per-sequence weight term ``(1/|y|) Σ_t [log π(y_t) − log Σ_v π(v)²]``, without gradient.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from noisypref.benchmark.engine.tokenization import TokenizedPairs

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
# Packed rows are padded to a multiple of this many positions: CPU softmax and SDPA kernels are
# several times slower at widths such as 15 than at 16 (issue 14's profile), and a packed row's extra
# padding is a segment of its own, so no sequence's log-probs change beyond float round-off.
PACKED_WIDTH_MULTIPLE = 16


@dataclass(frozen=True)
class SequenceBatch:
    """Sequences laid out in rows (packed or one per row).

    ``sequence_index[r, t]`` is the sequence the token at row ``r``, position ``t`` belongs to (−1 on
    padding); ``response_mask`` marks the tokens whose log-probs are summed;
    ``response_lengths[s]`` is the number of response tokens of sequence ``s``.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    sequence_index: torch.Tensor
    response_mask: torch.Tensor
    response_lengths: torch.Tensor

    @property
    def num_sequences(self) -> int:
        return self.response_lengths.numel()

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(
            *(
                tensor.to(device, non_blocking=True)
                for tensor in (
                    self.input_ids,
                    self.position_ids,
                    self.sequence_index,
                    self.response_mask,
                    self.response_lengths,
                )
            )
        )


def sequence_batch(
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    pad_token_id: int,
    *,
    pack: bool = True,
) -> SequenceBatch:
    """``prompt + response`` per sequence, packed into rows as long as the longest sequence rounded up
    to ``PACKED_WIDTH_MULTIPLE`` (``pack``) or one right-padded row per sequence, as long as the
    longest. Every prompt must have at least one token (bos counts)."""
    lengths = [len(prompt) + len(response) for prompt, response in zip(prompt_ids, response_ids, strict=True)]
    if any(len(prompt) == 0 for prompt in prompt_ids):
        raise ValueError(
            "a sequence has no prompt token (no bos and an empty prompt): its first token has no context"
        )
    width = max(lengths)
    if pack:
        width = -(-width // PACKED_WIDTH_MULTIPLE) * PACKED_WIDTH_MULTIPLE
    rows = (
        _pack_first_fit_decreasing(lengths, width)
        if pack
        else [[sequence] for sequence in range(len(lengths))]
    )
    row_tokens, row_positions, row_sequences, row_response = [], [], [], []
    for row in rows:
        tokens, positions, sequences, response = [], [], [], []
        for sequence in row:
            prompt, reply = prompt_ids[sequence], response_ids[sequence]
            tokens += prompt + reply
            positions += range(lengths[sequence])
            sequences += [sequence] * lengths[sequence]
            response += [False] * len(prompt) + [True] * len(reply)
        padding = width - len(tokens)
        # Padding positions restart at 0 too: under packing they form a segment of their own.
        row_tokens.append(tokens + [pad_token_id] * padding)
        row_positions.append(
            positions + list(range(padding)) if pack else positions + list(range(len(positions), width))
        )
        row_sequences.append(sequences + [-1] * padding)
        row_response.append(response + [False] * padding)
    return SequenceBatch(
        input_ids=torch.tensor(row_tokens, dtype=torch.long),
        position_ids=torch.tensor(row_positions, dtype=torch.long),
        sequence_index=torch.tensor(row_sequences, dtype=torch.long),
        response_mask=torch.tensor(row_response, dtype=torch.bool),
        response_lengths=torch.tensor([len(reply) for reply in response_ids], dtype=torch.long),
    )


def _pack_first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    free: list[int] = []
    for sequence in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        for row, room in enumerate(free):
            if room >= lengths[sequence]:
                rows[row].append(sequence)
                free[row] -= lengths[sequence]
                break
        else:
            rows.append([sequence])
            free.append(capacity - lengths[sequence])
    return rows


def pair_batch(
    pairs: TokenizedPairs, indices: Sequence[int], pad_token_id: int, *, pack: bool = True
) -> SequenceBatch:
    """The chosen responses of the pairs ``indices`` (sequences 0..n−1), then their rejected responses
    (sequences n..2n−1)."""
    chosen, rejected = zip(*(pairs.chosen_and_rejected(index) for index in indices), strict=True)
    prompts = [pairs.prompt_ids[index] for index in indices]
    return sequence_batch(prompts + prompts, list(chosen) + list(rejected), pad_token_id, pack=pack)


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
        prediction_mask = batch.response_mask[:, 1:]
        targets = batch.input_ids[:, 1:][prediction_mask]
        inputs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
        if self.response_only_head:
            hidden = self.model.base_model(**inputs).last_hidden_state
            token_logps, log_sum_squares = self._head_log_probs(
                hidden[:, :-1][prediction_mask], targets, token_weights
            )
        else:
            logits = self.model(**inputs).logits[:, :-1][prediction_mask]
            token_logps = _target_log_probs(logits, targets)
            log_sum_squares = _log_sum_squared_probs(logits) if token_weights else None
        sequences = batch.sequence_index[:, 1:][prediction_mask]
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


def pair_shared_lengths(batch: SequenceBatch) -> torch.Tensor:
    """LD-DPO's shared prefix of a ``pair_batch`` (chosen first): ``min(|yw|, |yl|)`` per sequence."""
    chosen, rejected = batch.response_lengths.chunk(2)
    return torch.minimum(chosen, rejected).repeat(2)


@torch.no_grad()
def packing_is_exact(model: PreTrainedModel) -> bool:
    """Whether two sequences packed in one row get the hidden states they get in rows of their own."""
    vocabulary = model.get_input_embeddings().num_embeddings
    first, second = [1, 2, 3], [4, 5]
    device = model.device
    tokens = torch.tensor([[token % vocabulary for token in first + second]], device=device)
    positions = torch.tensor([[0, 1, 2, 0, 1]], device=device)
    was_training = model.training
    model.eval()
    packed = model.base_model(input_ids=tokens, position_ids=positions, use_cache=False).last_hidden_state[
        0, 3:
    ]
    alone = model.base_model(input_ids=tokens[:, 3:], use_cache=False).last_hidden_state[0]
    model.train(was_training)
    scale = alone.float().abs().max().clamp(min=1e-6)
    exact = bool(((packed.float() - alone.float()).abs().max() / scale) < 1e-2)
    if not exact:
        logger.warning(
            "%s does not keep packed sequences apart; using one padded row per sequence", type(model).__name__
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
def sequence_logps(
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
