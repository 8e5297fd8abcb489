"""Benchmarks for real models inside a run: the ``evaluation.benchmarks`` section (off by default).

    benchmarks:
      alpaca_eval:                   # AlpacaEval 2: generate, judge against the baseline, score
        source: tatsu-lab/alpaca_eval            # hub id, or a local model_outputs.json-style file
        max_prompts: null                        # null: all 805 prompts
        judge: api:weighted_alpaca_eval_gpt4_turbo   # or reward_model:<local folder or hub id>
        temperature: 0.0             # 0: greedy
        top_p: 1.0
        max_new_tokens: 1024
        stop_token_ids: []           # beyond the tokenizer's and generation config's eos
        batch_size: 8
        lc_variant: auto             # auto | official | offline-glm (noisypref.benchmark.evaluation.alpaca_eval)
      arena_hard:                    # Arena-Hard v0.1: an answer file for arena-hard-auto's judge
        source: path/to/question.jsonl
        max_questions: null
        temperature: 0.0
        top_p: 1.0
        max_new_tokens: 4096
        stop_token_ids: []
        batch_size: 8

``parse_benchmarks`` validates a section (missing keys take the defaults above; ``arena_hard.source``
has none) and ``normalised_benchmarks`` gives it with every default filled in, as the run config
holds it. ``run_benchmarks`` runs them on a trained policy, writing into the run folder:

    alpaca_eval/generations.jsonl    resumable generations (noisypref.benchmark.evaluation.generation)
    alpaca_eval/model_outputs.json, annotations.json, score.json
    arena_hard/model_answer/<model_id>.jsonl   (model_id: noisypref-<run_id>)

and returns metrics for result.json: ``alpaca_eval_win_rate``, ``alpaca_eval_standard_error``,
``alpaca_eval_lc_win_rate`` (when it can be fitted), ``alpaca_eval_avg_length`` (characters),
``arena_hard_answer_tokens_mean`` (the judge runs outside noisypref).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.evaluation import alpaca_eval, arena_hard
from noisypref.benchmark.evaluation.generation import GenerationSettings, generate_responses

logger = logging.getLogger(__name__)

API_JUDGE = "api:"
REWARD_MODEL_JUDGE = "reward_model:"
LC_VARIANTS = ("auto", "official", "offline-glm")
BENCHMARK_NAMES = ("alpaca_eval", "arena_hard")


@dataclass(frozen=True)
class AlpacaEvalSettings:
    source: str = alpaca_eval.HUB_DATASET
    max_prompts: int | None = None
    judge: str = API_JUDGE + alpaca_eval.DEFAULT_API_ANNOTATOR
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    stop_token_ids: tuple[int, ...] = ()
    batch_size: int = 8
    lc_variant: str = "auto"

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.temperature, self.max_new_tokens, self.top_p, self.stop_token_ids)

    @property
    def uses_api(self) -> bool:
        return self.judge.startswith(API_JUDGE)

    @property
    def judge_target(self) -> str:
        """The annotator name (api) or the reward model (reward_model)."""
        return self.judge.split(":", 1)[1]


@dataclass(frozen=True)
class ArenaHardSettings:
    source: str
    max_questions: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    stop_token_ids: tuple[int, ...] = ()
    batch_size: int = 8

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.temperature, self.max_new_tokens, self.top_p, self.stop_token_ids)


@dataclass(frozen=True)
class Benchmarks:
    alpaca_eval: AlpacaEvalSettings | None = None
    arena_hard: ArenaHardSettings | None = None

    def __bool__(self) -> bool:
        return self.alpaca_eval is not None or self.arena_hard is not None

    def to_dict(self) -> dict[str, Any]:
        """Every default filled in; benchmarks that are off are left out (so ``{}`` means none)."""
        resolved = {}
        for name in BENCHMARK_NAMES:
            settings = getattr(self, name)
            if settings is not None:
                values = dataclasses.asdict(settings)
                values["stop_token_ids"] = list(values["stop_token_ids"])
                resolved[name] = values
        return resolved


# ---------------------------------------------------------------------------------------------
# Validation


def parse_benchmarks(values: Any, path: str = "evaluation.benchmarks") -> Benchmarks:
    """Validate a benchmarks section; ``ValueError`` names the field path, the value and what is allowed."""
    if values is None:
        return Benchmarks()
    if not isinstance(values, Mapping):
        raise ValueError(f"{path} = {values!r} is invalid: expected a mapping with keys {BENCHMARK_NAMES}")
    unknown = sorted(set(values) - set(BENCHMARK_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown benchmark(s) {unknown}; allowed: {', '.join(BENCHMARK_NAMES)}")
    alpaca = values.get("alpaca_eval")
    arena = values.get("arena_hard")
    return Benchmarks(
        alpaca_eval=None
        if alpaca is None
        else _parse_settings(AlpacaEvalSettings, alpaca, f"{path}.alpaca_eval"),
        arena_hard=None if arena is None else _parse_settings(ArenaHardSettings, arena, f"{path}.arena_hard"),
    )


def normalised_benchmarks(values: Any) -> dict[str, Any]:
    """The section as a run config holds it (every default filled in); ``ValueError`` if invalid."""
    return parse_benchmarks(values).to_dict()


def _parse_settings(settings_type: type, values: Any, path: str) -> Any:
    fields = {field.name: field for field in dataclasses.fields(settings_type)}
    if not isinstance(values, Mapping):
        raise ValueError(f"{path} = {values!r} is invalid: expected a mapping with keys {', '.join(fields)}")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed keys are {', '.join(fields)}")
    checked = {}
    for name, field in fields.items():
        if name not in values:
            if field.default is dataclasses.MISSING:
                raise ValueError(f"{path}.{name}: missing; it has no default")
            continue
        checked[name] = _check_value(name, values[name], f"{path}.{name}")
    return settings_type(**checked)


def _check_value(name: str, value: Any, path: str) -> Any:
    def invalid(expected: str) -> ValueError:
        return ValueError(f"{path} = {value!r} is invalid: expected {expected}")

    def is_integer(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    def is_number(item: Any) -> bool:
        return isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)

    if name == "source":
        if not (isinstance(value, str) and value.strip()):
            raise invalid("a local file path or, for alpaca_eval, the hub id 'tatsu-lab/alpaca_eval'")
        return value
    if name in ("max_prompts", "max_questions"):
        if value is not None and not (is_integer(value) and value >= 1):
            raise invalid("null (all) or an integer >= 1")
        return value
    if name == "judge":
        prefixes = (API_JUDGE, REWARD_MODEL_JUDGE)
        if not (isinstance(value, str) and value.startswith(prefixes) and value.split(":", 1)[1].strip()):
            raise invalid(
                "'api:<alpaca_eval annotator>' (e.g. api:weighted_alpaca_eval_gpt4_turbo, needs an API key) "
                "or 'reward_model:<local folder or hub id of a sequence-classification reward model>'"
            )
        return value
    if name == "temperature":
        if not (is_number(value) and value >= 0):
            raise invalid("a number >= 0 (0: greedy)")
        return float(value)
    if name == "top_p":
        if not (is_number(value) and 0 < value <= 1):
            raise invalid("a number in (0, 1]")
        return float(value)
    if name in ("max_new_tokens", "batch_size"):
        if not (is_integer(value) and value >= 1):
            raise invalid("an integer >= 1")
        return value
    if name == "stop_token_ids":
        if not (isinstance(value, list) and all(is_integer(item) and item >= 0 for item in value)):
            raise invalid("a list of token ids (integers >= 0)")
        return tuple(value)
    if name == "lc_variant":
        if value not in LC_VARIANTS:
            raise invalid(f"one of {', '.join(LC_VARIANTS)}")
        return value
    raise AssertionError(f"no check for {name}")


def check_runnable(benchmarks: Benchmarks) -> None:
    """Fail before training for what would only fail after it: a missing file or API key."""
    settings = benchmarks.alpaca_eval
    if settings is not None:
        if settings.source != alpaca_eval.HUB_DATASET and not Path(settings.source).is_file():
            raise FileNotFoundError(
                f"evaluation.benchmarks.alpaca_eval.source: no such file {settings.source}"
            )
        if settings.uses_api and not alpaca_eval.api_key_configured():
            raise RuntimeError(
                f"evaluation.benchmarks.alpaca_eval.judge = {settings.judge!r} needs an API key: set one of "
                f"{', '.join(alpaca_eval.API_KEY_VARIABLES)}, or use a judge 'reward_model:<path>'"
            )
    if benchmarks.arena_hard is not None and not Path(benchmarks.arena_hard.source).is_file():
        raise FileNotFoundError(
            f"evaluation.benchmarks.arena_hard.source: no such file {benchmarks.arena_hard.source}"
        )


# ---------------------------------------------------------------------------------------------
# Running


def run_benchmarks(
    benchmarks: Benchmarks,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    model_id: str,
    seed: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run the configured benchmarks on ``model``: (metrics for result.json, details with file paths)."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    if benchmarks.alpaca_eval is not None:
        score, files = run_alpaca_eval(
            benchmarks.alpaca_eval, model, tokenizer, output_dir / "alpaca_eval", model_id, seed
        )
        metrics.update(
            alpaca_eval_win_rate=score.win_rate,
            alpaca_eval_standard_error=score.standard_error,
            alpaca_eval_avg_length=float(score.avg_length),
        )
        if score.length_controlled_winrate is not None:
            metrics["alpaca_eval_lc_win_rate"] = score.length_controlled_winrate
        details["alpaca_eval"] = {**score.to_dict(), **files}
    if benchmarks.arena_hard is not None:
        answer_file, tokens_mean = run_arena_hard(
            benchmarks.arena_hard, model, tokenizer, output_dir / "arena_hard", model_id, seed
        )
        metrics["arena_hard_answer_tokens_mean"] = tokens_mean
        details["arena_hard"] = {"answer_file": str(answer_file), "model_id": model_id}
    return metrics, details


def run_alpaca_eval(
    settings: AlpacaEvalSettings,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    generator: str,
    seed: int,
) -> tuple[alpaca_eval.AlpacaEvalScore, dict[str, str]]:
    eval_set = alpaca_eval.load_eval_set(settings.source)[: settings.max_prompts]
    outputs = generate_responses(
        model,
        tokenizer,
        [row["instruction"] for row in eval_set],
        settings.generation(),
        output_path=output_dir / "generations.jsonl",
        batch_size=settings.batch_size,
        seed=seed,
    )
    local_judge = None
    if not settings.uses_api:
        reward_model = alpaca_eval.HFRewardModel(settings.judge_target, device=str(model.device))
        local_judge = alpaca_eval.RewardJudge(reward_model, name=f"reward_model:{reward_model.name}")
    score = alpaca_eval.evaluate_outputs(
        alpaca_eval.model_output_records(eval_set, outputs, generator=generator),
        reference_outputs=eval_set,
        output_dir=output_dir,
        local_judge=local_judge,
        use_api=settings.uses_api,
        annotator=settings.judge_target if settings.uses_api else alpaca_eval.DEFAULT_API_ANNOTATOR,
        lc_variant=settings.lc_variant,
    )
    logger.info(
        "AlpacaEval: win rate %.2f ± %.2f over %d prompts (judge %s)",
        score.win_rate,
        score.standard_error,
        score.n_total,
        settings.judge,
    )
    files = {name: str(output_dir / f"{name}.json") for name in ("model_outputs", "annotations", "score")}
    return score, files


def run_arena_hard(
    settings: ArenaHardSettings,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    model_id: str,
    seed: int,
) -> tuple[Path, float]:
    questions = arena_hard.load_questions(settings.source)[: settings.max_questions]
    answers = generate_responses(
        model,
        tokenizer,
        arena_hard.question_prompts(questions),
        settings.generation(),
        output_path=output_dir / "generations.jsonl",
        batch_size=settings.batch_size,
        seed=seed,
    )
    count_tokens = arena_hard.tokenizer_counter(tokenizer)
    answer_file = arena_hard.write_answer_file(
        output_dir / "model_answer", questions, answers, model_id=model_id, count_tokens=count_tokens
    )
    tokens_mean = sum(count_tokens(answer) for answer in answers) / max(len(answers), 1)
    logger.info("Arena-Hard: %d answers written to %s", len(answers), answer_file)
    return answer_file, float(tokens_mean)
