"""The oracle: the flip record itself. The upper bound of every judge, drawn as a reference, never ranked.

With the ``estimated`` budget it flags exactly the flipped pairs, so ``remove`` trains on the noisy
pairs minus the flipped ones: the ``clean_only`` reference of DESIGN.md §1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.cleaning.base import ORACLE_JUDGE, JudgeOptions, JudgeScores, OracleInputs, register_judge


@dataclass(frozen=True)
class OracleOptions(JudgeOptions):
    pass


@register_judge(
    ORACLE_JUDGE,
    options=OracleOptions,
    description="the flip record itself: scores 1 for flipped pairs, 0 otherwise; estimates the realised rate "
    "(a reference: the upper bound of every judge)",
    source="noisypref (the injected flips; DESIGN.md §4b)",
    reads_flip_record=True,
)
def score_by_flip_record(inputs: OracleInputs, options: OracleOptions) -> JudgeScores:
    is_flipped = np.asarray(inputs.is_flipped, dtype=bool)
    return JudgeScores(is_flipped.astype(np.float64), float(is_flipped.mean()), flagged=is_flipped.copy())
