"""Per-sequence log-probs of response tokens: chosen and rejected in one padding-free forward pass.

Packing: the sequences of a batch are packed first-fit-decreasing into rows as long as the longest
sequence, each sequence's ``position_ids`` starting again at 0. Given no attention mask, transformers
reads such position ids as packed sequences and restricts attention to each sequence (a block-diagonal
causal mask under SDPA, eager and flex attention), so a token never sees another sequence.
FlashAttention is the exception: transformers infers the boundaries from ``position_ids`` only for a
batch of one row (``_is_packed_sequence`` in ``modeling_flash_attention_utils``) and otherwise runs
plain causal attention over each row, across its sequences, without error; so for FlashAttention the
boundaries of every segment of the rows laid end to end go to the model explicitly (``cu_seq_lens_q``,
``max_length_q``, ... : its variable-length kernel). ``SequenceLogps`` checks once per model, on
sequences packed into two rows, that packed sequences get the hidden states they get alone, and
falls back to one right-padded row per sequence for a model that does not keep them apart. On the
testbed packing removes about a third of the positions a right-padded batch computes.

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
import itertools
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
# Attention implementations that read packed sequences' boundaries from the cu_seq_lens / max_length
# keywords only (see the module docstring): flash_attention_2 / _3 and the hub's flash kernels.
VARLEN_BOUNDARY_MARKER = "flash"


@dataclass(frozen=True)
class SequenceBatch:
    """Sequences laid out in rows (packed or one per row).

    ``sequence_index[r, t]`` is the sequence the token at row ``r``, position ``t`` belongs to (−1 on
    padding); ``response_mask`` marks the tokens whose log-probs are summed;
    ``response_lengths[s]`` is the number of response tokens of sequence ``s``. Packed rows also carry
    the segments (sequences and each row's padding) of the rows laid end to end, as FlashAttention's
    variable-length kernel takes them: ``segment_starts`` (int32, the offset of every segment and then
    the total length) and ``longest_segment``; ``None`` and 0 for unpacked rows.
    ``predicting_positions`` lists, row-major, the positions ``r * width + t`` whose next token
    (``t + 1``) is a response token: computed on the host, so that the forward pass needs no
    device-to-host sync to find them (a boolean mask's indexing would be one).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    sequence_index: torch.Tensor
    response_mask: torch.Tensor
    response_lengths: torch.Tensor
    predicting_positions: torch.Tensor
    segment_starts: torch.Tensor | None = None
    longest_segment: int = 0

    @property
    def num_sequences(self) -> int:
        return self.response_lengths.numel()

    def to(self, device: torch.device | str) -> SequenceBatch:
        def moved(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else copied_to(tensor, device)

        return SequenceBatch(
            input_ids=moved(self.input_ids),
            position_ids=moved(self.position_ids),
            sequence_index=moved(self.sequence_index),
            response_mask=moved(self.response_mask),
            response_lengths=moved(self.response_lengths),
            predicting_positions=moved(self.predicting_positions),
            segment_starts=moved(self.segment_starts),
            longest_segment=self.longest_segment,
        )

    def varlen_attention_inputs(self) -> dict[str, torch.Tensor | int]:
        """The keywords that tell transformers' FlashAttention the segments of packed rows ({} unpacked)."""
        if self.segment_starts is None:
            return {}
        return dict(
            cu_seq_lens_q=self.segment_starts,
            cu_seq_lens_k=self.segment_starts,
            max_length_q=self.longest_segment,
            max_length_k=self.longest_segment,
        )


def copied_to(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without waiting: a host tensor bound for a GPU goes through pinned
    memory, since from pageable memory CUDA first waits for the work queued before the copy."""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


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
    row_tokens, row_positions, row_sequences, row_response, segments = [], [], [], [], []
    for row in rows:
        tokens, positions, sequences, response = [], [], [], []
        for sequence in row:
            prompt, reply = prompt_ids[sequence], response_ids[sequence]
            tokens += prompt + reply
            positions += range(lengths[sequence])
            sequences += [sequence] * lengths[sequence]
            response += [False] * len(prompt) + [True] * len(reply)
            segments.append(lengths[sequence])
        padding = width - len(tokens)
        if padding:
            segments.append(padding)
        # Padding positions restart at 0 too: under packing they form a segment of their own.
        row_tokens.append(tokens + [pad_token_id] * padding)
        row_positions.append(
            positions + list(range(padding)) if pack else positions + list(range(len(positions), width))
        )
        row_sequences.append(sequences + [-1] * padding)
        row_response.append(response + [False] * padding)
    response_mask = torch.tensor(row_response, dtype=torch.bool)
    # position t of a row predicts token t + 1: the positions before a response token, row-major
    predicting = torch.zeros_like(response_mask)
    predicting[:, :-1] = response_mask[:, 1:]
    return SequenceBatch(
        input_ids=torch.tensor(row_tokens, dtype=torch.long),
        position_ids=torch.tensor(row_positions, dtype=torch.long),
        sequence_index=torch.tensor(row_sequences, dtype=torch.long),
        response_mask=response_mask,
        response_lengths=torch.tensor([len(reply) for reply in response_ids], dtype=torch.long),
        predicting_positions=predicting.flatten().nonzero().flatten(),
        segment_starts=torch.tensor([0, *itertools.accumulate(segments)], dtype=torch.int32) if pack else None,
        longest_segment=max(segments) if pack else 0,
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


def pair_shared_lengths(batch: SequenceBatch) -> torch.Tensor:
    """LD-DPO's shared prefix of a ``pair_batch`` (chosen first): ``min(|yw|, |yl|)`` per sequence."""
    chosen, rejected = batch.response_lengths.chunk(2)
    return torch.minimum(chosen, rejected).repeat(2)


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
    long, first, second = list(range(1, max(16, PACKED_WIDTH_MULTIPLE) + 1)), [1, 2, 3], [4, 5]  # a full row
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
