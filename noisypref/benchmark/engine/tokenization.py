"""Tokenise preference pairs once, in a canonical order that label flips do not change.

Sequence layout (the project's convention, docs/testbed.md):

- plain strings: ``[bos] + prompt_ids + response_ids + [eos]``, prompt and response tokenised
  separately with ``add_special_tokens=False``; no bos when the tokenizer has none;
- conversational message lists: the prompt is ``apply_chat_template(prompt, add_generation_prompt=True)``
  and the response is what ``apply_chat_template(prompt + response)`` adds after it (the template
  supplies bos and the end-of-turn tokens; nothing is appended).

The response tokens are the tokens whose log-probs are summed (eos included); the prompt is masked.

Truncation: the prompt is truncated from the left to ``max_prompt_length`` tokens (a leading bos is
kept), then the response is truncated from the right so that prompt + response has at most
``max_length`` tokens (a truncated response loses its eos). ``max_prompt_length < max_length``, so
every response keeps at least one token. ``TokenizedPairs.truncation`` counts what was cut (the prompts
and the responses), stored with the cached token ids; token ids cached before 0.2 have no counts
(``None``).

Canonical order: of a pair's two responses, "a" is the one whose JSON text sorts first, "b" the
other; ``chosen_is_a`` records the label. Flipping a pair changes only ``chosen_is_a``, so a noisy
dataset has the same token ids and the same ``content_key`` as its clean source: token ids and
reference log-probs are computed once per dataset and shared by every noise model, rate, seed and
method. Token ids are cached in memory and, with a ``cache_dir``, on disk under
``cache_dir/tokens/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from noisypref.benchmark.storage import cached_torch_file

logger = logging.getLogger(__name__)

# Bump when a change here changes the token ids a dataset gets: old cache files are then ignored.
TOKENIZATION_FORMAT_VERSION = 1
MEMORY_CACHE_SIZE = 8

_token_cache: dict[str, dict[str, list]] = {}


@dataclass(frozen=True)
class TokenizedPairs:
    """Token ids of preference pairs, the two responses of each pair in canonical order.

    ``prompt_ids[i]`` includes the bos token; ``response_a_ids[i]`` / ``response_b_ids[i]`` are the
    (truncated) responses with their eos. ``chosen_is_a`` (bool, one per pair) is the label.
    ``content_key`` identifies the token ids (tokenizer, lengths, pairs), not the labels.
    """

    pair_ids: list[str]
    prompt_ids: list[list[int]]
    response_a_ids: list[list[int]]
    response_b_ids: list[list[int]]
    chosen_is_a: torch.Tensor
    content_key: str
    # prompts cut to max_prompt_length, responses (of 2 per pair) cut to max_length; None: not counted
    truncation: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.pair_ids)

    def chosen_and_rejected(self, index: int) -> tuple[list[int], list[int]]:
        """The chosen and the rejected response ids of pair ``index``."""
        if self.chosen_is_a[index]:
            return self.response_a_ids[index], self.response_b_ids[index]
        return self.response_b_ids[index], self.response_a_ids[index]


def tokenize_pairs(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
    cache_dir: str | Path | None = None,
) -> TokenizedPairs:
    """Token ids of every pair of ``dataset`` (columns ``pair_id``, ``prompt``, ``chosen``, ``rejected``).

    See the module docstring for the layout, the truncation rules and the caching.
    """
    check_lengths(max_length, max_prompt_length)
    columns = dataset.with_format(None).select_columns(["pair_id", "prompt", "chosen", "rejected"]).to_dict()
    chosen_text = [canonical_json(value) for value in columns["chosen"]]
    rejected_text = [canonical_json(value) for value in columns["rejected"]]
    chosen_is_a = [chosen <= rejected for chosen, rejected in zip(chosen_text, rejected_text, strict=True)]
    responses_a = [
        c if keep else r
        for c, r, keep in zip(columns["chosen"], columns["rejected"], chosen_is_a, strict=True)
    ]
    responses_b = [
        r if keep else c
        for c, r, keep in zip(columns["chosen"], columns["rejected"], chosen_is_a, strict=True)
    ]

    key = content_key(
        columns["pair_id"],
        columns["prompt"],
        chosen_text,
        rejected_text,
        chosen_is_a,
        tokenizer,
        max_length,
        max_prompt_length,
    )
    token_ids = _token_cache.get(key)
    if token_ids is None:

        def build() -> dict[str, list]:
            return tokenize_canonical(
                columns["prompt"], responses_a, responses_b, tokenizer, max_length, max_prompt_length
            )

        if cache_dir is None:
            token_ids = build()
        else:
            path = Path(cache_dir) / "tokens" / f"tokens-{key[:32]}.pt"
            token_ids = cached_torch_file(path, build, f"token ids of {len(chosen_is_a)} pairs")
        while len(_token_cache) >= MEMORY_CACHE_SIZE:
            _token_cache.pop(next(iter(_token_cache)))
        _token_cache[key] = token_ids
    return TokenizedPairs(
        pair_ids=list(columns["pair_id"]),
        prompt_ids=token_ids["prompt_ids"],
        response_a_ids=token_ids["response_a_ids"],
        response_b_ids=token_ids["response_b_ids"],
        chosen_is_a=torch.tensor(chosen_is_a, dtype=torch.bool),
        content_key=key,
        truncation=token_ids.get("truncation"),
    )


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    if not (isinstance(max_prompt_length, int) and max_prompt_length >= 1):
        raise ValueError(f"max_prompt_length = {max_prompt_length!r} is invalid: expected an integer >= 1")
    if not (isinstance(max_length, int) and max_length > max_prompt_length):
        raise ValueError(
            f"max_length = {max_length!r} is invalid: expected an integer > max_prompt_length = {max_prompt_length}"
        )


def canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def content_key(
    pair_ids: list[str],
    prompts: list[Any],
    chosen_text: list[str],
    rejected_text: list[str],
    chosen_is_a: list[bool],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
) -> str:
    """sha256 of the format version, the tokenizer, the lengths and every pair in canonical order."""
    digest = hashlib.sha256()
    header = [TOKENIZATION_FORMAT_VERSION, tokenizer_fingerprint(tokenizer), max_length, max_prompt_length]
    digest.update(json.dumps(header).encode("utf-8"))
    for pair_id, prompt, chosen, rejected, keep in zip(
        pair_ids, prompts, chosen_text, rejected_text, chosen_is_a, strict=True
    ):
        response_a, response_b = (chosen, rejected) if keep else (rejected, chosen)
        digest.update(json.dumps([pair_id, canonical_json(prompt), response_a, response_b]).encode("utf-8"))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what decides the token ids: the vocabulary and rules, special tokens, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    identity = [
        type(tokenizer).__name__,
        rules,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        getattr(tokenizer, "chat_template", None),
    ]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


def tokenize_canonical(
    prompts: list[Any],
    responses_a: list[Any],
    responses_b: list[Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
) -> dict[str, list]:
    if prompts and isinstance(prompts[0], list):
        prompt_ids, response_a_ids, response_b_ids = _tokenize_conversations(
            prompts, responses_a, responses_b, tokenizer
        )
    else:
        prompt_ids, response_a_ids, response_b_ids = _tokenize_plain(
            prompts, responses_a, responses_b, tokenizer
        )
    truncated_prompts = [
        truncate_prompt(ids, max_prompt_length, tokenizer.bos_token_id) for ids in prompt_ids
    ]
    truncated_a = [
        ids[: max_length - len(prompt)] for prompt, ids in zip(truncated_prompts, response_a_ids, strict=True)
    ]
    truncated_b = [
        ids[: max_length - len(prompt)] for prompt, ids in zip(truncated_prompts, response_b_ids, strict=True)
    ]
    return {
        "prompt_ids": truncated_prompts,
        "response_a_ids": truncated_a,
        "response_b_ids": truncated_b,
        "truncation": {
            "prompts": sum(len(cut) < len(ids) for cut, ids in zip(truncated_prompts, prompt_ids, strict=True)),
            "responses": sum(
                len(cut) < len(ids)
                for cut, ids in zip(truncated_a + truncated_b, response_a_ids + response_b_ids, strict=True)
            ),
        },
    }


def truncate_prompt(prompt_ids: list[int], max_prompt_length: int, bos_token_id: int | None) -> list[int]:
    """Keep the last tokens of the prompt, and its leading bos if it has one."""
    if len(prompt_ids) <= max_prompt_length:
        return prompt_ids
    if bos_token_id is not None and prompt_ids[0] == bos_token_id:
        if max_prompt_length == 1:
            return prompt_ids[:1]
        return prompt_ids[:1] + prompt_ids[len(prompt_ids) - (max_prompt_length - 1) :]
    return prompt_ids[len(prompt_ids) - max_prompt_length :]


def _tokenize_plain(
    prompts: list[str], responses_a: list[str], responses_b: list[str], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; responses must end with one")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    prompt_ids = [bos + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    response_a_ids = [ids + eos for ids in tokenizer(responses_a, add_special_tokens=False)["input_ids"]]
    response_b_ids = [ids + eos for ids in tokenizer(responses_b, add_special_tokens=False)["input_ids"]]
    return prompt_ids, response_a_ids, response_b_ids


def _tokenize_conversations(
    prompts: list[list[dict]],
    responses_a: list[list[dict]],
    responses_b: list[list[dict]],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the dataset is conversational but the tokenizer has no chat template")
    prompt_ids, response_a_ids, response_b_ids = [], [], []
    for prompt, response_a, response_b in zip(prompts, responses_a, responses_b, strict=True):
        prompt_tokens = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        prompt_ids.append(prompt_tokens)
        response_a_ids.append(_reply_ids(tokenizer, prompt, response_a, prompt_tokens))
        response_b_ids.append(_reply_ids(tokenizer, prompt, response_b, prompt_tokens))
    return prompt_ids, response_a_ids, response_b_ids


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], *, add_generation_prompt: bool
) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    )


def _reply_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict], reply: list[dict], prompt_tokens: list[int]
) -> list[int]:
    full = _chat_ids(tokenizer, prompt + reply, add_generation_prompt=False)
    if full[: len(prompt_tokens)] != prompt_tokens:
        raise ValueError(
            "the chat template does not render the prompt as a prefix of prompt + reply; "
            f"cannot separate the reply's tokens (prompt starts {prompt[:1]!r})"
        )
    return full[len(prompt_tokens) :]
