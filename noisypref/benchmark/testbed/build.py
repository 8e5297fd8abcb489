"""Build the testbed once per config and cache it; every later run with the same config loads it.

Cache layout under ``cache_dir`` (two stages, each keyed by a content hash of its config fields):

    reference-<TestbedConfig.reference_policy_key()>/
        model/            save_pretrained folder of the SFT reference policy and the tokenizer
        sft_data/         the supervised fine-tuning examples (datasets.save_to_disk)
        manifest.json     config, key, format version, SFT statistics
    testbed-<TestbedConfig.content_key()>/
        train_pairs/      Bradley–Terry-labelled pairs (datasets.save_to_disk)
        heldout_pairs/    gold-ordered pairs
        eval_prompts.json
        manifest.json     config, keys, pair statistics

Each stage folder is built in a temporary folder next to it and renamed into place, under an exclusive
``fcntl.flock`` on ``<folder>.lock``, so concurrent processes build it once and nobody sees half a build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from noisypref.benchmark.storage import build_once
from noisypref.benchmark.testbed.config import PAIR_STAGE_FIELDS, TESTBED_FORMAT_VERSION, TestbedConfig
from noisypref.benchmark.testbed.language import GoldReward, sample_prompts, sample_sft_responses, seeded_rng
from noisypref.benchmark.testbed.pairs import (
    bradley_terry_first_is_chosen,
    gold_first_is_chosen,
    preference_dataset,
    sample_scored_pairs,
)
from noisypref.benchmark.testbed.policy import init_tiny_model, train_sft
from noisypref.benchmark.testbed.tokenizer import build_word_tokenizer

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


@dataclass
class Testbed:
    """A built (or cached) testbed: everything a run needs, plus statistics of how it was built."""

    __test__ = False  # not a pytest test class despite the name

    config: TestbedConfig
    tokenizer: PreTrainedTokenizerFast
    reference_model_dir: Path
    train_pairs: datasets.Dataset
    heldout_pairs: datasets.Dataset
    eval_prompts: list[str]
    gold_reward: GoldReward
    statistics: dict[str, Any] = field(default_factory=dict)

    def load_reference_model(self) -> PreTrainedModel:
        """A fresh copy of the SFT reference policy in eval mode."""
        return _load_reference_policy(self.reference_model_dir)


def _load_reference_policy(model_dir: Path) -> PreTrainedModel:
    """The SFT reference policy saved in ``model_dir``: float32, on the CPU, in eval mode."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def build_testbed(config: TestbedConfig, cache_dir: str | os.PathLike) -> Testbed:
    """Load the testbed for ``config`` from ``cache_dir``, building (and caching) what is missing.

    Building runs torch on one CPU thread: the model is too small to gain from more, several threads
    thrash on a busy machine, and with one thread the result does not depend on the core count.
    """
    cache_dir = Path(cache_dir)
    reference_dir = cache_dir / f"reference-{config.reference_policy_key()}"
    testbed_dir = cache_dir / f"testbed-{config.content_key()}"
    with one_torch_thread():
        build_once(reference_dir, lambda staging: _build_reference_policy(config, staging))
        build_once(testbed_dir, lambda staging: _build_pairs(config, reference_dir / "model", staging))
    return _load_testbed(config, reference_dir, testbed_dir)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _build_reference_policy(config: TestbedConfig, output_dir: Path) -> None:
    started = time.perf_counter()
    logger.info("building the testbed reference policy (key %s)", config.reference_policy_key()[:12])
    gold_reward = GoldReward(config)
    tokenizer = build_word_tokenizer(config.num_topics, config.num_words)
    rng = seeded_rng(config, "sft_data")
    prompts = sample_prompts(gold_reward, config.sft_steps * config.sft_batch_size, rng)
    responses = sample_sft_responses(gold_reward, prompts, config, rng)
    model = init_tiny_model(config, tokenizer)
    losses = train_sft(model, tokenizer, prompts, responses, config)

    model.save_pretrained(output_dir / "model")
    tokenizer.save_pretrained(output_dir / "model")
    datasets.Dataset.from_dict({"prompt": prompts, "response": responses}).save_to_disk(
        output_dir / "sft_data"
    )
    reference_fields = {
        name: value for name, value in config.to_dict().items() if name not in PAIR_STAGE_FIELDS
    }
    _write_manifest(
        output_dir,
        {
            "format_version": TESTBED_FORMAT_VERSION,
            "reference_policy_key": config.reference_policy_key(),
            "config": reference_fields,
            "statistics": {
                "sft_first_loss": losses[0],
                "sft_final_loss": float(np.mean(losses[-20:])),
                "sft_seconds": time.perf_counter() - started,
            },
        },
    )


def _build_pairs(config: TestbedConfig, reference_model_dir: Path, output_dir: Path) -> None:
    started = time.perf_counter()
    logger.info("sampling the testbed preference pairs (key %s)", config.content_key()[:12])
    gold_reward = GoldReward(config)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(reference_model_dir)
    model = _load_reference_policy(reference_model_dir)

    train = sample_scored_pairs(
        model,
        tokenizer,
        gold_reward,
        config,
        config.num_train_pairs,
        seeded_rng(config, "train_pairs"),
        "training pairs",
    )
    train_first_is_chosen = bradley_terry_first_is_chosen(
        train, config.bt_temperature, seeded_rng(config, "bt_labels")
    )
    train_pairs = preference_dataset(train, train_first_is_chosen, "train")
    heldout = sample_scored_pairs(
        model,
        tokenizer,
        gold_reward,
        config,
        config.num_heldout_pairs,
        seeded_rng(config, "heldout_pairs"),
        "held-out pairs",
    )
    heldout_pairs = preference_dataset(heldout, gold_first_is_chosen(heldout), "heldout")
    eval_prompts = sample_prompts(gold_reward, config.num_eval_prompts, seeded_rng(config, "eval_prompts"))

    label_agreement = float(
        np.mean(np.array(train_pairs["score_chosen"]) > np.array(train_pairs["score_rejected"]))
    )
    reference_scores = np.concatenate([train.first_scores, train.second_scores])
    reference_lengths = [len(response.split()) for response in train.first + train.second]
    logger.info(
        "BT labels (temperature %g) agree with the gold order on %.1f %% of %d training pairs",
        config.bt_temperature,
        100 * label_agreement,
        len(train_pairs),
    )
    train_pairs.save_to_disk(output_dir / "train_pairs")
    heldout_pairs.save_to_disk(output_dir / "heldout_pairs")
    (output_dir / "eval_prompts.json").write_text(json.dumps(eval_prompts))
    _write_manifest(
        output_dir,
        {
            "format_version": TESTBED_FORMAT_VERSION,
            "content_key": config.content_key(),
            "reference_policy_key": config.reference_policy_key(),
            "config": config.to_dict(),
            "statistics": {
                "train_label_agreement_with_gold": label_agreement,
                "reference_sample_mean_gold_reward": float(reference_scores.mean()),
                "reference_sample_mean_words": float(np.mean(reference_lengths)),
                "pair_sampling_seconds": time.perf_counter() - started,
            },
        },
    )


def _write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    (output_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _load_testbed(config: TestbedConfig, reference_dir: Path, testbed_dir: Path) -> Testbed:
    reference_manifest = json.loads((reference_dir / MANIFEST_FILE).read_text())
    testbed_manifest = json.loads((testbed_dir / MANIFEST_FILE).read_text())
    if testbed_manifest["content_key"] != config.content_key():
        raise RuntimeError(f"cache folder {testbed_dir} holds another config's testbed; delete it")
    return Testbed(
        config=config,
        tokenizer=PreTrainedTokenizerFast.from_pretrained(reference_dir / "model"),
        reference_model_dir=reference_dir / "model",
        train_pairs=datasets.load_from_disk(str(testbed_dir / "train_pairs")),
        heldout_pairs=datasets.load_from_disk(str(testbed_dir / "heldout_pairs")),
        eval_prompts=json.loads((testbed_dir / "eval_prompts.json").read_text()),
        gold_reward=GoldReward(config),
        statistics={**reference_manifest["statistics"], **testbed_manifest["statistics"]},
    )
