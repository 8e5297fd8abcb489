"""AlpacaEval 2's scores: win rates with the package's metrics, and the judge-then-score pipeline.

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
reason in the result's ``lc_note``. ``evaluate_outputs`` judges model outputs (`judges`) and scores them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from noisypref.benchmark.config.benchmarks import (
    ALPACA_EVAL_DEFAULT_ANNOTATOR,
    ALPACA_EVAL_HUB_DATASET,
    LC_VARIANTS,
)
from noisypref.benchmark.data.hub import HubUnavailable, hub_lookup
from noisypref.benchmark.evaluation.alpaca_eval.files import NUM_PROMPTS, load_annotations
from noisypref.benchmark.evaluation.alpaca_eval.judges import (
    API_KEY_VARIABLES,
    PairJudge,
    annotate_pairs,
    api_key_configured,
    run_api_judge,
)
from noisypref.benchmark.storage import write_json_atomic

logger = logging.getLogger(__name__)

LengthControlVariant = Literal["auto", "official", "offline-glm"]


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
