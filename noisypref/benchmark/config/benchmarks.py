"""The ``evaluation.benchmarks`` section: chat benchmarks for real models inside a run (off by default).

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

`Benchmarks` is the section, typed: `EvaluationSettings.benchmarks` holds one, each benchmark a
nested section or None (off, and left out of the run config, so ``{}`` means none). `parse_benchmarks`
validates a mapping (missing keys take the defaults above; ``arena_hard.source`` has none).
`GenerationSettings` are the decoding settings of a generation and `PUBLISHED_SETTINGS` those the γ-PO
and SimPO authors published. `noisypref.benchmark.evaluation.chat_benchmarks` runs the benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from noisypref.checks import Invalid, choice, integer, number, optional, text
from noisypref.settings import Section, nested_section, setting, settings_dict

ALPACA_EVAL_HUB_DATASET = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2's judge
API_JUDGE = "api:"
REWARD_MODEL_JUDGE = "reward_model:"
LC_VARIANTS = ("auto", "official", "offline-glm")
BENCHMARK_NAMES = ("alpaca_eval", "arena_hard")

GAMMA_PO_ALPACA_EVAL = "sunjie279/gammaPO eval/alpacaeval2/config/{}"
SIMPO_ARENA_HARD = "princeton-nlp/SimPO eval/arenahard/configs/{}/gen_answer_config.yaml"

_temperature = number(minimum=0)  # 0: greedy
_top_p = number(minimum=0, maximum=1, exclusive_minimum=True)
_max_new_tokens = integer(minimum=1)


# ---------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; ``temperature == 0`` means greedy decoding."""

    temperature: float
    max_new_tokens: int
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's and generation config's eos
    source: str = ""

    def __post_init__(self) -> None:
        for name, check, allowed in (
            ("temperature", _temperature, ">= 0"),
            ("max_new_tokens", _max_new_tokens, ">= 1"),
            ("top_p", _top_p, "in (0, 1]"),
        ):
            value = getattr(self, name)
            try:
                check(value)
            except Invalid:
                raise ValueError(f"{name} must be {allowed}, got {value}") from None


# (benchmark, model family) -> the settings its authors used. AlpacaEval 2: the γ-PO repository's
# alpaca_eval model configs (the Llama-3 and Mistral ones equal SimPO's eval/alpacaeval2/configs).
# Arena-Hard: γ-PO publishes no Arena-Hard config; SimPO's gen_answer_config (temperature 0,
# max_tokens 4096) is the one published, and the same for both its instruct families.
PUBLISHED_SETTINGS: dict[tuple[str, str], GenerationSettings] = {
    ("alpaca_eval", "llama3-instruct"): GenerationSettings(
        temperature=0.9,
        max_new_tokens=4096,
        stop_token_ids=(128001, 128009),
        source=GAMMA_PO_ALPACA_EVAL.format("llama-3-8b-it-gmsimpo-beta10-gm0.4-tau10-lr1e-6.yaml"),
    ),
    ("alpaca_eval", "mistral-instruct"): GenerationSettings(
        temperature=0.5,
        max_new_tokens=2048,
        source=GAMMA_PO_ALPACA_EVAL.format("mistral-7b-it-gmsimpo-beta2.5-gm0.15-tau10-lr6e-7.yaml"),
    ),
    ("alpaca_eval", "gemma2-it"): GenerationSettings(
        temperature=0.5,
        max_new_tokens=4096,
        stop_token_ids=(1, 107),
        source=GAMMA_PO_ALPACA_EVAL.format("gemma-2-9b-it-gmsimpo-beta10-gm0.5-tau20-lr8e-7.yaml"),
    ),
    ("alpaca_eval", "qwen2.5-instruct"): GenerationSettings(
        temperature=0.5,
        max_new_tokens=4096,
        stop_token_ids=(151645,),
        source=GAMMA_PO_ALPACA_EVAL.format("qwen-2.5-7b-it-gmsimpo-beta10-gm0.3-tau3-lr1e-6.yaml"),
    ),
    ("arena_hard", "llama3-instruct"): GenerationSettings(
        temperature=0.0,
        max_new_tokens=4096,
        stop_token_ids=(128001, 128009),
        source=SIMPO_ARENA_HARD.format("Llama-3-Instruct-8B-SimPO"),
    ),
    ("arena_hard", "mistral-instruct"): GenerationSettings(
        temperature=0.0,
        max_new_tokens=4096,
        stop_token_ids=(2,),
        source=SIMPO_ARENA_HARD.format("Mistral-7B-Instruct-SimPO"),
    ),
}


def published_settings(benchmark: str, family: str) -> GenerationSettings:
    try:
        return PUBLISHED_SETTINGS[(benchmark, family)]
    except KeyError:
        known = ", ".join(f"{b}/{f}" for b, f in PUBLISHED_SETTINGS)
        raise ValueError(
            f"no published settings for benchmark {benchmark!r}, family {family!r}; known: {known}"
        ) from None


# ---------------------------------------------------------------------------------------------
# The benchmarks


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


@dataclass(frozen=True)
class AlpacaEvalSettings(Section):
    section = "alpaca_eval"

    source: str = setting(ALPACA_EVAL_HUB_DATASET, _source)
    max_prompts: int | None = setting(None, _how_many)
    judge: str = setting(API_JUDGE + ALPACA_EVAL_DEFAULT_ANNOTATOR, _judge)
    temperature: float = setting(0.0, _temperature)
    top_p: float = setting(1.0, _top_p)
    max_new_tokens: int = setting(1024, _max_new_tokens)
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
    max_new_tokens: int = setting(4096, _max_new_tokens)
    stop_token_ids: tuple[int, ...] = setting((), _token_ids)
    batch_size: int = setting(8, integer(minimum=1))

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.temperature, self.max_new_tokens, self.top_p, self.stop_token_ids)


@dataclass(frozen=True)
class Benchmarks(Section):
    """The benchmarks a run evaluates its trained policy on; each None (off) or its settings."""

    section = "benchmarks"

    alpaca_eval: AlpacaEvalSettings | None = setting(
        None, nested_section(AlpacaEvalSettings, "null or a mapping of AlpacaEval settings"), omitted_when_none=True
    )
    arena_hard: ArenaHardSettings | None = setting(
        None, nested_section(ArenaHardSettings, "null or a mapping of Arena-Hard settings"), omitted_when_none=True
    )

    def __bool__(self) -> bool:
        return self.alpaca_eval is not None or self.arena_hard is not None

    def to_dict(self) -> dict[str, Any]:
        """As a run config holds it: every default filled in, benchmarks that are off left out (``{}``: none)."""
        return json.loads(json.dumps(settings_dict(self)))


def parse_benchmarks(values: Any, path: str = "evaluation.benchmarks") -> Benchmarks:
    """Validate a benchmarks section; ``ValueError`` names the field path, the value and what is allowed."""
    if values is None:
        return Benchmarks()
    if isinstance(values, Benchmarks):
        return values
    if not isinstance(values, Mapping):
        raise ValueError(f"{path} = {values!r} is invalid: expected a mapping with keys {BENCHMARK_NAMES}")
    unknown = sorted(set(values) - set(BENCHMARK_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown benchmark(s) {unknown}; allowed: {', '.join(BENCHMARK_NAMES)}")
    alpaca = values.get("alpaca_eval")
    arena = values.get("arena_hard")
    return Benchmarks(
        alpaca_eval=None if alpaca is None else AlpacaEvalSettings.from_dict(alpaca, f"{path}.alpaca_eval"),
        arena_hard=None if arena is None else ArenaHardSettings.from_dict(arena, f"{path}.arena_hard"),
    )


def benchmarks_check(value: Any) -> Benchmarks:
    """The check of `EvaluationSettings.benchmarks`: a mapping (or null) becomes `Benchmarks`."""
    try:
        return parse_benchmarks(value)
    except ValueError as error:
        raise Invalid(f"a valid value ({error})") from None
