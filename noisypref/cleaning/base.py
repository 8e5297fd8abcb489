"""The judge registry, what a judge sees and returns, and the shared `clean` (flagging, treatments).

A judge is one function that scores every pair of a noisy dataset (higher: more likely mislabelled),
plus a frozen dataclass of its options, registered by name with `register_judge`. `clean` does
everything else once for every judge: it checks the dataset, asks the judge for its scores, picks the
flagged pairs within the budget (`cleaning.budget`), removes them or swaps their labels, and builds the
`CleaningRecord` (`cleaning.cleaning_record`).

What a judge sees is `JudgeInputs`: the noisy pairs, the seed and, for judges that need a model, the
`PairModels` the caller supplies. Nothing in it leads to the flip record. Only the judge named
`ORACLE_JUDGE` is registered with ``reads_flip_record`` and receives `OracleInputs`, which add the
record's per-pair flags; `register_judge` refuses that permission to any other name (DESIGN.md §1:
the oracle is the one marked place where the flip record reaches data preparation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import datasets
import numpy as np
import pandas as pd

from noisypref.checks import check_choice, check_integer, make_options, option_field, option_help  # noqa: F401 (plugins import them here)
from noisypref.checks import check_positive as check_positive_number  # noqa: F401 (docs/api.md, "Moved")
from noisypref.cleaning.budget import Budget
from noisypref.cleaning.cleaning_record import CleaningRecord
from noisypref.noise_injection.base import PreferencePairs, check_preference_dataset, swap_labels
from noisypref.sampling import flip_count, top_k_mask

logger = logging.getLogger(__name__)

ORACLE_JUDGE = "oracle"
TREATMENTS = ("remove", "flip")


# ---------------------------------------------------------------------------------------------
# What a judge sees.


def check_positive_integer(option: str, value: Any, *, minimum: int = 1) -> int:
    """``noisypref.checks.check_integer`` with ``minimum`` 1: kept for judge plugins written against the
    earlier docs (docs/api.md, "Moved")."""
    return check_integer(option, value, minimum=minimum)


@dataclass(frozen=True)
class ResponseLogps:
    """Summed log-probs of each pair's chosen and rejected response (as labelled in the noisy data)
    and the responses' lengths in tokens, aligned with the pairs."""

    chosen: np.ndarray
    rejected: np.ndarray
    chosen_length: np.ndarray
    rejected_length: np.ndarray


class PairModels(Protocol):
    """Model computations a judge may ask for. The caller supplies them (a run: the engine, on the run's
    reference model and tokens), so judges stay pure functions of their inputs and import no engine."""

    def reference_logps(self) -> ResponseLogps:
        """The reference model's log-probs of every pair's two responses."""
        ...

    def trained_reward_gaps(
        self, train_rows: np.ndarray, score_rows: np.ndarray, *, steps: int, beta: float, seed: int
    ) -> np.ndarray:
        """DPO's implicit reward gap h = β[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] of
        the pairs ``score_rows`` under a policy trained with DPO (β ``beta``) for ``steps`` steps, from
        the reference model, on the pairs ``train_rows`` with their noisy labels."""
        ...


@dataclass(frozen=True)
class JudgeInputs:
    """Everything a judge may read: the noisy pairs, the seed, and the models (None where there are none)."""

    pairs: PreferencePairs
    seed: int
    models: PairModels | None = None

    def require_models(self, judge: str) -> PairModels:
        if self.models is None:
            raise ValueError(
                f"judge {judge!r} needs a model (reference log-probs or training); this call supplied none "
                "(in a study every run supplies its reference model)"
            )
        return self.models


@dataclass(frozen=True)
class OracleInputs(JudgeInputs):
    """The oracle's inputs: `JudgeInputs` plus the flip record's flag of every pair, in row order."""

    is_flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass(frozen=True)
class JudgeScores:
    """A judge's verdict: a suspicion score per pair (higher: more likely mislabelled), the judge's own
    estimate of the share of mislabelled pairs, and, for judges that decide by themselves (the ensemble's
    vote, the oracle), the pairs they flag under the ``estimated`` budget (None: the top share)."""

    suspicion: np.ndarray
    estimated_rate: float
    flagged: np.ndarray | None = None


@dataclass(frozen=True)
class JudgeOptions:
    """Base of every judge's options dataclass."""

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns, beyond pair_id / prompt / chosen / rejected, that the judge reads."""
        return ()

    @property
    def needs_models(self) -> bool:
        """Whether the judge asks `PairModels` for anything (a run then supplies its reference model)."""
        return False


JudgeFunction = Callable[[JudgeInputs, Any], JudgeScores]


@dataclass(frozen=True)
class Judge:
    name: str
    description: str
    source: str
    options_type: type[JudgeOptions]
    score_pairs: JudgeFunction
    reads_flip_record: bool = False

    def make_options(self, options: Mapping[str, Any] | None = None) -> JudgeOptions:
        return make_options(f"judge {self.name!r}", self.options_type, dict(options or {}))

    def option_help(self) -> list[tuple[str, Any, str]]:
        """(name, default, description) of each option, for `noisypref judges`."""
        return option_help(self.options_type)


JUDGES: dict[str, Judge] = {}


def register_judge(
    name: str, *, options: type[JudgeOptions], description: str, source: str, reads_flip_record: bool = False
) -> Callable[[JudgeFunction], JudgeFunction]:
    """Register ``score_pairs(inputs, options) -> JudgeScores`` under ``name``.

    ``reads_flip_record`` is granted to the judge named `ORACLE_JUDGE` only: every other judge gets
    `JudgeInputs`, which hold no flip record."""
    if not (dataclasses.is_dataclass(options) and issubclass(options, JudgeOptions)):
        raise TypeError(f"options of judge {name!r} must be a dataclass subclassing JudgeOptions")
    if reads_flip_record and name != ORACLE_JUDGE:
        raise ValueError(
            f"judge {name!r} cannot read the flip record: only the {ORACLE_JUDGE!r} judge may (it is the "
            "reference every other judge is measured against)"
        )

    def register(score_pairs: JudgeFunction) -> JudgeFunction:
        if name in JUDGES:
            raise ValueError(f"a judge named {name!r} is already registered")
        JUDGES[name] = Judge(name, description, source, options, score_pairs, reads_flip_record)
        return score_pairs

    return register


def get_judge(name: str) -> Judge:
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; the registered judges are: {', '.join(sorted(JUDGES))}")
    return JUDGES[name]


# ---------------------------------------------------------------------------------------------
# Flagging: the pairs of a judge's scores within a budget (`cleaning.budget`)


def select_flagged(
    scores: JudgeScores, budget: Budget, pair_ids: Sequence[str], known_flip_rate: float | None = None
) -> np.ndarray:
    """The pairs flagged under ``budget``: the most suspect ``round(share · N)`` (ties: the smaller
    pair_id first, so the choice never depends on row order), or every score above a threshold."""
    suspicion = np.asarray(scores.suspicion, dtype=np.float64)
    if budget.kind == "threshold":
        return suspicion > budget.value
    if budget.kind == "estimated" and scores.flagged is not None:
        return np.asarray(scores.flagged, dtype=bool).copy()
    if budget.kind == "estimated":
        share = scores.estimated_rate
    elif budget.kind == "realised_rate":
        if known_flip_rate is None:
            raise ValueError("budget 'realised_rate' needs the realised flip rate; this call gave none")
        share = known_flip_rate
    else:
        share = budget.value
    share = min(max(float(share), 0.0), 1.0)
    return top_k_mask(flip_count(share, len(suspicion)), suspicion, np.zeros(len(suspicion)), pair_ids)


# ---------------------------------------------------------------------------------------------
# clean


def clean(
    dataset: datasets.Dataset,
    judge: str,
    *,
    seed: int,
    options: Mapping[str, Any] | None = None,
    treatment: str = "remove",
    budget: Any = "estimated",
    models: PairModels | None = None,
    is_flipped: np.ndarray | None = None,
    known_flip_rate: float | None = None,
) -> tuple[datasets.Dataset, CleaningRecord]:
    """Score the pairs of a noisy ``dataset`` with the registered ``judge`` and remove or flip the flagged ones.

    Returns the cleaned dataset (``remove``: the unflagged rows, in their order; ``flip``: every row,
    ``chosen`` / ``rejected`` and their scores swapped on the flagged ones) and the `CleaningRecord`.
    ``is_flipped`` (the flip record's flags, in row order) reaches the oracle judge only, and the oracle
    needs it; ``known_flip_rate`` is read by the ``realised_rate`` budget only. ``models`` serves judges that
    need a model. Raises ``ValueError``, changing nothing, on an unknown judge, option, treatment or budget,
    a missing column or an empty dataset.
    """
    chosen_judge = get_judge(judge)
    judge_options = chosen_judge.make_options(options)
    if treatment not in TREATMENTS:
        raise ValueError(f"treatment {treatment!r} is not allowed; choose one of {', '.join(TREATMENTS)}")
    parsed_budget = Budget.parse(budget)
    check_preference_dataset(dataset, judge_options.required_columns, f"judge {judge!r}", "judge")
    pairs = PreferencePairs(dataset)
    if chosen_judge.reads_flip_record:
        if is_flipped is None:
            raise ValueError(f"judge {judge!r} reads the flip record; this call gave none (is_flipped)")
        flags = np.asarray(is_flipped, dtype=bool)
        if flags.shape != (len(pairs),):
            raise ValueError(f"is_flipped has {flags.shape} entries for {len(pairs)} pairs")
        inputs: JudgeInputs = OracleInputs(pairs, int(seed), models, is_flipped=flags.copy())
    else:
        inputs = JudgeInputs(pairs, int(seed), models)  # no way to the flip record from here
    scores = chosen_judge.score_pairs(inputs, judge_options)
    suspicion = np.asarray(scores.suspicion, dtype=np.float64)
    if suspicion.shape != (len(pairs),) or not np.isfinite(suspicion).all():
        raise RuntimeError(f"judge {judge!r} returned {suspicion.shape} scores (finite: "
                           f"{bool(np.isfinite(suspicion).all())}) for {len(pairs)} pairs")  # fmt: skip
    flagged = select_flagged(scores, parsed_budget, pairs.pair_ids, known_flip_rate)
    action = np.where(flagged, treatment, "keep")
    record = CleaningRecord(
        judge=judge,
        options=json.loads(json.dumps(dataclasses.asdict(judge_options))),
        treatment=treatment,
        budget=parsed_budget.to_plain(),
        seed=int(seed),
        estimated_rate=float(scores.estimated_rate),
        table=pd.DataFrame(
            {"pair_id": pairs.pair_ids, "score": suspicion, "flagged": flagged, "action": action}
        ),
    )
    logger.info(
        "cleaning with %s (seed %d): flagged %d of %d pairs (budget %s; the judge estimates %.4f mislabelled), %s",
        judge, seed, record.num_flagged, record.num_pairs, parsed_budget.describe(), record.estimated_rate,
        "removed" if treatment == "remove" else "labels swapped",
    )  # fmt: skip
    return apply_record(dataset, record), record


def apply_record(dataset: datasets.Dataset, record: CleaningRecord) -> datasets.Dataset:
    """The cleaned dataset of ``record`` (made from this ``dataset``, whose pair_ids it lists in order)."""
    if list(dataset["pair_id"]) != list(record.table["pair_id"]):
        raise ValueError(
            "the cleaning record lists other pairs (or another order) than the dataset it is applied to"
        )
    flagged = record.table["flagged"].to_numpy(dtype=bool)
    if record.treatment == "flip":
        return swap_labels(dataset, flagged)
    return dataset.select(np.flatnonzero(~flagged).tolist())
