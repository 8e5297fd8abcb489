"""Packed rows under FlashAttention (issue 28): transformers tells packed sequences apart from their
position ids only for a batch of one row, so the engine passes the segments of the rows explicitly.

On the CPU (no flash-attn), a pure-torch stand-in of transformers' FlashAttention dispatch
(``_flash_attention_forward`` in ``modeling_flash_attention_utils``: varlen keywords -> one causal
attention per segment of the rows laid end to end; else a single packed row -> segments from its
position ids; else plain causal attention over each row) is registered as an attention implementation
whose name marks it as FlashAttention. tests/test_gpu.py checks the numbers with the real kernel.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, LlamaForCausalLM

import noisypref.benchmark.engine.logps as logps_module
from noisypref.benchmark.engine.batches import sequence_batch
from noisypref.benchmark.engine.logps import SequenceLogps, needs_varlen_boundaries

STAND_IN = "flash_attention_torch_stand_in"  # "flash" in the name: treated as FlashAttention


def causal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """[heads, length, dim] each; key/value heads repeated to the query's (grouped-query attention)."""
    groups = query.shape[0] // key.shape[0]
    key, value = key.repeat_interleave(groups, dim=0), value.repeat_interleave(groups, dim=0)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)


def segments_from_position_ids(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the sequences of one row: where the position id restarts at its minimum."""
    starts = (position_ids == position_ids.min()).nonzero().flatten().tolist()
    return [*starts, position_ids.numel()]


def flash_stand_in(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query/key/value [batch, heads, length, dim] -> output [batch, length, heads, dim], as transformers'
    FlashAttention integration dispatches (without an attention mask, which FlashAttention never gets)."""
    assert attention_mask is None
    batch, _, length, _ = query.shape
    output = torch.empty_like(query)
    if kwargs.get("cu_seq_lens_q") is not None:  # the rows laid end to end, one attention per segment
        flat = [tensor.transpose(0, 1).reshape(tensor.shape[1], -1, tensor.shape[-1]) for tensor in (query, key, value)]
        flat_output = torch.empty_like(flat[0])
        starts = kwargs["cu_seq_lens_q"].tolist()
        for start, stop in zip(starts[:-1], starts[1:], strict=True):
            flat_output[:, start:stop] = causal(*(tensor[:, start:stop] for tensor in flat), scaling)
        output = flat_output.reshape(query.shape[1], batch, length, -1).transpose(0, 1)
    elif batch == 1 and kwargs.get("position_ids") is not None:  # _is_packed_sequence: one row only
        starts = segments_from_position_ids(kwargs["position_ids"][0])
        for start, stop in zip(starts[:-1], starts[1:], strict=True):
            output[0, :, start:stop] = causal(query[0, :, start:stop], key[0, :, start:stop], value[0, :, start:stop],
                                              scaling)  # fmt: skip
    else:  # several rows without boundaries: plain causal attention over each whole row
        for row in range(batch):
            output[row] = causal(query[row], key[row], value[row], scaling)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(STAND_IN, flash_stand_in)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_config):
    """``tiny_llama(attention)``: the tests' random two-layer Llama, seed 0, under that attention."""

    def build(attention: str) -> LlamaForCausalLM:
        torch.manual_seed(0)
        config = tiny_llama_config(
            64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, attn_implementation="sdpa",
        )  # fmt: skip
        model = LlamaForCausalLM(config).eval()
        model.config._attn_implementation = attention
        return model

    return build


def random_sequences(count: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 20, (count, 2), generator=generator)
    prompts = [torch.randint(1, 64, (int(n),), generator=generator).tolist() for n in lengths[:, 0]]
    responses = [torch.randint(1, 64, (int(n),), generator=generator).tolist() for n in lengths[:, 1]]
    return prompts, responses


def test_packed_rows_carry_the_segments_of_the_rows_laid_end_to_end() -> None:
    # lengths 16, 3, 2: row 0 holds the 16 (a full row), row 1 the 3, the 2 and 11 positions of padding
    batch = sequence_batch([[1] * 16, [1] * 3, [1] * 2], [[], [], []], pad_token_id=0, pack=True)
    assert batch.input_ids.shape == (2, 16)
    assert batch.segment_starts.tolist() == [0, 16, 19, 21, 32]
    assert batch.segment_starts.dtype == torch.int32 and batch.longest_segment == 16
    unpacked = sequence_batch([[1] * 16, [1] * 3], [[], []], pad_token_id=0, pack=False)
    assert unpacked.segment_starts is None and unpacked.varlen_attention_inputs() == {}


def test_the_segments_are_where_the_flattened_position_ids_restart() -> None:
    prompts, responses = random_sequences(30)
    batch = sequence_batch(prompts, responses, pad_token_id=0, pack=True)
    assert batch.input_ids.shape[0] > 1
    # transformers' own reading of packed position ids (one row): the rows laid end to end
    assert batch.segment_starts.tolist() == segments_from_position_ids(batch.position_ids.flatten())
    lengths = batch.segment_starts.diff()
    assert batch.longest_segment == int(lengths.max())
    assert int(lengths.sum()) == batch.input_ids.numel()


def test_flash_attention_implementations_are_told_the_boundaries(tiny_llama) -> None:
    assert needs_varlen_boundaries(tiny_llama(STAND_IN))
    assert not needs_varlen_boundaries(tiny_llama("sdpa"))
    model = tiny_llama("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    assert needs_varlen_boundaries(model)


def test_packed_log_probs_under_flash_attention_equal_padded_ones_under_sdpa(tiny_llama) -> None:
    flash, sdpa = tiny_llama(STAND_IN), tiny_llama("sdpa")
    prompts, responses = random_sequences(24)
    flash_logps = SequenceLogps(flash)
    assert flash_logps.supports_packing
    packed = sequence_batch(prompts, responses, pad_token_id=0, pack=True)
    assert packed.input_ids.shape[0] > 1  # several rows: the case transformers does not infer
    with torch.no_grad():
        got = flash_logps(packed)
        expected = SequenceLogps(sdpa)(sequence_batch(prompts, responses, pad_token_id=0, pack=False))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_without_the_boundaries_several_packed_rows_leak_and_the_probe_falls_back_to_padding(monkeypatch, tiny_llama) -> None:
    flash, sdpa = tiny_llama(STAND_IN), tiny_llama("sdpa")
    prompts, responses = random_sequences(24)
    packed = sequence_batch(prompts, responses, pad_token_id=0, pack=True)
    with torch.no_grad():
        expected = SequenceLogps(sdpa)(sequence_batch(prompts, responses, pad_token_id=0, pack=False))
        # one row at a time, transformers' inference from position ids keeps the sequences apart ...
        rows = range(packed.input_ids.shape[0])
        one_at_a_time = torch.cat([
            flash.base_model(input_ids=packed.input_ids[[row]], position_ids=packed.position_ids[[row]],
                             use_cache=False).last_hidden_state
            for row in rows
        ])  # fmt: skip
        together = flash.base_model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                    use_cache=False).last_hidden_state  # fmt: skip
        # ... several rows at once without the boundaries attend across sequences (the engine before issue 28)
        monkeypatch.setattr(logps_module, "needs_varlen_boundaries", lambda model: False)
        without_boundaries = SequenceLogps(flash)
        leaked = without_boundaries(packed)
    assert (one_at_a_time - together).abs().max() > 1e-2
    assert (leaked - expected).abs().max() > 1e-2
    # the probe packs two rows, so it sees the leak and the engine pads instead (a one-row probe did not)
    assert not without_boundaries.supports_packing


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_probe_still_accepts_attention_that_reads_position_ids(attention, tiny_llama) -> None:
    assert SequenceLogps(tiny_llama(attention)).supports_packing


def test_the_probe_accepts_bf16_rounding_but_not_a_leak_in_bf16(tiny_llama) -> None:
    # bf16 weights under SDPA differ from the sequence alone by bf16 rounding only (about 5e-3)
    assert SequenceLogps(tiny_llama("sdpa").to(torch.bfloat16)).supports_packing
    leaking = tiny_llama(STAND_IN).to(torch.bfloat16)
    leaking.config._attn_implementation = "flash_attention_torch_stand_in_without_boundaries"
    AttentionInterface.register("flash_attention_torch_stand_in_without_boundaries",
                                lambda *args, **kwargs: flash_stand_in(*args, **{**kwargs, "cu_seq_lens_q": None}))  # fmt: skip
    assert not SequenceLogps(leaking).supports_packing
