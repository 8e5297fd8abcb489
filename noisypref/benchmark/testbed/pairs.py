"""Preference pairs sampled from the reference policy and labelled with the gold reward."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np
from scipy.special import expit
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.testbed.config import TestbedConfig
from noisypref.benchmark.testbed.language import GoldReward, sample_prompts
from noisypref.benchmark.testbed.sampling import sample_responses

logger = logging.getLogger(__name__)

# Two responses whose gold rewards differ by less than this are a tie (the same words in another order
# can differ in the last bits of the mean).
GOLD_TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ScoredResponsePairs:
    """Unordered response pairs with their gold rewards, aligned by index."""

    prompts: list[str]
    first: list[str]
    second: list[str]
    first_scores: np.ndarray
    second_scores: np.ndarray


def sample_scored_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    gold_reward: GoldReward,
    config: TestbedConfig,
    count: int,
    rng: np.random.Generator,
    description: str,
) -> ScoredResponsePairs:
    """Exactly ``count`` pairs of two responses sampled for one prompt from ``model``; candidate pairs
    whose responses are identical or tie on the gold reward are dropped (and logged) and redrawn."""
    prompts: list[str] = []
    first: list[str] = []
    second: list[str] = []
    num_candidates = num_identical = num_ties = 0
    while len(prompts) < count:
        missing = count - len(prompts)
        candidate_prompts = sample_prompts(gold_reward, missing + missing // 10 + 16, rng)
        responses = sample_responses(
            model,
            tokenizer,
            candidate_prompts,
            num_samples=2,
            temperature=config.pair_sampling_temperature,
            max_new_tokens=config.max_new_tokens,
            seed=int(rng.integers(2**31)),
        )
        for prompt, (response_a, response_b) in zip(candidate_prompts, responses, strict=True):
            num_candidates += 1
            if response_a == response_b:
                num_identical += 1
            elif abs(gold_reward(prompt, response_a) - gold_reward(prompt, response_b)) < GOLD_TIE_TOLERANCE:
                num_ties += 1
            elif len(prompts) < count:
                prompts.append(prompt)
                first.append(response_a)
                second.append(response_b)
    num_unused = num_candidates - num_identical - num_ties - count
    logger.info(
        "%s: dropped %d of %d candidate pairs (%d identical responses, %d gold-reward ties); "
        "kept %d, %d valid surplus candidates unused",
        description,
        num_identical + num_ties,
        num_candidates,
        num_identical,
        num_ties,
        count,
        num_unused,
    )
    return ScoredResponsePairs(
        prompts=prompts,
        first=first,
        second=second,
        first_scores=gold_reward.score_many(prompts, first),
        second_scores=gold_reward.score_many(prompts, second),
    )


def bradley_terry_first_is_chosen(
    pairs: ScoredResponsePairs, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """P(first is chosen) = σ((r*(first) − r*(second)) / temperature), Bradley & Terry (1952)."""
    probability_first_chosen = expit((pairs.first_scores - pairs.second_scores) / temperature)
    return rng.random(len(pairs.prompts)) < probability_first_chosen


def gold_first_is_chosen(pairs: ScoredResponsePairs) -> np.ndarray:
    return pairs.first_scores > pairs.second_scores


def preference_dataset(
    pairs: ScoredResponsePairs, first_is_chosen: np.ndarray, id_prefix: str
) -> datasets.Dataset:
    """The project's preference schema (DESIGN.md §2) with the gold rewards as scores."""
    chosen = [a if keep else b for a, b, keep in zip(pairs.first, pairs.second, first_is_chosen, strict=True)]
    rejected = [
        b if keep else a for a, b, keep in zip(pairs.first, pairs.second, first_is_chosen, strict=True)
    ]
    score_chosen = np.where(first_is_chosen, pairs.first_scores, pairs.second_scores)
    score_rejected = np.where(first_is_chosen, pairs.second_scores, pairs.first_scores)
    return datasets.Dataset.from_dict(
        {
            "pair_id": [f"{id_prefix}-{index:06d}" for index in range(len(pairs.prompts))],
            "prompt": pairs.prompts,
            "chosen": chosen,
            "rejected": rejected,
            "score_chosen": score_chosen.tolist(),
            "score_rejected": score_rejected.tolist(),
        },
        features=datasets.Features(
            {
                "pair_id": datasets.Value("string"),
                "prompt": datasets.Value("string"),
                "chosen": datasets.Value("string"),
                "rejected": datasets.Value("string"),
                "score_chosen": datasets.Value("float64"),
                "score_rejected": datasets.Value("float64"),
            }
        ),
    )
