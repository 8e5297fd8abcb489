"""The tiny causal LM and its supervised fine-tuning into the reference policy.

Sequences follow the project's tokenisation convention: ``[bos] + prompt_ids + response_ids + [eos]``,
prompt and response tokenised separately without special tokens, loss on the response and eos tokens.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    get_cosine_schedule_with_warmup,
)

from noisypref.benchmark.testbed.config import TestbedConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Rotary position embeddings have no hard length limit; this only bounds what the config declares.
MAX_POSITION_EMBEDDINGS = 128


def tiny_model_config(config: TestbedConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if config.model_family == "llama":
        return LlamaConfig(**shape)
    return Qwen2Config(**shape)


def init_tiny_model(config: TestbedConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised causal LM; the initialisation depends on ``config.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return AutoModelForCausalLM.from_config(tiny_model_config(config, tokenizer), dtype=torch.float32)


def sft_batch(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt, bos and padding masked)."""
    sequences, label_rows = [], []
    for prompt, response in zip(prompt_ids, response_ids, strict=True):
        sequences.append([bos_token_id, *prompt, *response, eos_token_id])
        label_rows.append([IGNORE_INDEX] * (1 + len(prompt)) + [*response, eos_token_id])
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (sequence, label_row) in enumerate(zip(sequences, label_rows, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, : len(label_row)] = torch.tensor(label_row)
        attention_mask[row, : len(sequence)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    config: TestbedConfig,
) -> list[float]:
    """One pass of AdamW over the examples in order, ``config.sft_batch_size`` per step, cosine schedule
    with 5 % warm-up. Trains ``model`` in place and returns the loss of every step."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=max(1, config.sft_steps // 20), num_training_steps=config.sft_steps
    )
    model.train()
    losses = []
    progress = tqdm(range(config.sft_steps), desc="SFT reference policy", leave=False)
    for step in progress:
        start = step * config.sft_batch_size
        stop = start + config.sft_batch_size
        batch = sft_batch(
            prompt_ids[start:stop],
            response_ids[start:stop],
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    logger.info("SFT: %d steps, loss %.3f -> %.3f", config.sft_steps, losses[0], losses[-1])
    return losses
