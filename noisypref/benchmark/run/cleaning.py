"""A run's cleaning step: the judge of its ``cleaning`` section cleans the noisy training pairs, once.

`clean_training_pairs` is called by `run.prepare` after the noise is injected and before the training
pairs are tokenised. The judge's record is built once per (dataset, noise, rate, seed, judge entry,
model) and cached in ``cache_dir/cleaning/``: every method of a study trains on the same cleaned pairs.
`EnginePairModels` is what model-based judges ask for (`noisypref.cleaning.PairModels`): the reference
model's log-probs (the run's own cached reference log-probs) and short DPO runs from the reference model,
each cached by what it trained on.

The flip record reaches the judge here only for the ``oracle`` judge (`noisypref.cleaning.clean` passes it
to no other): the one marked place where it meets data preparation (DESIGN.md §1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel

from noisypref.benchmark.config.run_config import RunConfig
from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.models import apply_lora, load_configured_model
from noisypref.benchmark.engine.reference import ReferenceLogps, reference_logps
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.benchmark.engine.train import train
from noisypref.benchmark.evaluation.metrics import method_outputs
from noisypref.benchmark.progress import phase
from noisypref.benchmark.storage import build_once, cached_torch_file
from noisypref.cleaning import CleaningRecord, ResponseLogps, apply_record, clean, get_judge
from noisypref.cleaning.score_margin import SCORE_MARGIN_JUDGE, warn_if_scores_reveal_labels
from noisypref.methods import build
from noisypref.noise_injection import FlipRecord

logger = logging.getLogger(__name__)

# Bump when a change here or in a judge changes the record a given run gets: old cache entries are ignored.
CLEANING_FORMAT_VERSION = 1
CACHE_FOLDER = "cleaning"
# Training settings a judge's own DPO runs do not read (the judge sets the steps itself).
JUDGE_IGNORED_TRAINING = ("steps", "log_every", "checkpoint_every", "save_model", "nan_policy", "seed")


class EnginePairModels:
    """`noisypref.cleaning.PairModels` on a run's reference model and the token ids of its noisy pairs.

    ``policy`` must still be the reference model (untrained); ``location`` loads fresh copies of it for
    the judges' short DPO runs, which take the run's training settings but for the number of steps."""

    def __init__(
        self,
        config: RunConfig,
        location: str,
        tokens: TokenizedPairs,
        policy: PreTrainedModel,
        model_identity: str,
        pad_token_id: int,
        cache_dir: Path,
        device: torch.device,
    ) -> None:
        self.config = config
        self.location = location
        self.tokens = tokens
        self.policy = policy
        self.model_identity = model_identity
        self.pad_token_id = pad_token_id
        self.cache_dir = cache_dir
        self.device = device
        self._reference: ReferenceLogps | None = None

    def _reference_logps(self) -> ReferenceLogps:
        if self._reference is None:  # the run's own cache file: shared with every run on this data and model
            self._reference = reference_logps(
                self.policy, self.tokens, model_identity=self.model_identity, cache_dir=self.cache_dir,
                pad_token_id=self.pad_token_id,
            )  # fmt: skip
        return self._reference

    def reference_logps(self) -> ResponseLogps:
        rows = torch.arange(len(self.tokens))
        chosen, rejected = self._reference_logps().chosen_and_rejected(self.tokens, rows)
        lengths = [(len(c), len(r)) for c, r in (self.tokens.chosen_and_rejected(i) for i in range(len(self.tokens)))]
        chosen_length, rejected_length = (np.array(values, dtype=np.float64) for values in zip(*lengths, strict=True))
        return ResponseLogps(chosen.double().numpy(), rejected.double().numpy(), chosen_length, rejected_length)

    def trained_reward_gaps(
        self, train_rows: np.ndarray, score_rows: np.ndarray, *, steps: int, beta: float, seed: int
    ) -> np.ndarray:
        train_rows, score_rows = np.asarray(train_rows, dtype=np.int64), np.asarray(score_rows, dtype=np.int64)
        training = {
            key: value for key, value in dataclasses.asdict(self.config.training).items()
            if key not in JUDGE_IGNORED_TRAINING
        }  # fmt: skip
        identity = [
            CLEANING_FORMAT_VERSION, self.model_identity, self.tokens.content_key, _labels_key(self.tokens),
            _rows_key(train_rows), _rows_key(score_rows), steps, beta, seed, training,
            json.dumps(dataclasses.asdict(self.config.model.lora)) if self.config.model.lora else None,
        ]  # fmt: skip
        key = hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()[:32]
        path = self.cache_dir / CACHE_FOLDER / f"dpo-gaps-{key}.pt"
        description = f"DPO reward gaps of {len(score_rows)} pairs after {steps} steps on {len(train_rows)}"
        stored = cached_torch_file(path, lambda: self._train_and_score(train_rows, score_rows, steps, beta, seed), description)
        return stored["reward_gap"].double().numpy()

    def _train_and_score(
        self, train_rows: np.ndarray, score_rows: np.ndarray, steps: int, beta: float, seed: int
    ) -> dict:
        config = self.config
        model, _ = load_configured_model(self.location, config.model, self.device)
        if config.model.lora is not None:
            torch.manual_seed(seed)
            apply_lora(model, config.model.lora)
        method = build("dpo", seed=seed, beta=beta)
        reference = self._reference_logps()
        settings = dataclasses.replace(config.training, steps=steps, checkpoint_every=0, save_model=False, log_every=steps)
        train(
            model, method, select_pairs(self.tokens, train_rows), settings,
            reference=select_reference(reference, train_rows), pad_token_id=self.pad_token_id, seed=seed,
            device=self.device.type, gradient_checkpointing=config.model.gradient_checkpointing,
        )  # fmt: skip
        score_tokens = select_pairs(self.tokens, score_rows)
        outputs = method_outputs(
            model, method, score_tokens, select_reference(reference, score_rows), self.pad_token_id,
            settings.batch_size // settings.gradient_accumulation,
        )  # fmt: skip
        return {"pair_ids": score_tokens.pair_ids, "reward_gap": torch.from_numpy(outputs["reward_gap"])}


def select_pairs(tokens: TokenizedPairs, rows: np.ndarray) -> TokenizedPairs:
    """The pairs ``rows`` of ``tokens``, with a content key of their own (for the caches keyed by it)."""
    rows = [int(row) for row in rows]
    content_key = hashlib.sha256(json.dumps([tokens.content_key, rows]).encode("utf-8")).hexdigest()
    return TokenizedPairs(
        pair_ids=[tokens.pair_ids[row] for row in rows],
        prompt_ids=[tokens.prompt_ids[row] for row in rows],
        response_a_ids=[tokens.response_a_ids[row] for row in rows],
        response_b_ids=[tokens.response_b_ids[row] for row in rows],
        chosen_is_a=tokens.chosen_is_a[torch.tensor(rows, dtype=torch.long)],
        content_key=content_key,
    )


def select_reference(reference: ReferenceLogps, rows: np.ndarray) -> ReferenceLogps:
    index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    return ReferenceLogps(reference.logp_a[index], reference.logp_b[index])


def _labels_key(tokens: TokenizedPairs) -> str:
    return hashlib.sha256(tokens.chosen_is_a.numpy().astype(np.uint8).tobytes()).hexdigest()


def _rows_key(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()


def check_score_columns(config: RunConfig, train_pairs: datasets.Dataset) -> None:
    """Before noise injection: warn where a ``score_margin`` judge of the run (alone or in an ensemble) reads
    score columns that order the labels as the labels do (they would reveal the flips)."""
    for judge, options in config.cleaning.judges if config.cleaning is not None else ():
        if judge == SCORE_MARGIN_JUDGE:
            warn_if_scores_reveal_labels(train_pairs, get_judge(judge).make_options(options))


def clean_training_pairs(
    config: RunConfig,
    noisy_pairs: datasets.Dataset,
    flips: FlipRecord,
    models: EnginePairModels,
    cache_dir: Path,
) -> tuple[datasets.Dataset, CleaningRecord]:
    """The run's noisy training pairs cleaned by its ``cleaning`` section's judge, and the judge's record
    (built once per cleaning key in ``cache_dir/cleaning/``, read from there by every other run)."""
    settings = config.cleaning
    judge = get_judge(settings.judge)
    if settings.needs_models and distributed.world_size() > 1:
        raise ValueError(
            f"cleaning.judge = {settings.judge!r} trains or runs a model, which a multi-process launch cannot do "
            "inside one process's data preparation; build the cleaned data once in a single process (the same "
            "study with one worker and no torchrun), then the multi-process runs read it from the cache"
        )
    # The one marked place where the flip record meets data preparation: for the oracle judge only.
    is_flipped = flips.table["is_flipped"].to_numpy(dtype=bool) if judge.reads_flip_record else None
    identity = [
        CLEANING_FORMAT_VERSION, settings.run_dict(), config.seed, models.tokens.content_key, _labels_key(models.tokens),
        models.model_identity if settings.needs_models else None,
        None if is_flipped is None else _rows_key(np.flatnonzero(is_flipped)), flips.realised_rate,
        {key: value for key, value in dataclasses.asdict(config.training).items() if key not in JUDGE_IGNORED_TRAINING},
    ]  # fmt: skip
    key = hashlib.sha256(json.dumps(identity, default=str).encode("utf-8")).hexdigest()[:32]
    folder = cache_dir / CACHE_FOLDER / f"record-{key}"

    def build_record(staging: Path) -> None:
        with phase(f"cleaning {len(noisy_pairs)} pairs with the {settings.judge} judge"):
            _, record = clean(
                noisy_pairs, settings.judge, seed=config.seed, options=settings.options, treatment=settings.treatment,
                budget=settings.budget, models=models, is_flipped=is_flipped, known_flip_rate=flips.realised_rate,
            )  # fmt: skip
        record.write(staging)

    build_once(folder, build_record)
    record = CleaningRecord.read(folder)
    cleaned = apply_record(noisy_pairs, record)
    logger.info(
        "cleaning %s: flagged %d of %d training pairs, %s; %d pairs left",
        settings.display_label, record.num_flagged, record.num_pairs,
        "removed" if record.treatment == "remove" else "labels swapped", record.num_left,
    )  # fmt: skip
    return cleaned, record
