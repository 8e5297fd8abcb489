"""`TestbedConfig`: every parameter of the synthetic gold-reward testbed, validated at construction.

Defaults reproduce the feasibility probe of DESIGN.md §6. The fields fall into two stages, which are
cached separately (see `reference_policy_key` and `content_key`): everything up to and including the
supervised fine-tuning determines the reference policy; the pair fields only determine which pairs
are drawn from it, so changing them (e.g. the Bradley–Terry temperature) reuses the trained policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noisypref.benchmark.config.checks import from_known_keys

# Bump whenever a change to the testbed code changes what a given config builds: old caches are then
# ignored instead of silently reused.
TESTBED_FORMAT_VERSION = 1

MODEL_FAMILIES = ("llama", "qwen2")

# Fields that only affect the pairs and prompts drawn from the reference policy, not the policy itself.
PAIR_STAGE_FIELDS = (
    "num_train_pairs",
    "bt_temperature",
    "pair_sampling_temperature",
    "num_heldout_pairs",
    "num_eval_prompts",
    "max_new_tokens",
)


@dataclass(frozen=True)
class TestbedConfig:
    """Parameters of the synthetic language, its gold reward, the reference policy and the pairs."""

    __test__ = False  # not a pytest test class despite the name

    seed: int = 0

    # The language: prompts are topics, responses are words (see docs/testbed.md).
    num_topics: int = 8
    num_words: int = 48
    relevant_words_per_topic: int = 12
    off_topic_words_per_topic: int = 12
    min_response_words: int = 3
    max_response_words: int = 12

    # Gold reward r*(t, y) = mean_w(q_w + relevance_weight * rel_{t,w}) + length_weight * log(len(y)).
    relevance_weight: float = 1.5
    length_weight: float = 0.3
    out_of_language_word_value: float = -3.0

    # Supervised fine-tuning data: each response word is drawn from the topic's relevant words with
    # this probability, uniformly from all words otherwise.
    sft_relevant_word_share: float = 0.5

    # The tiny causal LM (random initialisation).
    model_family: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128

    # Supervised fine-tuning: one pass over sft_steps * sft_batch_size freshly drawn sequences.
    sft_steps: int = 400
    sft_batch_size: int = 64
    sft_learning_rate: float = 3e-3

    # Pairs drawn from the reference policy.
    num_train_pairs: int = 2048
    bt_temperature: float = 0.5
    pair_sampling_temperature: float = 1.0
    num_heldout_pairs: int = 512
    num_eval_prompts: int = 256
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int":
                _require(
                    isinstance(value, int) and not isinstance(value, bool),
                    field.name,
                    value,
                    "an integer",
                )
            elif field.type == "float":
                _require(
                    isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                    field.name,
                    value,
                    "a finite number",
                )
                object.__setattr__(self, field.name, float(value))
        self._validate_ranges()

    def _validate_ranges(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _require(self.num_topics >= 1, "num_topics", self.num_topics, "an integer >= 1")
        _require(self.num_words >= 2, "num_words", self.num_words, "an integer >= 2")
        _require(
            1 <= self.relevant_words_per_topic <= self.num_words,
            "relevant_words_per_topic",
            self.relevant_words_per_topic,
            f"an integer in [1, num_words={self.num_words}]",
        )
        free_words = self.num_words - self.relevant_words_per_topic
        _require(
            0 <= self.off_topic_words_per_topic <= free_words,
            "off_topic_words_per_topic",
            self.off_topic_words_per_topic,
            f"an integer in [0, num_words - relevant_words_per_topic = {free_words}]",
        )
        _require(
            self.min_response_words >= 1, "min_response_words", self.min_response_words, "an integer >= 1"
        )
        _require(
            self.max_response_words >= self.min_response_words,
            "max_response_words",
            self.max_response_words,
            f"an integer >= min_response_words={self.min_response_words}",
        )
        _require(
            0.0 <= self.sft_relevant_word_share <= 1.0,
            "sft_relevant_word_share",
            self.sft_relevant_word_share,
            "a number in [0, 1]",
        )
        _require(
            self.model_family in MODEL_FAMILIES, "model_family", self.model_family, f"one of {MODEL_FAMILIES}"
        )
        for name in ("hidden_size", "num_layers", "num_attention_heads", "intermediate_size"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            self.hidden_size,
            f"a multiple of num_attention_heads={self.num_attention_heads}",
        )
        head_size = self.hidden_size // self.num_attention_heads
        _require(
            head_size % 2 == 0,
            "hidden_size",
            self.hidden_size,
            "hidden_size / num_attention_heads even (rotary)",
        )
        for name in (
            "sft_steps",
            "sft_batch_size",
            "num_train_pairs",
            "num_heldout_pairs",
            "num_eval_prompts",
        ):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        for name in ("sft_learning_rate", "bt_temperature", "pair_sampling_temperature"):
            _require(getattr(self, name) > 0.0, name, getattr(self, name), "a number > 0")
        _require(
            self.max_new_tokens >= self.max_response_words + 1,
            "max_new_tokens",
            self.max_new_tokens,
            f"an integer >= max_response_words + 1 = {self.max_response_words + 1} (room for the eos token)",
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TestbedConfig:
        """Build from a plain mapping (e.g. a study YAML section); unknown keys are an error."""
        return from_known_keys(cls, values, "TestbedConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def content_key(self) -> str:
        """Hex sha256 of every field and the format version: names the cached pairs."""
        return _hash_fields(self.to_dict())

    def reference_policy_key(self) -> str:
        """Hex sha256 of the fields that determine the reference policy (all but the pair fields)."""
        fields = {name: value for name, value in self.to_dict().items() if name not in PAIR_STAGE_FIELDS}
        return _hash_fields(fields)


def _hash_fields(fields: dict[str, Any]) -> str:
    payload = json.dumps({"format_version": TESTBED_FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"TestbedConfig.{field} = {value!r} is invalid: expected {allowed}")
