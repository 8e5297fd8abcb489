"""AlpacaEval 2: the 805 prompts, model-output files, judging, and scoring with the package's metrics.

    files.py     the evaluation set, model_outputs.json and annotations in the package's formats
    judges.py    the package's API annotators and local judges (a reward model, the testbed's gold reward)
    scoring.py   win rates and length-controlled win rates by the package's metrics; judge-then-score

Its settings inside a study (``evaluation.benchmarks.alpaca_eval``) are in
`noisypref.benchmark.config.benchmarks`; `noisypref.benchmark.evaluation.chat_benchmarks` runs it.
"""

from noisypref.benchmark.evaluation.alpaca_eval.files import (
    load_annotations,
    load_eval_set,
    model_output_records,
    read_json_records,
    write_model_outputs,
)
from noisypref.benchmark.evaluation.alpaca_eval.judges import (
    API_KEY_VARIABLES,
    HFRewardModel,
    PairJudge,
    RewardJudge,
    annotate_pairs,
    api_key_configured,
    run_api_judge,
)
from noisypref.benchmark.evaluation.alpaca_eval.scoring import (
    AlpacaEvalScore,
    NothingToFit,
    evaluate_outputs,
    length_controlled_minimal_winrate,
    score_annotations,
)

__all__ = [
    "API_KEY_VARIABLES",
    "AlpacaEvalScore",
    "HFRewardModel",
    "NothingToFit",
    "PairJudge",
    "RewardJudge",
    "annotate_pairs",
    "api_key_configured",
    "evaluate_outputs",
    "length_controlled_minimal_winrate",
    "load_annotations",
    "load_eval_set",
    "model_output_records",
    "read_json_records",
    "run_api_judge",
    "score_annotations",
    "write_model_outputs",
]
