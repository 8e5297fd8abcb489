"""Evaluation of a trained policy (DESIGN §5): held-out accuracy, noise detection, gold-reward metrics.

- **Held-out preference accuracy**: on clean pairs never trained on, the share where the method's
  own implicit reward (``MethodOutput.chosen_reward`` / ``rejected_reward``, method in eval mode) of
  the chosen response exceeds the rejected one's; ties count ½, so the reference policy itself
  (all DPO rewards 0) scores exactly 0.5.
- **Noise detection**: AUROC of a per-pair score for telling flipped from clean training pairs; the
  score is ``−reward_gap`` (flipped pairs should end with low gaps) and, for γ methods, ``−γ``.
- **Gold reward** (testbed): responses sampled from the policy and the reference policy for the same
  prompts with the same seed; mean gold reward of each, the policy's win rate against the reference
  by the gold reward (ties ½), its length-controlled win rate (alpaca_eval's GLM, see
  ``length_controlled_win_rate``), and a sampled estimate of KL(π‖π_ref) (k3, non-negative per sample;
  missing, with the reason, where it is not finite in float64).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.config.sections import EvaluationSettings
from noisypref.benchmark.engine.logps import (
    SequenceLogps,
    forward_pairs,
    per_token_terms,
    summed_response_logps,
)
from noisypref.benchmark.engine.reference import ReferenceLogps
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.benchmark.evaluation.alpaca_eval import NothingToFit, length_controlled_minimal_winrate
from noisypref.benchmark.testbed import GoldReward, sample_responses
from noisypref.benchmark.testbed.sampling import sample_response_ids
from noisypref.methods import PreferenceMethod

logger = logging.getLogger(__name__)

# What each metric computed here means (noisypref.benchmark.config.metrics)
declare("heldout_accuracy", "held-out accuracy", "higher", bounds=(0.0, 1.0),
        description="share of clean held-out pairs whose chosen response the method's implicit reward prefers (ties ½)")
declare("noise_detection_auroc", "noise detection AUROC (reward gap)", "higher", bounds=(0.0, 1.0),
        description="AUROC of −reward gap for telling flipped from clean training pairs")
declare("noise_detection_auroc_gamma", "noise detection AUROC (γ)", "higher", bounds=(0.0, 1.0),
        description="AUROC of −γ for telling flipped from clean training pairs (γ methods)")
declare("label_gold_agreement", "training labels agreeing with the gold order", "none", bounds=(0.0, 1.0),
        diagnostic=True, comparable=False,
        description="share of the run's training pairs, as labelled after noise, whose chosen response has the "
        "higher gold reward (ties ½; testbed only): a property of the data, the same for every method")
declare("noise_detection_auroc_gold", "noise detection AUROC (gold reward gap)", "none", bounds=(0.0, 1.0),
        diagnostic=True, comparable=False,
        description="AUROC of −(gold reward of chosen − rejected, as labelled after noise) for telling flipped "
        "from clean training pairs (testbed only): what a model that knew the gold reward would reach")
declare("gold_reward_mean", "mean gold reward", "higher",
        description="mean gold reward of responses sampled from the policy")
declare("gold_reward_reference_mean", "mean gold reward of the reference policy", "none", diagnostic=True, comparable=False,
        description="the same for the reference policy: a constant of the condition, not of the method")
declare("gold_win_rate", "gold win rate vs reference", "higher", bounds=(0.0, 1.0),
        description="share of prompts where the policy's response has the higher gold reward (ties ½)")
declare("gold_lc_win_rate", "length-controlled gold win rate", "higher", bounds=(0.0, 1.0),
        description="the win rate at equal length, by alpaca_eval's length_controlled_minimal GLM")
declare("policy_response_words_mean", "mean response length (words)", "none", bounds=(0.0, None), diagnostic=True,
        description="mean number of words of the policy's sampled responses")
declare("kl_estimate", "KL(π‖π_ref) estimate", "none", bounds=(0.0, None), diagnostic=True,
        description="Monte-Carlo estimate of the policy's KL divergence from the reference policy: the mean of "
                    "k3 = (r − 1) − log r, r = π_ref(y)/π(y), over y ~ π (each term ≥ 0; Schulman 2020)")


# ---------------------------------------------------------------------------------------------
# Pure metrics


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    group_ends = np.r_[group_starts[1:], len(values)]  # exclusive
    mean_rank_of_group = (group_starts + 1 + group_ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank_of_group, group_ends - group_starts)
    return ranks


def auroc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + ½ P(tie).

    Computed from ranks (Mann & Whitney 1947: AUROC = U / (n₊ n₋)). NaN when a class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    if scores.shape != is_positive.shape:
        raise ValueError(f"scores have shape {scores.shape} but labels {is_positive.shape}")
    positives, negatives = int(is_positive.sum()), int((~is_positive).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[is_positive].sum()
    u_statistic = rank_sum - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


def preference_accuracy(chosen_reward: np.ndarray, rejected_reward: np.ndarray) -> float:
    """Share of pairs whose chosen reward exceeds the rejected one; ties count ½."""
    return win_rate(chosen_reward, rejected_reward)


def win_rate(scores: np.ndarray, opponent_scores: np.ndarray) -> float:
    """Mean of 1[score > opponent] + ½·1[score = opponent] over matched entries."""
    scores = np.asarray(scores, dtype=np.float64)
    opponent_scores = np.asarray(opponent_scores, dtype=np.float64)
    if scores.shape != opponent_scores.shape or scores.size == 0:
        raise ValueError(
            f"need two non-empty arrays of one shape; got {scores.shape} and {opponent_scores.shape}"
        )
    return float(np.mean((scores > opponent_scores) + 0.5 * (scores == opponent_scores)))


# ---------------------------------------------------------------------------------------------
# Metrics of a model


@torch.no_grad()
def method_outputs(
    policy: PreTrainedModel,
    method: PreferenceMethod,
    pairs: TokenizedPairs,
    reference: ReferenceLogps | None,
    pad_token_id: int,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The method's ``chosen_reward``, ``rejected_reward``, ``reward_gap`` (and ``gamma``) of every pair,
    computed in eval mode in batches of ``batch_size`` in dataset order; ``on_batch`` receives the
    number of pairs of each batch done (progress)."""
    was_training = policy.training
    policy.eval()
    method.eval()
    logps_model = SequenceLogps(policy)
    collected: dict[str, list[torch.Tensor]] = {"chosen_reward": [], "rejected_reward": [], "reward_gap": []}
    for start in range(0, len(pairs), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(pairs)))
        logps = forward_pairs(
            logps_model,
            pairs,
            indices,
            reference,
            pad_token_id,
            policy.device,
            pack=logps_model.supports_packing,
            **per_token_terms(method),
        )
        output = method(logps)
        collected["chosen_reward"].append(output.chosen_reward)
        collected["rejected_reward"].append(output.rejected_reward)
        collected["reward_gap"].append(output.reward_gap)
        if "gamma" in output.diagnostics:
            collected.setdefault("gamma", []).append(output.diagnostics["gamma"])
        if on_batch is not None:
            on_batch(len(indices))
    policy.train(was_training)
    return {name: torch.cat(values).double().cpu().numpy() for name, values in collected.items()}


def noise_detection(outputs: Mapping[str, np.ndarray], is_flipped: np.ndarray) -> dict[str, float]:
    """AUROC of −reward gap (and −γ where present) for flagging the flipped training pairs.

    Empty when the pairs are all flipped or all clean (AUROC undefined)."""
    is_flipped = np.asarray(is_flipped, dtype=bool)
    if is_flipped.all() or not is_flipped.any():
        return {}
    metrics = {"noise_detection_auroc": auroc(-outputs["reward_gap"], is_flipped)}
    if "gamma" in outputs:
        metrics["noise_detection_auroc_gamma"] = auroc(-outputs["gamma"], is_flipped)
    return metrics


def gold_label_metrics(gold_reward_gap: np.ndarray, is_flipped: np.ndarray) -> dict[str, float]:
    """How the training labels relate to the gold reward (the premise check of issue 22).

    ``gold_reward_gap``: gold reward of chosen − rejected per training pair, as labelled after noise;
    ``is_flipped``: which of them the noise flipped. ``label_gold_agreement`` is the share of positive
    gaps (ties ½); ``noise_detection_auroc_gold`` the AUROC of −gap for flagging the flipped pairs,
    left out when the pairs are all flipped or all clean."""
    gold_reward_gap = np.asarray(gold_reward_gap, dtype=np.float64)
    is_flipped = np.asarray(is_flipped, dtype=bool)
    metrics = {"label_gold_agreement": preference_accuracy(gold_reward_gap, np.zeros_like(gold_reward_gap))}
    if is_flipped.any() and not is_flipped.all():
        metrics["noise_detection_auroc_gold"] = auroc(-gold_reward_gap, is_flipped)
    return metrics


def gold_reward_metrics(
    policy: PreTrainedModel,
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    gold_reward: GoldReward,
    config: EvaluationSettings,
    seed: int,
    items: dict[str, tuple[list[str], np.ndarray]] | None = None,
    missing: dict[str, str] | None = None,
    reference_responses: list[str] | None = None,
) -> dict[str, float]:
    """Gold reward, win rate, length-controlled win rate and KL estimate of ``policy`` (plain-text prompts).

    ``items``, when given, receives the per-sample values of the metrics that are means over samples
    (``gold_win_rate``, ``gold_reward_mean``), keyed by metric: (sample ids, values); ``missing``, the
    reason for each metric left out (``gold_lc_win_rate`` when the GLM has nothing to fit, ``kl_estimate``
    when it is not finite).
    ``reference_responses``: the reference policy's samples for these prompts, settings and seed
    (``reference_samples``), when the caller has them already; ``reference_model`` is then only used
    for the KL estimate and may be None when ``config.kl_samples`` is 0."""
    policy_responses = _flatten(sample_responses(policy, tokenizer, list(prompts), **_sampling(config, seed)))
    if reference_responses is None:
        reference_responses = reference_samples(reference_model, tokenizer, prompts, config, seed)
    repeated_prompts = [prompt for prompt in prompts for _ in range(config.samples_per_prompt)]
    policy_rewards = gold_reward.score_many(repeated_prompts, policy_responses)
    reference_rewards = gold_reward.score_many(repeated_prompts, reference_responses)
    policy_wins = (policy_rewards > reference_rewards) + 0.5 * (policy_rewards == reference_rewards)
    metrics = {
        "gold_reward_mean": float(policy_rewards.mean()),
        "gold_reward_reference_mean": float(reference_rewards.mean()),
        "gold_win_rate": win_rate(policy_rewards, reference_rewards),
        "policy_response_words_mean": float(
            np.mean([len(response.split()) for response in policy_responses])
        ),
    }
    # alpaca_eval's length-controlled GLM, the reference policy as the baseline (Dubois et al. 2024)
    try:
        metrics["gold_lc_win_rate"] = length_controlled_minimal_winrate(
            policy_wins,
            np.array([len(response) for response in reference_responses])
            - np.array([len(response) for response in policy_responses]),
        )
    except NothingToFit as reason:
        logger.warning("gold_lc_win_rate is missing: %s", reason)
        if missing is not None:
            missing["gold_lc_win_rate"] = str(reason)
    if items is not None:
        sample_ids = [f"{index}:{sample}" for index in range(len(prompts)) for sample in range(config.samples_per_prompt)]
        items["gold_win_rate"] = (sample_ids, np.asarray(policy_wins, dtype=np.float64))
        items["gold_reward_mean"] = (sample_ids, np.asarray(policy_rewards, dtype=np.float64))
    if config.kl_samples > 0:
        try:
            metrics["kl_estimate"] = kl_estimate(
                policy,
                reference_model,
                tokenizer,
                prompts,
                num_samples=config.kl_samples,
                max_new_tokens=config.max_new_tokens,
                seed=seed + 1,
            )
        except KLNotFinite as reason:
            logger.warning("kl_estimate is missing: %s", reason)
            if missing is not None:
                missing["kl_estimate"] = str(reason)
    return metrics


def reference_samples(
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: EvaluationSettings,
    seed: int,
) -> list[str]:
    """The reference policy's responses that ``gold_reward_metrics`` compares the policy with, flattened
    (``config.samples_per_prompt`` per prompt, prompt by prompt)."""
    return _flatten(sample_responses(reference_model, tokenizer, list(prompts), **_sampling(config, seed)))


def _sampling(config: EvaluationSettings, seed: int) -> dict[str, Any]:
    return dict(
        num_samples=config.samples_per_prompt,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )


def kl_estimate(
    policy: PreTrainedModel,
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
) -> float:
    """Monte-Carlo KL(π‖π_ref) over y ~ π(·|x), by the k3 estimator: the mean of (r − 1) − log r with
    r = π_ref(y|x) / π(y|x).

    Each term is ≥ 0 (log r ≤ r − 1), and its mean is unbiased, since E_π[r] = 1 (Schulman 2020,
    "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html); the plain mean of
    log π − log π_ref is unbiased too but can come out negative. y is sampled at temperature 1 until
    a stop token or ``max_new_tokens``, and the sampled token ids themselves are scored (the stop
    token included when one was sampled), so no decode/re-tokenise round trip changes y. The estimate
    itself is ``k3_kl_estimate`` (float64; ``KLNotFinite`` where it is not finite).
    """
    response_ids = sample_response_ids(
        policy,
        tokenizer,
        list(prompts),
        num_samples=num_samples,
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    repeated_prompts = [prompt for prompt in prompts for _ in range(num_samples)]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = [bos + ids for ids in tokenizer(repeated_prompts, add_special_tokens=False)["input_ids"]]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy_logps = summed_response_logps(policy, prompt_ids, response_ids, pad_token_id).double()
    reference_logps = summed_response_logps(reference_model, prompt_ids, response_ids, pad_token_id).double()
    return k3_kl_estimate((reference_logps - policy_logps).numpy())  # log r


# A single k3 term above this share of the sum makes the estimate rest on that one sample.
DOMINANT_SAMPLE_SHARE = 0.5


class KLNotFinite(ValueError):
    """The k3 KL estimate is not finite in float64; the message says why."""


def k3_kl_estimate(log_ratio) -> float:
    """The mean over samples of k3 = (r − 1) − log r, r = exp(``log_ratio``) = π_ref(y)/π(y), y ~ π
    (Schulman 2020, "Approximating KL Divergence"), in float64, ``expm1`` for small |log r|.

    Raises ``KLNotFinite`` where a term or the mean is not finite (log r above log of the largest float64,
    709.78, or a log r that is itself not finite); logs a warning where one sample carries more than
    ``DOMINANT_SAMPLE_SHARE`` of the sum of the terms (two samples or more).
    """
    log_ratio = np.asarray(log_ratio, dtype=np.float64).ravel()
    if log_ratio.size == 0:
        raise KLNotFinite("no sample to estimate the KL divergence from")
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.expm1(log_ratio) - log_ratio
        estimate = float(np.sum(terms / log_ratio.size))  # divided first: a sum of finite terms may overflow
    if not math.isfinite(estimate):
        overflowing = int(np.sum(np.isfinite(log_ratio) & ~np.isfinite(terms)))
        undefined = int(np.sum(~np.isfinite(log_ratio)))
        reasons = []
        if overflowing:
            largest = float(np.max(log_ratio[np.isfinite(log_ratio)]))
            reasons.append(f"{overflowing} with log r = log π_ref(y) − log π(y) so large that r overflows float64 "
                           f"(largest {largest:.6g}; the limit is {math.log(np.finfo(np.float64).max):.6g})")
        if undefined:
            reasons.append(f"{undefined} whose log r is not finite (a log-prob of −∞ or NaN)")
        detail = "; ".join(reasons) or "the terms are finite but their mean overflows float64"
        raise KLNotFinite(f"the k3 KL estimate over {log_ratio.size} samples is not finite: {detail}")
    total = float(np.sum(terms))
    largest = int(np.argmax(terms))
    if log_ratio.size > 1 and math.isfinite(total) and total > 0 and terms[largest] > DOMINANT_SAMPLE_SHARE * total:
        logger.warning(
            "kl_estimate: one of %d samples (log r = %.4g) carries %.0f %% of the k3 sum; the estimate rests "
            "on that sample",
            log_ratio.size, log_ratio[largest], 100 * terms[largest] / total,
        )  # fmt: skip
    return estimate


def _flatten(nested: list[list[str]]) -> list[str]:
    return [item for inner in nested for item in inner]
