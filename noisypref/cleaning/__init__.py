"""Data cleaning: a judge scores every pair of a noisy dataset; the pairs it distrusts are removed or flipped.

`clean(dataset, judge, seed=..., treatment=..., budget=..., models=...)` returns
`(cleaned_dataset, cleaning_record)`. Judges are registered by name, one module each; importing this
package registers the built-in ones below (docs/cleaning.md). Only the ``oracle`` judge reads the flip
record.
"""

from noisypref.cleaning import (  # noqa: F401  (registration)
    ensemble,
    oracle,
    reference_margin,
    reward_model,
    score_margin,
    small_loss,
)
from noisypref.cleaning.base import (
    JUDGES,
    ORACLE_JUDGE,
    TREATMENTS,
    Judge,
    JudgeInputs,
    JudgeOptions,
    JudgeScores,
    OracleInputs,
    PairModels,
    ResponseLogps,
    apply_record,
    clean,
    get_judge,
    register_judge,
    select_flagged,
)
from noisypref.cleaning.budget import Budget
from noisypref.cleaning.cleaning_record import CleaningRecord

__all__ = [
    "JUDGES",
    "ORACLE_JUDGE",
    "TREATMENTS",
    "Budget",
    "CleaningRecord",
    "Judge",
    "JudgeInputs",
    "JudgeOptions",
    "JudgeScores",
    "OracleInputs",
    "PairModels",
    "ResponseLogps",
    "apply_record",
    "clean",
    "get_judge",
    "register_judge",
    "select_flagged",
]
