"""Batched ancestral sampling of responses from a causal LM, with a KV cache and left padding."""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's eos plus any eos ids of the model's generation config (chat models have several)."""
    stop_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        stop_ids.add(configured)
    elif configured is not None:
        stop_ids.update(configured)
    if not stop_ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an eos token")
    return sorted(stop_ids)


def left_padded_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[bos] + prompt_ids`` for every prompt (no bos if the tokenizer has none), left-padded."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    sequences = [bos + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    width = max(len(sequence) for sequence in sequences)
    if width == 0:
        raise ValueError("empty prompts and no bos token: nothing to condition the model on")
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
            attention_mask[row, width - len(sequence) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def _sample_batch(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float,
    max_new_tokens: int,
    stop_ids: torch.Tensor,
    pad_token_id: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """New tokens ``[batch, <= max_new_tokens]``; positions after a stop token hold ``pad_token_id``."""
    forward_parameters = inspect.signature(model.forward).parameters
    # transformers 5.x renamed the KV cache argument and output field from `past_key_values` to `cache`.
    cache_name = "cache" if "cache" in forward_parameters else "past_key_values"
    # Only the last position's logits are needed: spares a [batch, prompt length, vocabulary] tensor.
    last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters else {}
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **last_logits_only,
    )
    next_positions = position_ids[:, -1:] + 1
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for _ in range(max_new_tokens):
        logits = output.logits[:, -1, :].float()
        if temperature == 0.0:
            next_tokens = logits.argmax(dim=-1)
        else:
            probabilities = torch.softmax(logits / temperature, dim=-1)
            next_tokens = torch.multinomial(probabilities, num_samples=1, generator=generator).squeeze(-1)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
        new_tokens.append(next_tokens)
        finished |= torch.isin(next_tokens, stop_ids)
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        output = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_positions,
            use_cache=True,
            **{cache_name: output[cache_name]},
        )
        next_positions = next_positions + 1
    return torch.stack(new_tokens, dim=1)


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 256,
) -> list[list[str]]:
    """Sample ``num_samples`` responses per prompt, continuing ``[bos] + prompt_ids`` until eos or
    ``max_new_tokens``. ``temperature = 0`` decodes greedily.

    Returns one list of decoded responses per prompt (special tokens stripped; for the testbed's
    word-level tokenizer, words joined by single spaces). Deterministic for a seed, batch size and
    device. The model's train/eval mode is restored afterwards. On a CPU, tiny models such as the
    testbed's sample fastest on one torch thread (``torch.set_num_threads(1)``): several threads can
    be ten times slower when another process keeps a core busy.
    """
    stop_ids = stop_token_ids(model, tokenizer)
    sampled = sample_response_ids(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    decoded = [
        tokenizer.decode([token for token in ids if token not in stop_ids], skip_special_tokens=True).strip()
        for ids in sampled
    ]
    return [decoded[index : index + num_samples] for index in range(0, len(decoded), num_samples)]


def sample_response_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 256,
) -> list[list[int]]:
    """The token ids `sample_responses` decodes: ``num_samples`` responses per prompt, prompt by
    prompt in one flat list, each up to and including its stop token (when one was sampled before
    ``max_new_tokens``). Scoring these ids scores exactly what was sampled."""
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"num_samples ({num_samples}), batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1"
        )
    if temperature < 0.0:
        raise ValueError(f"temperature = {temperature} must be >= 0 (0 decodes greedily)")
    device = model.device
    stop_ids = stop_token_ids(model, tokenizer)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    stop_ids_tensor = torch.tensor(stop_ids, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated_prompts = [prompt for prompt in prompts for _ in range(num_samples)]

    was_training = model.training
    model.eval()
    sampled: list[list[int]] = []
    starts = range(0, len(repeated_prompts), batch_size)
    for start in tqdm(starts, desc="sampling responses", leave=False, disable=len(starts) < 4):
        input_ids, attention_mask = left_padded_prompts(
            tokenizer, repeated_prompts[start : start + batch_size], pad_token_id
        )
        new_tokens = _sample_batch(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids_tensor,
            pad_token_id=pad_token_id,
            generator=generator,
        )
        for row in new_tokens.tolist():
            response_ids = []
            for token in row:
                response_ids.append(token)
                if token in stop_ids:
                    break
            sampled.append(response_ids)
    model.train(was_training)
    return sampled
