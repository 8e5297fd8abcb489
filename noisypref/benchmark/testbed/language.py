"""The synthetic prompt/response language and its hidden gold reward.

A prompt is one topic token, ``"topic_3"``; a response is a space-separated sequence of words,
``"w12 w5 w33"``. Every word ``w`` has a global quality ``q_w ~ N(0, 1)`` and, for every topic ``t``, a
relevance ``rel_{t,w}`` in {-1, 0, +1}: each topic has its own randomly chosen relevant (+1) and
off-topic (-1) words. The gold reward (DESIGN.md §6) is

    r*(t, y) = mean_{w in y}(q_w + relevance_weight * rel_{t,w}) + length_weight * log(len(y))

Tokens of a response that are not words of the language (a topic token, say) count as a word of value
``out_of_language_word_value``; an empty response scores that value too (as a one-word response would).
"""

from __future__ import annotations

import zlib

import numpy as np

from noisypref.benchmark.testbed.config import TestbedConfig

TOPIC_PREFIX = "topic_"
WORD_PREFIX = "w"


def topic_names(num_topics: int) -> list[str]:
    return [f"{TOPIC_PREFIX}{index}" for index in range(num_topics)]


def word_names(num_words: int) -> list[str]:
    return [f"{WORD_PREFIX}{index}" for index in range(num_words)]


def seeded_rng(config: TestbedConfig, stream: str) -> np.random.Generator:
    """An independent numpy generator per named random stream, all derived from ``config.seed``."""
    return np.random.default_rng([config.seed, zlib.crc32(stream.encode("utf-8"))])


class GoldReward:
    """The hidden reward of the language; see the module docstring for the formula.

    Public attributes (read-only by convention): ``topics``, ``words``, ``word_quality`` (shape
    ``[num_words]``), ``relevance`` (shape ``[num_topics, num_words]``, values in {-1, 0, +1}),
    ``relevance_weight``, ``length_weight``, ``out_of_language_word_value``.
    """

    def __init__(self, config: TestbedConfig) -> None:
        rng = seeded_rng(config, "language")
        self.topics = topic_names(config.num_topics)
        self.words = word_names(config.num_words)
        self.word_quality = rng.standard_normal(config.num_words)
        self.relevance = np.zeros((config.num_topics, config.num_words), dtype=np.int64)
        for topic_index in range(config.num_topics):
            shuffled_words = rng.permutation(config.num_words)
            relevant = shuffled_words[: config.relevant_words_per_topic]
            off_topic = shuffled_words[
                config.relevant_words_per_topic : config.relevant_words_per_topic
                + config.off_topic_words_per_topic
            ]
            self.relevance[topic_index, relevant] = 1
            self.relevance[topic_index, off_topic] = -1
        self.relevance_weight = config.relevance_weight
        self.length_weight = config.length_weight
        self.out_of_language_word_value = config.out_of_language_word_value
        self._topic_index = {topic: index for index, topic in enumerate(self.topics)}
        self._word_index = {word: index for index, word in enumerate(self.words)}
        # word_value[t, w] = q_w + relevance_weight * rel_{t,w}
        self._word_value = self.word_quality[None, :] + self.relevance_weight * self.relevance

    def topic_index(self, prompt: str) -> int:
        topic = prompt.strip()
        if topic not in self._topic_index:
            raise ValueError(
                f"prompt {prompt!r} is not a topic of the testbed language ({self.topics[0]!r}, ...)"
            )
        return self._topic_index[topic]

    def __call__(self, prompt: str, response: str) -> float:
        word_values = self._word_value[self.topic_index(prompt)]
        values = [
            word_values[self._word_index[token]]
            if token in self._word_index
            else self.out_of_language_word_value
            for token in response.split()
        ]
        if not values:
            return float(self.out_of_language_word_value)
        return float(np.mean(values) + self.length_weight * np.log(len(values)))

    def score_many(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return np.array(
            [self(prompt, response) for prompt, response in zip(prompts, responses, strict=True)],
            dtype=np.float64,
        )

    def relevant_words(self, topic_index: int) -> np.ndarray:
        return np.flatnonzero(self.relevance[topic_index] == 1)


def sample_prompts(gold_reward: GoldReward, count: int, rng: np.random.Generator) -> list[str]:
    """Prompts drawn uniformly from the topics."""
    return [gold_reward.topics[index] for index in rng.integers(len(gold_reward.topics), size=count)]


def sample_sft_responses(
    gold_reward: GoldReward, prompts: list[str], config: TestbedConfig, rng: np.random.Generator
) -> list[str]:
    """Supervised fine-tuning targets: a uniform length, then each word from the prompt topic's relevant
    words with probability ``sft_relevant_word_share``, uniformly from all words otherwise."""
    responses = []
    for prompt in prompts:
        relevant = gold_reward.relevant_words(gold_reward.topic_index(prompt))
        length = int(rng.integers(config.min_response_words, config.max_response_words + 1))
        from_relevant = rng.random(length) < config.sft_relevant_word_share
        relevant_draws = rng.choice(relevant, size=length)
        uniform_draws = rng.integers(config.num_words, size=length)
        word_indices = np.where(from_relevant, relevant_draws, uniform_draws)
        responses.append(" ".join(gold_reward.words[index] for index in word_indices))
    return responses
