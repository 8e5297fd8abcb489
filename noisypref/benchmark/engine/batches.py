"""Sequences laid out for one forward pass: packed into rows, or one right-padded row per sequence.

Packing: the sequences of a batch are packed first-fit-decreasing into rows as long as the longest
sequence (rounded up to ``PACKED_WIDTH_MULTIPLE``), each sequence's ``position_ids`` starting again
at 0, so that a model reads them as separate sequences (``noisypref.benchmark.engine.logps`` says how
each attention implementation keeps them apart, and checks that a model does). A pair's chosen and
rejected responses go into one batch (``pair_batch``). On the testbed packing removes about a third of
the positions a right-padded batch computes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from noisypref.benchmark.engine.tokenization import TokenizedPairs

# Packed rows are padded to a multiple of this many positions: CPU softmax and SDPA kernels are
# several times slower at widths such as 15 than at 16 (issue 14's profile), and a packed row's extra
# padding is a segment of its own, so no sequence's log-probs change beyond float round-off.
PACKED_WIDTH_MULTIPLE = 16


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



def pair_shared_lengths(batch: SequenceBatch) -> torch.Tensor:
    """LD-DPO's shared prefix of a ``pair_batch`` (chosen first): ``min(|yw|, |yl|)`` per sequence."""
    chosen, rejected = batch.response_lengths.chunk(2)
    return torch.minimum(chosen, rejected).repeat(2)

