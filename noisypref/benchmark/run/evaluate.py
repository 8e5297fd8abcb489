"""The evaluation of one trained run: the metrics its config asks for, and the per-pair files."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.config.references import CLEAN_ONLY
from noisypref.benchmark.config.run_config import RunConfig
from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.models import load_configured_model
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.benchmark.evaluation.cleaning_metrics import cleaning_quality, training_flips
from noisypref.benchmark.evaluation.metrics import (
    gold_label_metrics,
    gold_reward_metrics,
    method_outputs,
    noise_detection,
    preference_accuracy,
    reference_samples,
)
from noisypref.benchmark.progress import phase
from noisypref.benchmark.run.prepare import PreparedRun, checkpoint_identity, reference_model_location
from noisypref.benchmark.storage import atomic_path
from noisypref.noise_injection import FlipRecord

logger = logging.getLogger(__name__)

# The reference policy's gold-reward samples depend only on the reference model, the prompts, the
# sampling settings and the seed, so every method and flip rate of a seed shares them: a process keeps
# the last REFERENCE_SAMPLES_KEPT of them (0 samples afresh every run; benchmarks/study_cost.py).
REFERENCE_SAMPLES_KEPT = 64
_reference_samples: dict[str, list[str]] = {}

declare("realised_flip_rate", "realised flip rate", "none", bounds=(0.0, 1.0), diagnostic=True,
        description="share of training pairs the noise model flipped")
declare("identical_pairs_excluded", "pairs with identical responses (excluded)", "none", bounds=(0.0, None),
        diagnostic=True, description="training and held-out pairs whose two responses are the same tokens, left out of every metric")
declare("train_accuracy", "training accuracy (noisy labels)", "higher", bounds=(0.0, 1.0), noisy_labels=True,
        description="share of training pairs, as labelled after noise, whose chosen response the policy prefers "
        "(for a clean_only reference: of the unflipped pairs it trained on)")
declare("training_pairs", "training pairs", "none", bounds=(0.0, None), diagnostic=True,
        description="pairs the method trained on: every training pair, or for a clean_only reference the "
        "pairs its noise left unflipped")


def evaluate_run(
    config: RunConfig,
    run: PreparedRun,
    cache_dir: Path,
    device: torch.device,
    pairs_path: Path | None = None,
    items_path: Path | None = None,
    missing: dict[str, str] | None = None,
) -> dict[str, float]:
    """The metrics of DESIGN §5 that the config asks for (gold-reward metrics on the testbed only).

    ``pairs_path``: where to write the per-pair diagnostics of the training pairs (pairs.parquet);
    ``items_path``: where to write the per-item values of the metrics that are means over items
    (items.parquet: metric, item, value), for the reports' hierarchical bootstrap; ``missing``
    receives the reason for each metric the config asks for that could not be computed.
    """
    # the noise injected into the run's training pairs, also for a clean_only run, which trains without them
    metrics = {"realised_flip_rate": run.flips.realised_rate, "training_pairs": len(run.train_tokens)}
    if run.cleaning is not None:
        metrics.update(cleaning_quality(run.cleaning, run.flips))
    trained_flips = training_flips(run.flips, run.cleaning)  # which trained pairs are mislabelled, after cleaning
    items: dict[str, tuple[list[str], np.ndarray]] = {}
    # Batches of the training micro-batch size: a γ method's candidate set is then as in training.
    batch_size = config.training.batch_size // config.training.gradient_accumulation
    with phase(f"evaluation of {len(run.train_tokens)} training pairs", len(run.train_tokens), "pair") as progress:
        train_outputs = method_outputs(
            run.policy, run.method, run.train_tokens, run.train_reference, run.pad_token_id, batch_size,
            progress.advance,
        )  # fmt: skip
    if pairs_path is not None and distributed.is_main_process():
        write_pair_diagnostics(pairs_path, run.train_tokens.pair_ids, trained_flips, train_outputs)
    # Pairs whose two responses are the same tokens carry no preference: no metric counts them.
    informative = informative_pairs(run.train_tokens)
    informative_heldout = informative_pairs(run.heldout_tokens)
    if not informative.any():
        raise ValueError(
            f"all {len(informative)} training pairs have identical chosen and rejected token ids: no metric "
            "means anything (does the tokenizer read this data? is max_length long enough for the responses?)"
        )
    excluded = int((~informative).sum() + (~informative_heldout).sum())
    if excluded:
        metrics["identical_pairs_excluded"] = excluded
        logger.warning(
            "%d pair(s) (%d training, %d held-out) have identical responses and are excluded from every metric",
            excluded, (~informative).sum(), (~informative_heldout).sum(),
        )  # fmt: skip
    train_outputs = {name: values[informative] for name, values in train_outputs.items()}
    metrics["train_accuracy"] = float(np.mean(train_outputs["reward_gap"] > 0))
    # which trained pairs are mislabelled (after cleaning), aligned to the training tokens by pair id
    flipped = dict(zip(trained_flips.table["pair_id"], trained_flips.table["is_flipped"].astype(bool), strict=True))
    is_flipped = np.array([flipped[pair_id] for pair_id in run.train_tokens.pair_ids], dtype=bool)[informative]
    if config.evaluation.noise_detection and config.method.reference == CLEAN_ONLY:
        if missing is not None:
            reason = "a clean_only reference trains on no flipped pair: there is nothing to detect among its pairs"
            missing["noise_detection_auroc"] = reason
            if "gamma" in train_outputs:
                missing["noise_detection_auroc_gamma"] = reason
    elif config.evaluation.noise_detection:
        metrics.update(noise_detection(train_outputs, is_flipped))
    testbed = run.data.testbed
    if testbed is not None:  # the testbed's scores are its gold reward
        gold_gap = noisy_gold_reward_gaps(run.data.train_pairs, trained_flips, run.train_tokens.pair_ids)
        metrics.update(gold_label_metrics(gold_gap[informative], is_flipped))
    if config.evaluation.heldout_accuracy and informative_heldout.any():
        pairs = len(run.heldout_tokens)
        with phase(f"evaluation of {pairs} held-out pairs", pairs, "pair") as progress:
            heldout = method_outputs(
                run.policy,
                run.method,
                run.heldout_tokens,
                run.heldout_reference,
                run.pad_token_id,
                batch_size,
                progress.advance,
            )
        chosen = heldout["chosen_reward"][informative_heldout]
        rejected = heldout["rejected_reward"][informative_heldout]
        metrics["heldout_accuracy"] = preference_accuracy(chosen, rejected)
        pair_ids = [pair_id for pair_id, keep in zip(run.heldout_tokens.pair_ids, informative_heldout, strict=True) if keep]
        items["heldout_accuracy"] = (pair_ids, (chosen > rejected) + 0.5 * (chosen == rejected))
    if config.evaluation.gold_reward and testbed is not None:
        prompts = testbed.eval_prompts[: config.evaluation.num_eval_prompts]
        if len(prompts) < config.evaluation.num_eval_prompts:
            logger.warning(
                "the testbed has %d evaluation prompts; evaluation.num_eval_prompts asks for %d",
                len(prompts),
                config.evaluation.num_eval_prompts,
            )
        location = reference_model_location(config, run.data, cache_dir)
        reference_model = None

        def load_reference() -> PreTrainedModel:
            nonlocal reference_model
            if reference_model is None:
                reference_model, _ = load_configured_model(location, config.model, device)
            return reference_model

        with phase(f"gold-reward evaluation on {len(prompts)} prompts"):
            responses = cached_reference_samples(config, location, prompts, device, load_reference, run.tokenizer)
            metrics.update(
                gold_reward_metrics(
                    run.policy,
                    load_reference() if config.evaluation.kl_samples > 0 else None,
                    run.tokenizer,
                    prompts,
                    testbed.gold_reward,
                    config.evaluation,
                    seed=config.seed,
                    items=items,
                    missing=missing,
                    reference_responses=responses,
                )
            )
    not_finite = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if not_finite:
        raise ValueError(f"non-finite evaluation metrics: {not_finite}")
    if items_path is not None and distributed.is_main_process():
        write_items(items_path, items)
    return metrics


def cached_reference_samples(
    config: RunConfig,
    location: str,
    prompts: list[str],
    device: torch.device,
    load_reference: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
) -> list[str]:
    """``reference_samples`` of the reference model at ``location``, from this process's memory when
    an earlier run sampled the same model (by its files' sizes and times), prompts, settings and seed."""
    evaluation = config.evaluation
    identity = [
        checkpoint_identity(location),
        config.model.dtype,
        config.model.attn_implementation,
        device.type,
        prompts,
        [evaluation.samples_per_prompt, evaluation.temperature, evaluation.max_new_tokens, config.seed],
    ]
    key = hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()
    if key not in _reference_samples:
        responses = reference_samples(load_reference(), tokenizer, prompts, evaluation, config.seed)
        if REFERENCE_SAMPLES_KEPT == 0:
            return responses
        while len(_reference_samples) >= REFERENCE_SAMPLES_KEPT:
            del _reference_samples[next(iter(_reference_samples))]
        _reference_samples[key] = responses
    return list(_reference_samples[key])


def noisy_gold_reward_gaps(clean_pairs: datasets.Dataset, flips: FlipRecord, pair_ids: list[str]) -> np.ndarray:
    """Gold reward of chosen − rejected of the training pairs ``pair_ids``, as labelled after noise.

    ``clean_pairs`` are the pairs before injection, with the gold reward as ``score_chosen`` /
    ``score_rejected`` (the testbed's); a flipped pair's gap changes sign."""
    clean_gap = dict(
        zip(
            clean_pairs["pair_id"],
            np.asarray(clean_pairs["score_chosen"], dtype=np.float64)
            - np.asarray(clean_pairs["score_rejected"], dtype=np.float64),
            strict=True,
        )
    )
    flipped = dict(zip(flips.table["pair_id"], flips.table["is_flipped"].astype(bool), strict=True))
    return np.array([-clean_gap[pair_id] if flipped[pair_id] else clean_gap[pair_id] for pair_id in pair_ids])


def informative_pairs(pairs: TokenizedPairs) -> np.ndarray:
    """True for each pair whose two responses differ in their token ids."""
    differ = [a != b for a, b in zip(pairs.response_a_ids, pairs.response_b_ids, strict=True)]
    return np.array(differ, dtype=bool)


def write_items(path: Path, items: Mapping[str, tuple[list[str], np.ndarray]]) -> None:
    """items.parquet: one row per (metric, item) with the item's value; a metric is their mean."""
    frame = pd.DataFrame(
        {
            "metric": [name for name, (ids, _) in items.items() for _ in ids],
            "item": [str(item) for ids, _ in items.values() for item in ids],
            "value": np.concatenate([np.asarray(values, dtype=np.float64) for _, values in items.values()])
            if items
            else np.array([], dtype=np.float64),
        }
    )
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)


def write_pair_diagnostics(
    path: Path, pair_ids: list[str], flips: FlipRecord, outputs: Mapping[str, np.ndarray]
) -> None:
    """pairs.parquet: pair_id, is_flipped, the final reward gap (eval mode) and, for γ methods, γ."""
    flipped = dict(zip(flips.table["pair_id"], flips.table["is_flipped"].astype(bool), strict=True))
    columns = {
        "pair_id": pair_ids,
        "is_flipped": [flipped[pair_id] for pair_id in pair_ids],
        "reward_gap": outputs["reward_gap"],
    }
    if "gamma" in outputs:
        columns["gamma"] = outputs["gamma"]
    with atomic_path(path) as temporary:
        pd.DataFrame(columns).to_parquet(temporary, index=False)
