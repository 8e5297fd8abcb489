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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.evaluation import alpaca_eval, arena_hard
from noisypref.benchmark.evaluation.generation import GenerationSettings, generate_responses
from noisypref.checks import Invalid, choice, integer, number, optional, text
from noisypref.settings import Section, setting

logger = logging.getLogger(__name__)

declare("alpaca_eval_win_rate", "AlpacaEval 2 win rate (%)", "higher", bounds=(0.0, 100.0),
        description="AlpacaEval 2 win rate against its baseline, by the configured judge")
declare("alpaca_eval_standard_error", "AlpacaEval 2 standard error", "none", bounds=(0.0, None), diagnostic=True,
        description="standard error of the AlpacaEval 2 win rate")
declare("alpaca_eval_lc_win_rate", "AlpacaEval 2 length-controlled win rate (%)", "higher", bounds=(0.0, 100.0),
        description="AlpacaEval 2 length-controlled win rate")
declare("alpaca_eval_avg_length", "AlpacaEval 2 mean output length (characters)", "none", bounds=(0.0, None),
        diagnostic=True, description="mean length of the model's AlpacaEval outputs")
declare("arena_hard_answer_tokens_mean", "Arena-Hard mean answer tokens", "none", bounds=(0.0, None),
        diagnostic=True, description="mean tokens of the Arena-Hard answers (the judge runs outside noisypref)")

API_JUDGE = "api:"
REWARD_MODEL_JUDGE = "reward_model:"
LC_VARIANTS = ("auto", "official", "offline-glm")
BENCHMARK_NAMES = ("alpaca_eval", "arena_hard")


def _judge(value: Any) -> str:
    prefixes = (API_JUDGE, REWARD_MODEL_JUDGE)
    if not (isinstance(value, str) and value.startswith(prefixes) and value.split(":", 1)[1].strip()):
        raise Invalid(
            "'api:<alpaca_eval annotator>' (e.g. api:weighted_alpaca_eval_gpt4_turbo, needs an API key) "
            "or 'reward_model:<local folder or hub id of a sequence-classification reward model>'"
        )
    return value


def _token_ids(value: Any) -> tuple[int, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in items):
        raise Invalid("a list of token ids (integers >= 0)")
    return tuple(items)


_source = text(described_as="a local file path or, for alpaca_eval, the hub id 'tatsu-lab/alpaca_eval'")
_how_many = optional(integer(minimum=1))  # null: all
_temperature = number(minimum=0)  # 0: greedy
_top_p = number(minimum=0, maximum=1, exclusive_minimum=True)


@dataclass(frozen=True)
class AlpacaEvalSettings(Section):
    section = "alpaca_eval"

    source: str = setting(alpaca_eval.HUB_DATASET, _source)
    max_prompts: int | None = setting(None, _how_many)
    judge: str = setting(API_JUDGE + alpaca_eval.DEFAULT_API_ANNOTATOR, _judge)
    temperature: float = setting(0.0, _temperature)
    top_p: float = setting(1.0, _top_p)
    max_new_tokens: int = setting(1024, integer(minimum=1))
    stop_token_ids: tuple[int, ...] = setting((), _token_ids)
    batch_size: int = setting(8, integer(minimum=1))
    lc_variant: str = setting("auto", choice(LC_VARIANTS))

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
class ArenaHardSettings(Section):
    section = "arena_hard"

    source: str = field(metadata={"check": _source})  # no default: the question file
    max_questions: int | None = setting(None, _how_many)
    temperature: float = setting(0.0, _temperature)
    top_p: float = setting(1.0, _top_p)
    max_new_tokens: int = setting(4096, integer(minimum=1))
    stop_token_ids: tuple[int, ...] = setting((), _token_ids)
    batch_size: int = setting(8, integer(minimum=1))

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
        else AlpacaEvalSettings.from_dict(alpaca, f"{path}.alpaca_eval"),
        arena_hard=None if arena is None else ArenaHardSettings.from_dict(arena, f"{path}.arena_hard"),
    )


def normalised_benchmarks(values: Any) -> dict[str, Any]:
    """The section as a run config holds it (every default filled in); ``ValueError`` if invalid."""
    return parse_benchmarks(values).to_dict()


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
