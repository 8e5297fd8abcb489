"""AlpacaEval 2: the 805 prompts, model-output files, judging, and scoring with the package's metrics.

Files follow the ``alpaca_eval`` package's formats exactly, so they can go to its CLI unchanged:

* model outputs (``model_outputs.json``): a list of ``{instruction, output, generator, dataset}`` in
  the order of the evaluation set;
* annotations (``annotations.json``): a list of ``{instruction, output_1, generator_1, output_2,
  generator_2, dataset, annotator, preference}``, ``output_1`` the baseline, ``preference`` in
  [1, 2] (1: the baseline wins, 2: the model wins, 1.5: a tie).

Scoring calls ``alpaca_eval.metrics.get_winrate`` (the leaderboard's ``win_rate`` and
``standard_error``) and a length-controlled win rate in one of two variants, always named in the result:

* ``official`` — ``alpaca_eval.metrics.get_length_controlled_winrate`` (GLM ``length_controlled_v1``).
  It downloads ``df_gamed.csv`` (per-instruction difficulty and the annotations of two "gamed"
  baselines) from the hub dataset ``tatsu-lab/alpaca_eval``; it needs the annotations in the order of
  the 805-prompt set, since it matches instruction difficulty by row position.
* ``offline-glm`` — the package's ``length_controlled_minimal`` formula
  (``tanh(std_delta_len) + intercept``) fitted by the package's own ``fit_LogisticRegressionCV``, on
  these annotations alone: no instruction-difficulty term and no regularisation towards the gamed
  baselines, so it needs nothing from the hub. It is NOT the leaderboard's number and can be far from
  it (alpaca-7b: 19.55 offline, 5.88 on the leaderboard; see docs/benchmarks.md). Its prediction is
  one number for every instruction, so it has no standard error (``lc_standard_error`` is None).

``lc_variant="auto"`` tries ``official`` and falls back to ``offline-glm`` with a warning and the
reason in the result's ``lc_note``.

Judging: ``run_api_judge`` wires ``alpaca_eval.evaluate`` (an API annotator such as
``weighted_alpaca_eval_gpt4_turbo``; needs a key), ``annotate_pairs`` runs a local judge, any callable
``(instruction, output_1, output_2) -> preference in [1, 2]``. ``RewardJudge`` is one, built on a
reward function: the testbed's gold reward (``RewardJudge.from_gold_reward``) or a Hugging Face
reward model (``HFRewardModel``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from noisypref.benchmark.config.benchmarks import (
    ALPACA_EVAL_DEFAULT_ANNOTATOR,
    ALPACA_EVAL_HUB_DATASET,
    LC_VARIANTS,
)
from noisypref.benchmark.data.hub import HubUnavailable, hub_lookup, looks_like_hub_id
from noisypref.benchmark.storage import write_json_atomic

logger = logging.getLogger(__name__)

HUB_CONFIG = "alpaca_eval_gpt4_baseline"
# The hub dataset is built by a loading script that maps each config to a json file at the repository
# root; datasets >= 4 no longer runs loading scripts, so the file is read directly.
HUB_CONFIG_FILE = f"hf://datasets/{ALPACA_EVAL_HUB_DATASET}/{HUB_CONFIG}.json"
BASELINE_GENERATOR = "gpt4_1106_preview"
NUM_PROMPTS = 805

LengthControlVariant = Literal["auto", "official", "offline-glm"]
API_KEY_VARIABLES = ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH")


# ---------------------------------------------------------------------------------------------- data


def read_json_records(path: Path, lines: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON array file (or a JSON-lines file), either gzip-compressed or not; malformed
    JSON raises ``ValueError`` naming the file, the line and the column."""
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise ValueError(
            f"{path}: cannot be read as UTF-8 JSON text ({error}); expected a .json array or .jsonl lines, "
            "plain or gzip-compressed"
        ) from None
    if lines:
        records = [
            _parse_json(line, path, number)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
    else:
        records = _parse_json(text, path)
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{path}: expected a JSON array of objects (one record per instruction)")
    return records


def _parse_json(text: str, path: Path, line_number: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = line_number or error.lineno
        raise ValueError(f"{path}: not valid JSON at line {line}, column {error.colno}: {error.msg}") from None


def load_eval_set(source: str | os.PathLike = ALPACA_EVAL_HUB_DATASET) -> list[dict[str, Any]]:
    """The evaluation set as records ``{instruction, output, generator, dataset}`` (``output`` is the
    baseline's reference answer), in the benchmark's order.

    ``source`` is the hub dataset id (config ``alpaca_eval_gpt4_baseline``) or a local json / jsonl
    file in the same layout, e.g. the package's ``results/gpt4_1106_preview/model_outputs.json``.
    """
    path = Path(source)
    if path.is_file():
        records = read_json_records(path, lines=path.suffix != ".json")
    elif str(source) == ALPACA_EVAL_HUB_DATASET:
        import datasets

        with hub_lookup("hub dataset", ALPACA_EVAL_HUB_DATASET):
            records = datasets.load_dataset("json", data_files=HUB_CONFIG_FILE, split="train").to_list()
    else:
        raise FileNotFoundError(f"{source} is neither a file nor the hub dataset {ALPACA_EVAL_HUB_DATASET!r}")
    missing = [key for key in ("instruction", "dataset") if records and key not in records[0]]
    if missing:
        raise ValueError(
            f"{source}: records lack {missing}; expected AlpacaEval's instruction/dataset layout"
        )
    return records


def model_output_records(
    eval_set: Sequence[dict[str, Any]], outputs: Sequence[str], generator: str
) -> list[dict[str, str]]:
    if len(outputs) != len(eval_set):
        raise ValueError(f"{len(outputs)} outputs for {len(eval_set)} instructions")
    return [
        {
            "instruction": row["instruction"],
            "output": output,
            "generator": generator,
            "dataset": row["dataset"],
        }
        for row, output in zip(eval_set, outputs, strict=True)
    ]


def write_model_outputs(
    path: str | os.PathLike, eval_set: Sequence[dict[str, Any]], outputs: Sequence[str], generator: str
) -> Path:
    """Write ``model_outputs.json`` in AlpacaEval's format, same order as ``eval_set``."""
    path = Path(path)
    write_json_atomic(path, model_output_records(eval_set, outputs, generator))
    return path


# ------------------------------------------------------------------------------------------ judging


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


# ------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class AlpacaEvalScore:
    """Win rates in percent, as on the AlpacaEval leaderboard."""

    model: str
    baseline: str
    annotator: str | None
    win_rate: float
    standard_error: float
    discrete_win_rate: float
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    length_controlled_winrate: float | None  # None when the GLM cannot be fitted (too few annotations)
    lc_standard_error: float | None  # None for offline-glm (see the module docstring)
    lc_variant: str  # "official" | "offline-glm"
    lc_note: str
    avg_length: int
    n_dropped_null: int = 0  # annotations with a null preference (failed judgements), left out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_annotations(source: str | os.PathLike | Sequence[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, (str, os.PathLike)):
        lines = Path(source).name.endswith((".jsonl", ".jsonl.gz"))
        return pd.DataFrame(read_json_records(Path(source), lines=lines))
    return pd.DataFrame(list(source))


def check_preferences(annotations: pd.DataFrame, source: str) -> None:
    """Refuse a ``preference`` that is neither null, 0 (a tie, as alpaca-eval reads it) nor in [1, 2],
    naming the rows (0-based, in the file's order) and their values."""
    if "preference" not in annotations.columns:
        return  # select_pair names the missing column
    values = pd.to_numeric(annotations["preference"], errors="coerce")
    given = annotations["preference"].notna()
    bad = given & ~((values == 0) | values.between(1, 2))
    if bad.any():
        given_values = annotations["preference"].tolist()
        rows = [f"row {row}: {given_values[row]!r}" for row in np.flatnonzero(bad)[:5]]
        raise ValueError(
            f"{source}: {int(bad.sum())} annotation(s) have a preference outside AlpacaEval's range "
            f"({'; '.join(rows)}{'; ...' if bad.sum() > 5 else ''}); allowed: a number in [1, 2] (1: "
            "output_1 wins, 2: output_2 wins), 0 for a tie, or null for a failed annotation"
        )


def select_pair(annotations: pd.DataFrame, model: str | None, baseline: str | None) -> pd.DataFrame:
    """The annotations of one model against one baseline (names default to the only ones present)."""
    for column in ("preference", "output_1", "output_2", "generator_1", "generator_2"):
        if column not in annotations.columns:
            raise ValueError(
                f"annotations lack the column {column!r}; expected AlpacaEval's annotation format"
            )
    for column, name, role in (("generator_2", model, "model"), ("generator_1", baseline, "baseline")):
        present = sorted(annotations[column].astype(str).unique())
        if name is None:
            if len(present) != 1:
                raise ValueError(f"annotations hold several {role}s {present}; name one with --{role}")
            continue
        if name not in present:
            raise ValueError(f"{role} {name!r} is not in the annotations ({column}: {present})")
        annotations = annotations[annotations[column] == name]
    return annotations.reset_index(drop=True)


def offline_length_controlled_winrate(annotations: pd.DataFrame) -> dict[str, float | None]:
    """The ``offline-glm`` variant (module docstring) of an annotations table, in percent."""
    # Dubois et al. 2024 (AlpacaEval LC), as in the package: preference in [0, 1], 0 read as a tie.
    model_wins = annotations["preference"].astype(float).replace({0.0: 1.5}) - 1
    delta_length = annotations["output_1"].str.len() - annotations["output_2"].str.len()
    known = model_wins.notna().to_numpy()
    try:
        rate = length_controlled_minimal_winrate(model_wins.to_numpy()[known], delta_length.to_numpy()[known])
    except NothingToFit as reason:
        logger.warning("no length-controlled win rate: %s", reason)
        rate = None
    # Every test row has the same features, so every prediction is the same: no spread to take a
    # standard error of (the package's formula would give 0).
    return {"length_controlled_winrate": None if rate is None else rate * 100, "lc_standard_error": None}


class NothingToFit(ValueError):
    """The length-controlled GLM has nothing to fit: its win rate would be a bare 0.5 (the reason says why)."""


def length_controlled_minimal_winrate(model_wins: np.ndarray, baseline_minus_model_length: np.ndarray) -> float:
    """The model's win rate against the baseline at equal length, in [0, 1]: the package's
    ``length_controlled_minimal`` GLM (``tanh(std_delta_len) + not_gamed_baseline``), featurised as in
    ``alpaca_eval.metrics.glm_winrate._get_featurized_data`` minus the hub data, fitted with the
    package's ``fit_LogisticRegressionCV``, predicted at equal lengths. ``model_wins`` holds 1, 0 or
    0.5 (a tie) per comparison, lengths are in characters. Raises ``NothingToFit`` where the lengths
    do not vary (fewer than two comparisons, or all length differences equal: no length effect to
    remove) or where the cross-validated L1 penalty shrinks every coefficient to 0: the answer would
    be a bare 0.5, not a length-controlled rate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alpaca_eval imports the deprecated pkg_resources
        from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    delta_length = np.asarray(baseline_minus_model_length, dtype=np.float64)
    spread = delta_length.std(ddof=1) if delta_length.size > 1 else 0.0
    if not spread > 0:
        raise NothingToFit(
            f"the length differences of the {delta_length.size} comparisons do not vary, so there is no "
            "length effect to control for"
        )
    glm = GLM_INFO["length_controlled_minimal"]
    features = pd.DataFrame(
        {
            "preference": np.asarray(model_wins, dtype=np.float64),
            "std_delta_len": delta_length / spread,
            "not_gamed_baseline": True,
        }
    )
    at_equal_length = features[["not_gamed_baseline"]].assign(std_delta_len=0.0)
    train, test = make_dmatrix_for_model(features, at_equal_length, formula=glm["formula"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn deprecation and convergence chatter
        model = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, **glm["kwargs"])
    if not np.any(model.coef_):
        raise NothingToFit(
            f"the length-controlled GLM fitted no coefficient on {len(train)} comparisons (its cross-validated "
            "L1 penalty shrank every one to 0), so its 0.5 says nothing about the policy"
        )
    return float(model.predict_proba(test)[:, 1].mean())


def official_length_controlled_winrate(annotations: pd.DataFrame) -> dict[str, float]:
    """``alpaca_eval.metrics.get_length_controlled_winrate`` (downloads ``df_gamed.csv`` from the hub)."""
    from alpaca_eval.metrics import get_length_controlled_winrate

    if len(annotations) != NUM_PROMPTS:
        logger.warning(
            "the official LC GLM matches instruction difficulty by row position; %d annotations are not "
            "the %d-prompt set in order",
            len(annotations),
            NUM_PROMPTS,
        )
    with hub_lookup("df_gamed.csv of the hub dataset", ALPACA_EVAL_HUB_DATASET):
        metrics = get_length_controlled_winrate(
            annotations, save_weights_dir=None, is_add_glm_preference_inplace=False
        )
    return {
        "length_controlled_winrate": float(metrics["length_controlled_winrate"]),
        "lc_standard_error": float(metrics["lc_standard_error"]),
    }


def score_annotations(
    annotations: str | os.PathLike | Sequence[dict[str, Any]] | pd.DataFrame,
    model: str | None = None,
    baseline: str | None = None,
    lc_variant: LengthControlVariant = "auto",
) -> AlpacaEvalScore:
    """Win rate, its standard error and a length-controlled win rate of ``model`` against ``baseline``."""
    from alpaca_eval.metrics import get_winrate

    if lc_variant not in LC_VARIANTS:
        raise ValueError(f"lc_variant must be 'auto', 'official' or 'offline-glm', got {lc_variant!r}")
    loaded = load_annotations(annotations)
    source = str(annotations) if isinstance(annotations, (str, os.PathLike)) else "annotations"
    if loaded.empty:
        raise ValueError(f"{source}: no annotations to score")
    check_preferences(loaded, source)
    pair = select_pair(loaded, model, baseline)
    pair["preference"] = pair["preference"].astype(float)
    dropped_null = int(pair["preference"].isna().sum())
    if dropped_null:
        logger.warning("%s: %d annotation(s) have a null preference and are left out", source, dropped_null)
        pair = pair[pair["preference"].notna()].reset_index(drop=True)
        if pair.empty:
            raise ValueError(f"{source}: every annotation of this model has a null preference")
    head_to_head = get_winrate(pair)

    note = ""
    length_controlled = None
    if lc_variant in ("auto", "official"):
        try:
            length_controlled = official_length_controlled_winrate(pair)
            used_variant = "official"
        except (OSError, HubUnavailable) as error:  # hub unreachable, offline mode, or file not cached
            if lc_variant == "official":
                raise
            note = (
                "the official LC GLM needs df_gamed.csv from the hub dataset tatsu-lab/alpaca_eval, which "
                f"could not be fetched ({type(error).__name__}); fell back to the offline GLM. "
            )
            logger.warning("%s", note.strip())
    if length_controlled is None:
        used_variant = "offline-glm"
        try:
            length_controlled = offline_length_controlled_winrate(pair)
            note += (
                "offline-glm: the package's length_controlled_minimal GLM fitted on these annotations alone "
                "(no instruction difficulty, no gamed-baseline regularisation); not comparable with the "
                "leaderboard's LC win rate"
            )
        except ValueError as error:  # e.g. fewer annotations than the GLM's 5 cross-validation folds
            length_controlled = {"length_controlled_winrate": None, "lc_standard_error": None}
            note += f"offline-glm: the GLM could not be fitted on {len(pair)} annotations ({error})"
            logger.warning("no length-controlled win rate: %s", note)

    annotator = str(pair["annotator"].iloc[0]) if "annotator" in pair.columns else None
    return AlpacaEvalScore(
        model=str(pair["generator_2"].iloc[0]),
        baseline=str(pair["generator_1"].iloc[0]),
        annotator=annotator,
        win_rate=float(head_to_head["win_rate"]),
        standard_error=float(head_to_head["standard_error"]),
        discrete_win_rate=float(head_to_head["discrete_win_rate"]),
        n_wins=int(head_to_head["n_wins"]),
        n_wins_base=int(head_to_head["n_wins_base"]),
        n_draws=int(head_to_head["n_draws"]),
        n_total=int(head_to_head["n_total"]),
        length_controlled_winrate=length_controlled["length_controlled_winrate"],
        lc_standard_error=length_controlled["lc_standard_error"],
        lc_variant=used_variant,
        lc_note=note,
        avg_length=int(pair["output_2"].str.len().mean()),
        n_dropped_null=dropped_null,
    )


def evaluate_outputs(
    model_outputs: Sequence[dict[str, Any]],
    reference_outputs: Sequence[dict[str, Any]],
    output_dir: str | os.PathLike,
    local_judge: PairJudge | None = None,
    use_api: bool | None = None,
    annotator: str = ALPACA_EVAL_DEFAULT_ANNOTATOR,
    lc_variant: LengthControlVariant = "auto",
) -> AlpacaEvalScore:
    """Judge model outputs against the reference and score them; writes ``model_outputs.json``,
    ``annotations.json`` and ``score.json`` under ``output_dir``.

    ``use_api=None`` uses the API annotator when a key is configured and ``local_judge`` otherwise.
    """
    output_dir = Path(output_dir)
    write_json_atomic(output_dir / "model_outputs.json", list(model_outputs))
    if use_api is None:
        use_api = api_key_configured()
    if use_api:
        logger.info("judging with the alpaca-eval annotator %s", annotator)
        annotations = run_api_judge(model_outputs, reference_outputs, output_dir / "alpaca_eval", annotator)
    elif local_judge is not None:
        logger.info(
            "judging with the local judge %s", getattr(local_judge, "name", type(local_judge).__name__)
        )
        annotations = annotate_pairs(reference_outputs, model_outputs, local_judge)
    else:
        raise ValueError(f"no judge: set one of {', '.join(API_KEY_VARIABLES)} or pass local_judge")
    write_json_atomic(output_dir / "annotations.json", annotations)
    score = score_annotations(annotations, lc_variant=lc_variant)
    write_json_atomic(output_dir / "score.json", score.to_dict())
    return score
