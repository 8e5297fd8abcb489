"""AlpacaEval 2's judges: the package's API annotators and local judges.

``run_api_judge`` wires ``alpaca_eval.evaluate`` (an API annotator such as
``weighted_alpaca_eval_gpt4_turbo``; needs a key), ``annotate_pairs`` runs a local judge, any callable
``(instruction, output_1, output_2) -> preference in [1, 2]``. ``RewardJudge`` is one, built on a
reward function: the testbed's gold reward (``RewardJudge.from_gold_reward``) or a Hugging Face
reward model (``HFRewardModel``). A new local judge is such a callable (or a reward function for
``RewardJudge``); ``evaluation.benchmarks.alpaca_eval.judge`` names the kinds a study can configure
(`noisypref.benchmark.config.benchmarks`), ``chat_benchmarks.run_alpaca_eval`` builds the one named.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from noisypref.benchmark.config.benchmarks import ALPACA_EVAL_DEFAULT_ANNOTATOR
from noisypref.benchmark.data.hub import hub_lookup, looks_like_hub_id

BASELINE_GENERATOR = "gpt4_1106_preview"
API_KEY_VARIABLES = ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH")


class PairJudge(Protocol):
    def __call__(self, instruction: str, output_1: str, output_2: str) -> float:
        """Preference in [1, 2]: 1 if ``output_1`` (the baseline) is better, 2 if ``output_2`` is."""


RewardFunction = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class RewardJudge:
    """A judge from a reward function ``(prompts, responses) -> rewards`` (batched).

    With ``temperature=None`` the higher reward wins (preference 1 or 2; equal rewards 1.5). With a
    temperature T the preference is Bradley–Terry, ``1 + σ((r_2 − r_1) / T)``: a weighted judgement
    like AlpacaEval 2's weighted GPT-4 judge.
    """

    def __init__(
        self, reward: RewardFunction, name: str = "reward_judge", temperature: float | None = None
    ) -> None:
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 or None, got {temperature}")
        self.reward = reward
        self.name = name
        self.temperature = temperature

    @classmethod
    def from_gold_reward(cls, gold_reward: Callable[[str, str], float], **kwargs: Any) -> RewardJudge:
        """A judge on the testbed's gold reward (``noisypref.benchmark.testbed.GoldReward``)."""

        def reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
            return [
                gold_reward(prompt, response) for prompt, response in zip(prompts, responses, strict=True)
            ]

        return cls(reward, **{"name": "gold_reward", **kwargs})

    def __call__(self, instruction: str, output_1: str, output_2: str) -> float:
        return self.preferences([instruction], [output_1], [output_2])[0]

    def preferences(
        self, instructions: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str]
    ) -> list[float]:
        rewards_1 = np.asarray(self.reward(instructions, outputs_1), dtype=float)
        rewards_2 = np.asarray(self.reward(instructions, outputs_2), dtype=float)
        reward_gap = rewards_2 - rewards_1
        if self.temperature is None:
            return (1.5 + 0.5 * np.sign(reward_gap)).tolist()
        return (1.0 + 1.0 / (1.0 + np.exp(-reward_gap / self.temperature))).tolist()


class HFRewardModel:
    """Rewards from a Hugging Face sequence-classification reward model (first logit).

    The (prompt, response) pair is formatted with the tokenizer's chat template as a user turn and an
    assistant turn; a tokenizer without one gets ``prompt + "\\n\\n" + response``.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        max_length: int = 4096,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from noisypref.benchmark.engine.models import default_device

        self.device = torch.device(device or default_device())
        torch_dtype = (
            (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
            if dtype == "auto"
            else getattr(torch, dtype)
        )
        with hub_lookup("reward model", str(name_or_path)) if looks_like_hub_id(str(name_or_path)) else contextlib.nullcontext():
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = (
                AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch_dtype)
                .to(self.device)
                .eval()
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = Path(str(name_or_path)).name

    def format(self, prompt: str, response: str) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n\n{response}"

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch

        texts = [self.format(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
        rewards: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=not self.tokenizer.chat_template,
                    return_tensors="pt",
                ).to(self.device)
                rewards.extend(self.model(**batch).logits[:, 0].float().cpu().tolist())
        return rewards


def annotate_pairs(
    reference_outputs: Sequence[dict[str, Any]],
    model_outputs: Sequence[dict[str, Any]],
    judge: PairJudge,
    annotator: str | None = None,
) -> list[dict[str, Any]]:
    """Annotations in AlpacaEval's format (``output_1`` the reference) by a local judge.

    Both lists are in AlpacaEval's model-output format and must hold the same instructions in the
    same order.
    """
    if len(reference_outputs) != len(model_outputs):
        raise ValueError(f"{len(reference_outputs)} reference outputs but {len(model_outputs)} model outputs")
    for position, (reference, model) in enumerate(zip(reference_outputs, model_outputs, strict=True)):
        if reference["instruction"] != model["instruction"]:
            raise ValueError(f"instruction {position} differs between the reference and the model outputs")
    instructions = [row["instruction"] for row in model_outputs]
    outputs_1 = [row["output"] for row in reference_outputs]
    outputs_2 = [row["output"] for row in model_outputs]
    if isinstance(judge, RewardJudge):
        preferences = judge.preferences(instructions, outputs_1, outputs_2)
    else:
        preferences = [judge(*triple) for triple in zip(instructions, outputs_1, outputs_2, strict=True)]
    annotator = annotator or getattr(judge, "name", type(judge).__name__)
    annotations = []
    for reference, model, preference in zip(reference_outputs, model_outputs, preferences, strict=True):
        if not 1.0 <= preference <= 2.0:
            raise ValueError(f"judge returned preference {preference}; AlpacaEval needs a value in [1, 2]")
        annotations.append(
            {
                "instruction": model["instruction"],
                "output_1": reference["output"],
                "generator_1": reference.get("generator", BASELINE_GENERATOR),
                "output_2": model["output"],
                "generator_2": model["generator"],
                "dataset": model.get("dataset", reference.get("dataset")),
                "annotator": annotator,
                "preference": float(preference),
            }
        )
    return annotations


def api_key_configured() -> bool:
    """Whether an OpenAI key (what AlpacaEval 2's default annotator needs) is configured for alpaca-eval."""
    return any(os.environ.get(name) for name in API_KEY_VARIABLES)


def run_api_judge(
    model_outputs: str | os.PathLike | Sequence[dict[str, Any]],
    reference_outputs: str | os.PathLike | Sequence[dict[str, Any]],
    output_dir: str | os.PathLike,
    annotator: str = ALPACA_EVAL_DEFAULT_ANNOTATOR,
    **evaluate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Annotate through ``alpaca_eval.evaluate`` with an API annotator (this costs API calls).

    The package writes its ``annotations.json`` and ``leaderboard.csv`` under ``output_dir``; the
    annotations are returned for ``score_annotations``. Metrics inside the package are limited to
    ``get_winrate`` so that nothing writes GLM weights into the installed package.
    """
    from alpaca_eval import evaluate

    if not api_key_configured() and "client_config_path" not in evaluate_kwargs:
        raise RuntimeError(f"no API key: set one of {', '.join(API_KEY_VARIABLES)} or use a local judge")
    if not isinstance(model_outputs, (str, os.PathLike)):
        model_outputs = pd.DataFrame(list(model_outputs))
    if not isinstance(reference_outputs, (str, os.PathLike)):
        reference_outputs = pd.DataFrame(list(reference_outputs))
    _, annotations = evaluate(
        model_outputs=model_outputs,
        reference_outputs=reference_outputs,
        annotators_config=annotator,
        output_path=str(output_dir),
        precomputed_leaderboard=None,
        is_return_instead_of_print=True,
        fn_metric="get_winrate",
        **evaluate_kwargs,
    )
    # Through JSON so that missing values (a failed annotation) become None, not NaN.
    return json.loads(pd.DataFrame(annotations).to_json(orient="records"))
