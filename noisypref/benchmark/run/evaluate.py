"""The evaluation of one trained run: the metrics its config asks for, and the per-pair files."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.config.run_config import RunConfig
from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.models import load_causal_lm
from noisypref.benchmark.evaluation.metrics import (
    gold_reward_metrics,
    method_outputs,
    noise_detection,
    preference_accuracy,
)
from noisypref.benchmark.progress import phase
from noisypref.benchmark.run.prepare import PreparedRun, reference_model_location
from noisypref.benchmark.storage import atomic_path
from noisypref.noise_injection import FlipRecord

logger = logging.getLogger(__name__)

declare("realised_flip_rate", "realised flip rate", "none", bounds=(0.0, 1.0), diagnostic=True,
        description="share of training pairs the noise model flipped")
declare("train_accuracy", "training accuracy (noisy labels)", "higher", bounds=(0.0, 1.0), noisy_labels=True,
        description="share of training pairs, as labelled after noise, whose chosen response the policy prefers")


def evaluate_run(
    config: RunConfig,
    run: PreparedRun,
    cache_dir: Path,
    device: torch.device,
    pairs_path: Path | None = None,
    items_path: Path | None = None,
) -> dict[str, float]:
    """The metrics of DESIGN §5 that the config asks for (gold-reward metrics on the testbed only).

    ``pairs_path``: where to write the per-pair diagnostics of the training pairs (pairs.parquet);
    ``items_path``: where to write the per-item values of the metrics that are means over items
    (items.parquet: metric, item, value), for the reports' hierarchical bootstrap.
    """
    metrics = {"realised_flip_rate": run.flips.realised_rate}
    items: dict[str, tuple[list[str], np.ndarray]] = {}
    # Batches of the training micro-batch size: a γ method's candidate set is then as in training.
    batch_size = config.training.batch_size // config.training.gradient_accumulation
    with phase(f"evaluation of {len(run.train_tokens)} training pairs", len(run.train_tokens), "pair") as progress:
        train_outputs = method_outputs(
            run.policy, run.method, run.train_tokens, run.train_reference, run.pad_token_id, batch_size,
            progress.advance,
        )  # fmt: skip
    if pairs_path is not None and _is_main_process():
        write_pair_diagnostics(pairs_path, run.train_tokens.pair_ids, run.flips, train_outputs)
    metrics["train_accuracy"] = float(np.mean(train_outputs["reward_gap"] > 0))
    if config.evaluation.noise_detection:
        metrics.update(noise_detection(train_outputs, run.flips.table["is_flipped"].to_numpy()))
    if config.evaluation.heldout_accuracy:
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
        metrics["heldout_accuracy"] = preference_accuracy(
            heldout["chosen_reward"], heldout["rejected_reward"]
        )
        chosen, rejected = heldout["chosen_reward"], heldout["rejected_reward"]
        items["heldout_accuracy"] = (list(run.heldout_tokens.pair_ids), (chosen > rejected) + 0.5 * (chosen == rejected))
    testbed = run.data.testbed
    if config.evaluation.gold_reward and testbed is not None:
        prompts = testbed.eval_prompts[: config.evaluation.num_eval_prompts]
        if len(prompts) < config.evaluation.num_eval_prompts:
            logger.warning(
                "the testbed has %d evaluation prompts; evaluation.num_eval_prompts asks for %d",
                len(prompts),
                config.evaluation.num_eval_prompts,
            )
        reference_model, _ = load_causal_lm(
            reference_model_location(config, run.data, cache_dir),
            config.model.dtype,
            attn_implementation=config.model.attn_implementation,
            device=device,
        )
        with phase(f"gold-reward evaluation on {len(prompts)} prompts"):
            metrics.update(
                gold_reward_metrics(
                    run.policy,
                    reference_model,
                    run.tokenizer,
                    prompts,
                    testbed.gold_reward,
                    config.evaluation,
                    seed=config.seed,
                    items=items,
                )
            )
    not_finite = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if not_finite:
        raise ValueError(f"non-finite evaluation metrics: {not_finite}")
    if items_path is not None and _is_main_process():
        write_items(items_path, items)
    return metrics


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



def _is_main_process() -> bool:
    return distributed.is_main_process()
