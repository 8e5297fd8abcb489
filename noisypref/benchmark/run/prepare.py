"""Everything a run trains and evaluates on: its data and flips, the policy, tokens, reference log-probs.

The flip record stays with evaluation, with two marked exceptions (`noisypref.benchmark.config.references`):
`training_pairs` removes the flipped pairs of a ``clean_only`` run (the oracle) from its training data,
and `method_hyperparameters` gives a known-rate run its realised flip rate. The method and the
training loop never receive the record.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.config.references import CLEAN_ONLY, KNOWN_RATE, symbolic_hyperparameters
from noisypref.benchmark.config.run_config import RunConfig
from noisypref.benchmark.config.sections import TESTBED, resolve_hyperparameters
from noisypref.benchmark.data.hub import hub_lookup
from noisypref.benchmark.data.loaders import load_preferences, split_heldout
from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.logps import per_token_terms
from noisypref.benchmark.engine.models import (
    adapters_disabled,
    apply_lora,
    load_configured_model,
    resolve_model,
)
from noisypref.benchmark.engine.reference import LiveReference, ReferenceLogps, reference_logps
from noisypref.benchmark.engine.tokenization import TokenizedPairs, tokenize_pairs
from noisypref.benchmark.evaluation.chat_benchmarks import check_runnable
from noisypref.benchmark.progress import phase
from noisypref.benchmark.run.cleaning import EnginePairModels, check_score_columns, clean_training_pairs
from noisypref.benchmark.storage import atomic_path
from noisypref.benchmark.testbed import Testbed, build_testbed
from noisypref.cleaning import CleaningRecord
from noisypref.methods import PreferenceMethod, build
from noisypref.noise_injection import FlipRecord, inject

logger = logging.getLogger(__name__)

HELDOUT_SPLIT_SEED = 0


@dataclass
class RunData:
    train_pairs: datasets.Dataset
    heldout_pairs: datasets.Dataset
    testbed: Testbed | None


@dataclass
class PreparedRun:
    """Everything a run trains and evaluates on, built before training starts."""

    data: RunData
    flips: FlipRecord  # for evaluation: what was injected into the training pairs
    hyperparameters: dict  # the method's, each realised_flip_rate symbol resolved
    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pad_token_id: int
    method: PreferenceMethod
    train_tokens: TokenizedPairs
    heldout_tokens: TokenizedPairs
    train_reference: ReferenceLogps | LiveReference | None
    heldout_reference: ReferenceLogps | LiveReference | None
    cleaning: CleaningRecord | None = None  # what the cleaning judge did to the noisy pairs, if the run has one


def prepare_run(config: RunConfig, run_dir: Path, cache_dir: Path, device: torch.device) -> PreparedRun:
    """Data, noise (written to flips.csv), the policy, the method, token ids and reference log-probs.

    Under a multi-process launch rank 0 builds the cached data, model and tokens first and the others
    then read them; the reference log-probs are computed by all of them, each its share. A failure
    on any process while loading fails the run on every one."""

    def load() -> tuple:
        with distributed.main_process_first():
            if distributed.is_main_process():  # rank 0 runs the benchmarks: a missing file or API key fails now
                check_runnable(config.evaluation.benchmarks)
            return load_data_model_and_tokens(config, run_dir, cache_dir, device)

    with phase(f"loading {config.dataset.display_label} and model {config.model.name}"):
        data, flips, cleaning, policy, tokenizer, identity, pad_token_id, train_tokens, heldout_tokens = (
            distributed.agreed(load, "preparing the run")
        )
    log_sizes_and_truncation(config, train_tokens, heldout_tokens)
    hyperparameters = method_hyperparameters(config, flips)
    method = build(config.method.name, seed=training_seed(config), **hyperparameters)
    train_reference = heldout_reference = None
    cached = method.requires_reference and config.model.reference == "cached"
    if cached:  # computed before training changes the policy; usually a cache hit
        options = dict(
            model_identity=identity, cache_dir=cache_dir, pad_token_id=pad_token_id,
            shared_prefix=per_token_terms(method)["shared_prefix"],  # LD-DPO's rewards need shared-prefix sums
        )  # fmt: skip
        train_reference = reference_logps(policy, train_tokens, **options)
        heldout_reference = reference_logps(policy, heldout_tokens, **options)
    if config.model.lora is not None:
        torch.manual_seed(training_seed(config))  # the adapters' initialisation
        apply_lora(policy, config.model.lora)
    if method.requires_reference and not cached:
        train_reference = heldout_reference = live_reference(
            config, data, policy, pad_token_id, cache_dir, device
        )
    return PreparedRun(
        data,
        flips,
        hyperparameters,
        policy,
        tokenizer,
        pad_token_id,
        method,
        train_tokens,
        heldout_tokens,
        train_reference,
        heldout_reference,
        cleaning=cleaning,
    )


def training_seed(config: RunConfig) -> int:
    """The seed of the training randomness: ``training.seed``, else the run's seed (which draws the noise)."""
    return config.training.seed if config.training.seed is not None else config.seed


def truncation_summary(config: RunConfig, train_tokens: TokenizedPairs, heldout_tokens: TokenizedPairs) -> dict:
    """What ``max_prompt_length`` / ``max_length`` cut, per part of the data (result.json's "truncation")."""
    summary = {
        "max_length": config.training.max_length,
        "max_prompt_length": config.training.max_prompt_length,
    }
    for part, tokens in (("train", train_tokens), ("heldout", heldout_tokens)):
        counts = tokens.truncation
        summary[part] = {
            "pairs": len(tokens),
            "prompts_cut": counts["prompts"] if counts is not None else None,
            "responses_cut": counts["responses"] if counts is not None else None,
        }
    return summary


def log_sizes_and_truncation(
    config: RunConfig, train_tokens: TokenizedPairs, heldout_tokens: TokenizedPairs
) -> None:
    """One line with the pairs each phase uses, one with what truncation cut (once per run)."""
    evaluated = "not evaluated" if not config.evaluation.heldout_accuracy else "evaluated"
    logger.info(
        "%s: %d training pairs (trained and evaluated), %d held-out pairs (%s)",
        config.dataset.display_label, len(train_tokens), len(heldout_tokens), evaluated,
    )  # fmt: skip
    summary = truncation_summary(config, train_tokens, heldout_tokens)
    parts = []
    for part in ("train", "heldout"):
        counts = summary[part]
        if counts["prompts_cut"] is None:
            parts.append(f"{part}: not counted (token ids cached before 0.2)")
            continue
        parts.append(
            f"{part}: {counts['prompts_cut']} of {counts['pairs']} prompts cut to max_prompt_length "
            f"{summary['max_prompt_length']}, {counts['responses_cut']} of {2 * counts['pairs']} responses "
            f"cut to max_length {summary['max_length']}"
        )
    logger.info("truncation: %s", "; ".join(parts))


def unsharded_policy(
    config: RunConfig, data: RunData, state: dict[str, torch.Tensor], cache_dir: Path, device: torch.device
) -> PreTrainedModel:
    """A fresh policy (with adapters under LoRA) holding the trained weights ``state``, for evaluation."""
    policy, _ = load_configured_model(
        reference_model_location(config, data, cache_dir), config.model, device
    )
    if config.model.lora is not None:
        apply_lora(policy, config.model.lora)
    policy.load_state_dict(state)
    policy.eval()
    return policy


def load_data_model_and_tokens(
    config: RunConfig, run_dir: Path, cache_dir: Path, device: torch.device
) -> tuple:
    """The data, its flips (written to flips.csv), the cleaning record (written to cleaning.csv; None without
    a ``cleaning`` section), the policy, its tokenizer, its cache identity, the pad token and the token ids
    of the training pairs (cleaned, where the run cleans them) and of the held-out pairs."""
    data = resolve_dataset(config, cache_dir)
    check_score_columns(config, data.train_pairs)
    noisy_pairs, flips = inject(
        data.train_pairs, config.noise.model, config.noise.rate, config.seed, **config.noise.options
    )
    if distributed.is_main_process():
        with atomic_path(run_dir / "flips.csv") as temporary:
            flips.to_csv(temporary)
    policy, tokenizer, identity = load_model_and_tokenizer(config, data, cache_dir, device)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = dict(max_length=config.training.max_length, max_prompt_length=config.training.max_prompt_length)
    cleaning = None
    if config.cleaning is not None:  # the judge sees the noisy pairs (the oracle alone their flips too)
        noisy_tokens = tokenize_pairs(noisy_pairs, tokenizer, cache_dir=cache_dir, **lengths)
        models = EnginePairModels(
            config, reference_model_location(config, data, cache_dir), noisy_tokens, policy, identity,
            pad_token_id, cache_dir, device,
        )  # fmt: skip
        noisy_pairs, cleaning = clean_training_pairs(config, noisy_pairs, flips, models, cache_dir)
        if distributed.is_main_process():
            with atomic_path(run_dir / "cleaning.csv") as temporary:
                cleaning.to_csv(temporary)
    train_tokens = tokenize_pairs(training_pairs(config, noisy_pairs, flips), tokenizer, cache_dir=cache_dir, **lengths)
    heldout_tokens = tokenize_pairs(data.heldout_pairs, tokenizer, cache_dir=cache_dir, **lengths)
    return data, flips, cleaning, policy, tokenizer, identity, pad_token_id, train_tokens, heldout_tokens


def training_pairs(config: RunConfig, noisy_pairs: datasets.Dataset, flips: FlipRecord) -> datasets.Dataset:
    """The pairs a run trains on: its noisy pairs, all of them, except for a ``clean_only`` run (the
    oracle reference), which trains on the noisy pairs minus the flipped ones. The one place where the
    flip record reaches the training data; every other run gets ``noisy_pairs`` itself."""
    if config.method.reference != CLEAN_ONLY:
        return noisy_pairs
    flipped = flips.flipped_pair_ids()
    kept = [index for index, pair_id in enumerate(noisy_pairs["pair_id"]) if pair_id not in flipped]
    if not kept:
        raise ValueError(
            f"method.reference = {CLEAN_ONLY!r}: all {len(noisy_pairs)} training pairs were flipped "
            f"(noise {config.noise.model} at rate {config.noise.rate:g}), so the oracle has no pair to train on"
        )
    logger.info(
        "%s reference: %d flipped pairs removed, training on the other %d of %d",
        CLEAN_ONLY, len(noisy_pairs) - len(kept), len(kept), len(noisy_pairs),
    )  # fmt: skip
    return noisy_pairs.select(kept)


def method_hyperparameters(config: RunConfig, flips: FlipRecord) -> dict:
    """The method's hyperparameters; a known-rate run's ``realised_flip_rate`` symbols resolved to the
    share of training pairs its noise flipped (``ValueError`` when the method refuses that value)."""
    hyperparameters = config.method.hyperparameters
    if config.method.reference_kind != KNOWN_RATE:
        return dict(hyperparameters)
    resolved = resolve_hyperparameters(config.method.name, hyperparameters, flips.realised_rate)
    logger.info(
        "%s reference: %s",
        KNOWN_RATE,
        ", ".join(f"{name} = {resolved[name]:.6g}" for name in symbolic_hyperparameters(hyperparameters)),
    )
    return resolved


def live_reference(
    config: RunConfig,
    data: RunData,
    policy: PreTrainedModel,
    pad_token_id: int,
    cache_dir: Path,
    device: torch.device,
) -> LiveReference:
    """The reference model kept in memory: a LoRA policy with its adapters off, else a second copy."""
    if config.model.lora is not None:
        return LiveReference(policy, pad_token_id, context=lambda: adapters_disabled(policy))
    reference_model, _ = load_configured_model(
        reference_model_location(config, data, cache_dir), config.model, device
    )
    reference_model.requires_grad_(False)
    return LiveReference(reference_model, pad_token_id)


def resolve_dataset(config: RunConfig, cache_dir: Path) -> RunData:
    """Training and clean held-out pairs of the run's dataset.

    ``max_pairs`` caps the training pairs (the first ones) and, for a file or hub dataset, the held-out
    pairs too, to ``ceil(heldout_fraction * max_pairs)`` (a testbed sets its own held-out size);
    ``evaluation.max_heldout_pairs`` caps them for every kind. The held-out pairs kept are the first of
    the held-out split, so a smaller bound evaluates a subset of a larger one's pairs."""
    section = config.dataset
    testbed = None
    heldout_bound = config.evaluation.max_heldout_pairs
    if section.kind == TESTBED:
        testbed = build_testbed(section.testbed, cache_dir)
        train_pairs, heldout_pairs = testbed.train_pairs, testbed.heldout_pairs
    else:
        dataset = load_preferences(section.source, section.split, **section.hub_options)
        train_pairs, heldout_pairs = split_heldout(dataset, section.heldout_fraction, seed=HELDOUT_SPLIT_SEED)
        if section.max_pairs is not None:
            share = max(1, math.ceil(section.heldout_fraction * section.max_pairs))
            heldout_bound = share if heldout_bound is None else min(heldout_bound, share)
    if section.max_pairs is not None and section.max_pairs < len(train_pairs):
        train_pairs = train_pairs.select(range(section.max_pairs))
    if heldout_bound is not None and heldout_bound < len(heldout_pairs):
        heldout_pairs = heldout_pairs.select(range(heldout_bound))
    return RunData(train_pairs, heldout_pairs, testbed)


def load_model_and_tokenizer(
    config: RunConfig, data: RunData, cache_dir: Path, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The policy (initialised as the reference model), its tokenizer, and the reference model's identity
    for the reference log-prob cache (weights, dtype, attention and device type)."""
    location = reference_model_location(config, data, cache_dir)
    policy, tokenizer = load_configured_model(location, config.model, device)
    if data.testbed is not None and config.model.name == TESTBED:
        weights = f"testbed-reference-{data.testbed.config.reference_policy_key()}"
    else:
        weights = checkpoint_identity(location)
    numerics = [config.model.dtype, config.model.attn_implementation, device.type]
    return policy, tokenizer, json.dumps([weights, *numerics])


def reference_model_location(config: RunConfig, data: RunData, cache_dir: Path) -> str:
    if config.model.name == TESTBED:
        return str(data.testbed.reference_model_dir)
    return resolve_model(config.model.name, cache_dir)


def checkpoint_identity(name_or_path: str) -> str:
    """A local folder: its path and its files' sizes and modification times; a hub id: id and snapshot."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(
            (item.name, item.stat().st_size, item.stat().st_mtime_ns)
            for item in path.iterdir()
            if item.is_file()
        )
        return json.dumps({"folder": str(path.resolve()), "files": files})
    with hub_lookup("model", name_or_path):
        config_file = transformers.utils.cached_file(name_or_path, "config.json")
    return json.dumps({"hub": name_or_path, "snapshot": Path(config_file).parent.name})
