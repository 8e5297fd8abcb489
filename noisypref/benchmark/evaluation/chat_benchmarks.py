"""Chat benchmarks for real models inside a run: the ``evaluation.benchmarks`` section
(`noisypref.benchmark.config.benchmarks`, where its settings and defaults are) run on a trained policy.

``check_runnable`` fails before training for what would only fail after it (a missing file or API key).
``run_benchmarks`` runs the configured benchmarks on a trained policy, writing into the run folder:

    alpaca_eval/generations.jsonl    resumable generations (noisypref.benchmark.evaluation.generation)
    alpaca_eval/model_outputs.json, annotations.json, score.json
    arena_hard/model_answer/<model_id>.jsonl   (model_id: noisypref-<run_id>)

and returns metrics for result.json: ``alpaca_eval_win_rate``, ``alpaca_eval_standard_error``,
``alpaca_eval_lc_win_rate`` (when it can be fitted), ``alpaca_eval_avg_length`` (characters),
``arena_hard_answer_tokens_mean`` (the judge runs outside noisypref).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from noisypref.benchmark.config.benchmarks import (
    ALPACA_EVAL_DEFAULT_ANNOTATOR,
    ALPACA_EVAL_HUB_DATASET,
    AlpacaEvalSettings,
    ArenaHardSettings,
    Benchmarks,
)
from noisypref.benchmark.config.metrics import declare
from noisypref.benchmark.evaluation import alpaca_eval, arena_hard
from noisypref.benchmark.evaluation.generation import generate_responses

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


def check_runnable(benchmarks: Benchmarks) -> None:
    """Fail before training for what would only fail after it: a missing file or API key."""
    settings = benchmarks.alpaca_eval
    if settings is not None:
        if settings.source != ALPACA_EVAL_HUB_DATASET and not Path(settings.source).is_file():
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
        annotator=settings.judge_target if settings.uses_api else ALPACA_EVAL_DEFAULT_ANNOTATOR,
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
