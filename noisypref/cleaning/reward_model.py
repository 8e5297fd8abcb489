"""A reward model's score gap: the pairs whose rejected response it rewards more are suspect.

Two sources:

- ``model: null`` (the default): cross-fitted on the noisy pairs themselves. The pairs are split into
  ``folds`` folds (balanced, by a keyed draw per pair_id); for each fold a policy is trained with DPO from
  the reference model on the other folds, and the held-out fold is scored by its implicit reward gap
  h = β[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] (Rafailov et al. 2023, §5: DPO's
  policy is a reward model). No pair is judged by a model that saw it (cross-fitting as in
  Chernozhukov et al. 2018, "Double/debiased machine learning").
- ``model: PATH``: a local Hugging Face sequence-classification reward model (one logit per sequence, e.g.
  a Skywork or ArmoRM-style checkpoint saved with ``save_pretrained``), scoring prompt + response as its
  chat template lays them out. It never trained on these pairs, as far as anyone here knows.

Suspicion = −(reward of chosen − reward of rejected).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisypref.checks import check_integer, check_positive, option_field
from noisypref.cleaning.base import JudgeInputs, JudgeOptions, JudgeScores, register_judge
from noisypref.cleaning.estimate import anchor_flip_rate
from noisypref.sampling import keyed_uniforms

FOLD_STREAM = "reward_model_folds"


@dataclass(frozen=True)
class RewardModelOptions(JudgeOptions):
    folds: int = option_field(4, "cross-fitting folds: each fold is scored by a model trained on the others")
    steps: int = option_field(
        32, "optimizer steps of each fold's DPO run (batch size and learning rate: the run's)"
    )
    beta: float = option_field(0.1, "β of each fold's DPO run (its implicit reward is the score)")
    model: str | None = option_field(
        None,
        "a local Hugging Face sequence-classification reward model folder to score with instead (no training)",
    )
    batch_size: int = option_field(8, "pairs per forward pass of a reward-model folder")
    max_length: int = option_field(
        1024, "tokens of prompt + response a reward-model folder reads (longer: cut)"
    )

    def __post_init__(self) -> None:
        check_integer("folds", self.folds, minimum=2)
        check_integer("steps", self.steps, minimum=1)
        check_positive("beta", self.beta)
        check_integer("batch_size", self.batch_size, minimum=1)
        check_integer("max_length", self.max_length, minimum=2)
        if self.model is not None and not (isinstance(self.model, str) and self.model):
            raise ValueError(
                f"option model={self.model!r} must be null or the path of a local reward-model folder"
            )

    @property
    def needs_models(self) -> bool:
        return self.model is None


def fold_of_each_pair(pair_ids: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold 0..folds−1 of each pair: pairs ranked by a keyed draw, dealt out in turn (sizes differ by ≤ 1;
    a pair's fold depends on the set of pairs, never on their row order)."""
    draws = keyed_uniforms(pair_ids, seed, FOLD_STREAM)
    ranks = np.argsort(np.argsort(draws, kind="stable"), kind="stable")
    return ranks % folds


@register_judge(
    "reward_model",
    options=RewardModelOptions,
    description="reward gap chosen - rejected of a cross-fitted DPO reward model (k folds), or of a local "
    "sequence-classification reward model; suspicion = minus the gap",
    source="PrefCleanBench's reward-model family (NeurIPS 2025); DPO's implicit reward (Rafailov et al. 2023)",
)
def score_by_reward_model(inputs: JudgeInputs, options: RewardModelOptions) -> JudgeScores:
    if options.model is not None:
        margins = reward_model_folder_margins(inputs, options)
    else:
        models = inputs.require_models("reward_model")
        fold = fold_of_each_pair(inputs.pairs.pair_ids, options.folds, inputs.seed)
        margins = np.empty(len(inputs.pairs), dtype=np.float64)
        for held_out in range(options.folds):
            score_rows = np.flatnonzero(fold == held_out)
            if not len(score_rows):
                continue
            train_rows = np.flatnonzero(fold != held_out)
            margins[score_rows] = models.trained_reward_gaps(
                train_rows, score_rows, steps=options.steps, beta=options.beta, seed=inputs.seed
            )
    return JudgeScores(-margins, anchor_flip_rate(margins))


def reward_model_folder_margins(inputs: JudgeInputs, options: RewardModelOptions) -> np.ndarray:
    """reward(prompt, chosen) − reward(prompt, rejected) by the sequence-classification model at ``options.model``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(options.model)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"judge 'reward_model': model={options.model!r} is not a local model folder (no config.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    prompts = inputs.pairs.column("prompt")

    def rewards(responses: list[Any]) -> np.ndarray:
        texts = [
            conversation_text(tokenizer, prompt, response)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        values = []
        with torch.no_grad():
            for start in range(0, len(texts), options.batch_size):
                batch = tokenizer(texts[start : start + options.batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=options.max_length, add_special_tokens=False)  # fmt: skip
                logits = model(**batch.to(device)).logits
                values.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(values).astype(np.float64)

    return rewards(inputs.pairs.column("chosen")) - rewards(inputs.pairs.column("rejected"))


def conversation_text(tokenizer: Any, prompt: Any, response: Any) -> str:
    """Prompt and response as one text, in the tokenizer's chat template where it has one."""
    messages = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + (
        response if isinstance(response, list) else [{"role": "assistant", "content": response}]
    )
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    bos = tokenizer.bos_token or ""
    return bos + "\n".join(str(message["content"]) for message in messages)
