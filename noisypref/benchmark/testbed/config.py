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
from dataclasses import dataclass
from typing import Any

from noisypref.checks import choice, integer, number
from noisypref.settings import Section, setting

# Bump whenever a change to the testbed code changes what a given config builds: old caches are then
# ignored instead of silently reused.
TESTBED_FORMAT_VERSION = 1

MODEL_FAMILIES = ("llama", "qwen2")
_at_least_one = integer(minimum=1)
_positive = number(minimum=0, exclusive_minimum=True)

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
class TestbedConfig(Section):
    """Parameters of the synthetic language, its gold reward, the reference policy and the pairs."""

    __test__ = False  # not a pytest test class despite the name
    section = "testbed"

    seed: int = setting(0, integer(minimum=0))

    # The language: prompts are topics, responses are words (see docs/testbed.md).
    num_topics: int = setting(8, _at_least_one)
    num_words: int = setting(48, integer(minimum=2))
    relevant_words_per_topic: int = setting(12, _at_least_one)
    off_topic_words_per_topic: int = setting(12, integer(minimum=0))
    min_response_words: int = setting(3, _at_least_one)
    max_response_words: int = setting(12, _at_least_one)

    # Gold reward r*(t, y) = mean_w(q_w + relevance_weight * rel_{t,w}) + length_weight * log(len(y)).
    relevance_weight: float = setting(1.5, number())
    length_weight: float = setting(0.3, number())
    out_of_language_word_value: float = setting(-3.0, number())

    # Supervised fine-tuning data: each response word is drawn from the topic's relevant words with
    # this probability, uniformly from all words otherwise.
    sft_relevant_word_share: float = setting(0.5, number(minimum=0, maximum=1))

    # The tiny causal LM (random initialisation).
    model_family: str = setting("llama", choice(MODEL_FAMILIES))
    hidden_size: int = setting(64, _at_least_one)
    num_layers: int = setting(2, _at_least_one)
    num_attention_heads: int = setting(4, _at_least_one)
    intermediate_size: int = setting(128, _at_least_one)

    # Supervised fine-tuning: one pass over sft_steps * sft_batch_size freshly drawn sequences.
    sft_steps: int = setting(400, _at_least_one)
    sft_batch_size: int = setting(64, _at_least_one)
    sft_learning_rate: float = setting(3e-3, _positive)

    # Pairs drawn from the reference policy.
    num_train_pairs: int = setting(2048, _at_least_one)
    bt_temperature: float = setting(0.5, _positive)
    pair_sampling_temperature: float = setting(1.0, _positive)
    num_heldout_pairs: int = setting(512, _at_least_one)
    num_eval_prompts: int = setting(256, _at_least_one)
    max_new_tokens: int = setting(16, _at_least_one)

    def problems(self) -> list[tuple[str, Any, str]]:
        problems = []
        if self.relevant_words_per_topic > self.num_words:
            problems.append(("relevant_words_per_topic", self.relevant_words_per_topic,
                             f"an integer in [1, num_words={self.num_words}]"))  # fmt: skip
        free_words = self.num_words - self.relevant_words_per_topic
        if not 0 <= self.off_topic_words_per_topic <= free_words:
            problems.append(("off_topic_words_per_topic", self.off_topic_words_per_topic,
                             f"an integer in [0, num_words - relevant_words_per_topic = {free_words}]"))  # fmt: skip
        if self.max_response_words < self.min_response_words:
            problems.append(("max_response_words", self.max_response_words,
                             f"an integer >= min_response_words={self.min_response_words}"))  # fmt: skip
        if self.hidden_size % self.num_attention_heads:
            problems.append(("hidden_size", self.hidden_size, f"a multiple of num_attention_heads={self.num_attention_heads}"))
        elif (self.hidden_size // self.num_attention_heads) % 2:
            problems.append(("hidden_size", self.hidden_size, "hidden_size / num_attention_heads even (rotary)"))
        if self.max_new_tokens < self.max_response_words + 1:
            problems.append(("max_new_tokens", self.max_new_tokens,
                             f"an integer >= max_response_words + 1 = {self.max_response_words + 1} (room for the eos token)"))  # fmt: skip
        return problems

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
