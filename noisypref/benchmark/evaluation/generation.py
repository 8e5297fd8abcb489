"""Batched, resumable response generation for a Hugging Face chat model (AlpacaEval 2, Arena-Hard).

Each prompt is wrapped in the tokenizer's chat template (a plain string becomes one user message),
the batch is left-padded, and ``model.generate`` samples (or decodes greedily at temperature 0) until
a stop token or ``max_new_tokens``. Finished prompts are appended to a jsonl file, one line
``{"index", "prompt", "output"}`` per prompt, flushed after every batch; a restarted run reads the
file, checks that it belongs to the same prompts, and generates only the missing indices.

The decoding settings are `noisypref.benchmark.config.benchmarks.GenerationSettings`; ``PUBLISHED_SETTINGS``
there holds those the γ-PO and SimPO authors published, per benchmark and model family.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.config.benchmarks import (
    GenerationSettings,
    published_settings,  # noqa: F401 (docs/api.md, "Moved")
)
from noisypref.benchmark.progress import phase
from noisypref.benchmark.testbed.sampling import stop_token_ids

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]

def as_messages(prompt: Prompt, system_prompt: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def read_finished(output_path: Path, prompts: Sequence[Prompt]) -> dict[int, str]:
    """Outputs already in ``output_path`` by prompt index.

    Every record is written as one line ending in a newline, so bytes after the last newline are a
    record torn by a killed run: they are ignored here and cut off by ``generate_responses``.
    """
    if not output_path.exists():
        return {}
    text = output_path.read_text()
    complete, _, torn = text.rpartition("\n")
    if torn:
        logger.warning("%s: ignoring a torn last line (an interrupted run)", output_path)
    finished: dict[int, str] = {}
    for line_number, line in enumerate(complete.splitlines() if complete else [], start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{output_path}:{line_number} is not valid JSON") from None
        index = record["index"]
        if not 0 <= index < len(prompts) or record["prompt"] != prompts[index]:
            raise ValueError(
                f"{output_path}:{line_number} holds prompt index {index} of another prompt list; "
                "use a new output file or delete this one"
            )
        finished[index] = record["output"]
    return finished


def cut_torn_tail(output_path: Path) -> None:
    """Truncate ``output_path`` after its last newline (see ``read_finished``)."""
    if not output_path.exists():
        return
    data = output_path.read_bytes()
    complete_length = data.rfind(b"\n") + 1
    if complete_length < len(data):
        with open(output_path, "r+b") as output_file:
            output_file.truncate(complete_length)


@contextlib.contextmanager
def left_padding(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = previous


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
    system_prompt: str | None = None,
) -> list[str]:
    """One left-padded ``model.generate`` call; returns the decoded new text of every prompt."""
    texts = [
        tokenizer.apply_chat_template(
            as_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
        )
        for prompt in prompts
    ]
    with left_padding(tokenizer):
        # The chat template already writes any bos token; adding special tokens would double it.
        batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    batch = batch.to(model.device)
    stop_ids = sorted({*stop_token_ids(model, tokenizer), *settings.stop_token_ids})
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        if settings.temperature > 0
        else {"do_sample": False}
    )
    generated = model.generate(
        **batch,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    new_tokens = generated[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
    output_path: str | os.PathLike | None = None,
    batch_size: int = 8,
    seed: int = 0,
    system_prompt: str | None = None,
) -> list[str]:
    """Responses to ``prompts``, in order, resuming from and appending to ``output_path`` (jsonl).

    Pending prompts are batched longest first (least padding; a batch that does not fit in memory
    fails first). Each batch is seeded with ``seed`` and its first prompt index, so a rerun of the same
    file from scratch reproduces it; sampled outputs still depend on which prompts share a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenizer.pad_token_id is None:
        logger.info("the tokenizer has no pad token; padding with its eos token %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    path = Path(output_path) if output_path is not None else None
    finished = read_finished(path, prompts) if path is not None else {}
    pending = [index for index in range(len(prompts)) if index not in finished]
    if finished:
        logger.info("%s: %d of %d prompts already done", path, len(finished), len(prompts))
    pending.sort(key=lambda index: len(json.dumps(prompts[index])), reverse=True)

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(path)
    was_training = model.training
    model.eval()
    try:
        with (
            phase("generation", len(prompts), "prompt", initial=len(finished)) as progress,
            open(path, "a") if path is not None else contextlib.nullcontext() as output_file,
        ):
            for start in range(0, len(pending), batch_size):
                indices = pending[start : start + batch_size]
                with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
                    torch.manual_seed(seed * 1_000_003 + indices[0])
                    outputs = generate_batch(
                        model, tokenizer, [prompts[index] for index in indices], settings, system_prompt
                    )
                for index, output in zip(indices, outputs, strict=True):
                    finished[index] = output
                    if output_file is not None:
                        output_file.write(
                            json.dumps({"index": index, "prompt": prompts[index], "output": output}) + "\n"
                        )
                if output_file is not None:
                    output_file.flush()
                    os.fsync(output_file.fileno())
                progress.advance(len(indices))
    finally:
        model.train(was_training)
    return [finished[index] for index in range(len(prompts))]
