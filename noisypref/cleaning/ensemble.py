"""Agreement of several judges: a pair is flagged when any / a majority / all of them flag it (each at its
own budget). PrefCleanBench (NeurIPS 2025) finds removing what several judges distrust the best cleaning.

Suspicion = the number of members that flag the pair, plus the members' mean rank share of its score
(in (0, 1)), so pairs are ordered by votes first and by the members' average suspicion within a vote
count; the ``estimated`` budget flags by the vote rule, a ``fraction`` or ``threshold`` budget by that score.
The oracle cannot be a member (it is a reference, not a judge to combine), nor another ensemble.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from noisypref.checks import check_choice, option_field
from noisypref.cleaning.base import (
    ORACLE_JUDGE,
    JudgeInputs,
    JudgeOptions,
    JudgeScores,
    get_judge,
    register_judge,
    select_flagged,
)
from noisypref.cleaning.budget import Budget

RULES = ("any", "majority", "all")
ENSEMBLE_JUDGE = "ensemble"
MEMBER_KEYS = ("judge", "options", "budget")
DEFAULT_MEMBERS = ({"judge": "reference_margin"}, {"judge": "reward_model"}, {"judge": "small_loss"})


@dataclass(frozen=True)
class EnsembleOptions(JudgeOptions):
    members: tuple[dict[str, Any], ...] = option_field(
        DEFAULT_MEMBERS, "the judges combined: [{judge, options, budget}, ...] (budget default: estimated)"
    )
    rule: str = option_field("majority", "flag a pair that 'any', a strict 'majority' or 'all' members flag")

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, RULES)
        if (
            isinstance(self.members, (str, Mapping))
            or not isinstance(self.members, (list, tuple))
            or len(self.members) < 2
        ):
            raise ValueError(f"option members={self.members!r} must list at least two judges")
        members = tuple(_member(index, member) for index, member in enumerate(self.members))
        object.__setattr__(self, "members", members)

    @property
    def needs_models(self) -> bool:
        return any(
            get_judge(member["judge"]).make_options(member["options"]).needs_models for member in self.members
        )

    @property
    def required_columns(self) -> tuple[str, ...]:
        columns = [
            column for member in self.members
            for column in get_judge(member["judge"]).make_options(member["options"]).required_columns
        ]  # fmt: skip
        return tuple(dict.fromkeys(columns))


def _member(index: int, member: Any) -> dict[str, Any]:
    """A member with every option and its budget filled in, as plain data."""
    if isinstance(member, str):
        member = {"judge": member}
    if not isinstance(member, Mapping) or "judge" not in member or set(member) - set(MEMBER_KEYS):
        raise ValueError(
            f"members[{index}] = {member!r} must be a judge name or a mapping with keys {MEMBER_KEYS} (judge required)"
        )
    name = member["judge"]
    if name in (ORACLE_JUDGE, ENSEMBLE_JUDGE):
        raise ValueError(f"members[{index}]: the {name!r} judge cannot be an ensemble member")
    try:
        judge = get_judge(name)
        options = judge.make_options(member.get("options"))
        budget = Budget.parse(member.get("budget", "estimated"))
    except (ValueError, TypeError) as error:
        raise ValueError(f"members[{index}] ({name!r}): {error}") from None
    if budget.kind == "realised_rate":
        raise ValueError(
            f"members[{index}] ({name!r}): budget 'realised_rate' is not available to ensemble members"
        )
    return {
        "judge": name,
        "options": json.loads(json.dumps(dataclasses.asdict(options))),
        "budget": budget.to_plain(),
    }


@register_judge(
    ENSEMBLE_JUDGE,
    options=EnsembleOptions,
    description="votes of several judges, each at its own budget: any-of, majority or all-of",
    source="PrefCleanBench (NeurIPS 2025): removing what several judges distrust",
)
def score_by_vote(inputs: JudgeInputs, options: EnsembleOptions) -> JudgeScores:
    votes = np.zeros(len(inputs.pairs), dtype=np.int64)
    rank_shares = np.zeros(len(inputs.pairs), dtype=np.float64)
    for member in options.members:
        judge = get_judge(member["judge"])
        scores = judge.score_pairs(inputs, judge.make_options(member["options"]))
        votes += select_flagged(scores, Budget.parse(member["budget"]), inputs.pairs.pair_ids)
        rank_shares += rankdata(scores.suspicion) / (len(inputs.pairs) + 1)
    count = len(options.members)
    needed = {"any": 1, "majority": count // 2 + 1, "all": count}[options.rule]
    flagged = votes >= needed
    return JudgeScores(votes + rank_shares / count, float(flagged.mean()), flagged=flagged)
