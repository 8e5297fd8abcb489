"""The noise-model registry, what a model sees, and the shared `inject`.

A noise model is one function that decides which pairs flip, plus a frozen dataclass of its
options (checked with `noisypref.checks`), registered by name with `register_noise_model`. `inject`
does everything else once for every model: it checks the rate, the options and the dataset, asks the
model for its flips, swaps `chosen` / `rejected` (and their scores) on the flipped pairs and builds the
`FlipRecord` (`noise_injection.flip_record`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pandas as pd

from noisypref.checks import (  # noqa: F401 (plugins import them here)
    Invalid,
    check_choice,
    check_integer,
    integer,
    interval,
    make_options,
    option_field,
    option_help,
)
from noisypref.checks import check_number as check_real  # noqa: F401 (docs/api.md, "Moved")
from noisypref.noise_injection.flip_record import FlipRecord

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("pair_id", "prompt", "chosen", "rejected")
SCORE_COLUMNS = ("score_chosen", "score_rejected")
SWAPPED_COLUMN_PAIRS = (("chosen", "rejected"), ("score_chosen", "score_rejected"))
MODES = ("exact", "bernoulli")
EXAMPLES_IN_MESSAGES = 5


@dataclass(frozen=True)
class NoiseOptions:
    """Base of every noise model's options dataclass."""

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Dataset columns, beyond pair_id / prompt / chosen / rejected, that the model reads."""
        return ()

    def rate_gap_reason(self, record: FlipRecord) -> str:
        """Why this model's realised rate can be far from the target (see `realised_rate_warning`);
        a model whose options can set the rate themselves says so."""
        return (
            f"{record.model} noise is calibrated to the target rate, so this data leaves it too few pairs "
            "to flip (or too many it must flip)"
        )


# ---------------------------------------------------------------------------------------------
# What a model sees and what it returns.


class PreferencePairs:
    """Read-only access to the columns of a preference dataset that a noise model needs."""

    def __init__(self, dataset: datasets.Dataset):
        self._dataset = dataset
        self.pair_ids: list[str] = list(dataset["pair_id"])

    def __len__(self) -> int:
        return len(self.pair_ids)

    def column(self, name: str) -> list[Any]:
        """One column as Python values (`chosen` / `rejected`: strings or message lists)."""
        return list(self._dataset[name])

    def score_gaps(self) -> np.ndarray:
        """score_chosen - score_rejected per pair (float64)."""
        score_chosen = np.asarray(self._dataset["score_chosen"], dtype=np.float64)
        score_rejected = np.asarray(self._dataset["score_rejected"], dtype=np.float64)
        return score_chosen - score_rejected


@dataclass(frozen=True)
class FlipDraw:
    """A model's decision: which pairs flip and, where the model defines one, each pair's flip
    probability (None where it has none)."""

    is_flipped: np.ndarray
    flip_probability: np.ndarray | None = None


FlipFunction = Callable[[PreferencePairs, float, int, Any], FlipDraw]


@dataclass(frozen=True)
class NoiseModel:
    name: str
    description: str
    options_type: type[NoiseOptions]
    draw_flips: FlipFunction

    def make_options(self, options: dict[str, Any]) -> NoiseOptions:
        return make_options(f"noise model {self.name!r}", self.options_type, options)

    def option_help(self) -> list[tuple[str, Any, str]]:
        """(name, default, description) of each option, for `noisypref noise --list`."""
        return option_help(self.options_type)


NOISE_MODELS: dict[str, NoiseModel] = {}


def register_noise_model(
    name: str, *, options: type[NoiseOptions], description: str
) -> Callable[[FlipFunction], FlipFunction]:
    """Register `draw_flips(pairs, rate, seed, options) -> FlipDraw` under `name`."""
    if not (dataclasses.is_dataclass(options) and issubclass(options, NoiseOptions)):
        raise TypeError(f"options of noise model {name!r} must be a dataclass subclassing NoiseOptions")

    def register(draw_flips: FlipFunction) -> FlipFunction:
        if name in NOISE_MODELS:
            raise ValueError(f"a noise model named {name!r} is already registered")
        NOISE_MODELS[name] = NoiseModel(name, description, options, draw_flips)
        return draw_flips

    return register


def get_noise_model(name: str) -> NoiseModel:
    if name not in NOISE_MODELS:
        raise ValueError(
            f"unknown noise model {name!r}; the registered models are: {', '.join(sorted(NOISE_MODELS))}"
        )
    return NOISE_MODELS[name]


# ---------------------------------------------------------------------------------------------
# inject


def realised_rate_warning(record: FlipRecord) -> str | None:
    """A sentence saying why, when the realised flip rate is farther from the target than rounding
    and sampling explain (1/N, 0.01 and three binomial standard errors); None otherwise."""
    num_pairs, target, realised = record.num_pairs, record.target_rate, record.realised_rate
    standard_error = math.sqrt(target * (1.0 - target) / num_pairs)
    if abs(realised - target) <= max(1.0 / num_pairs, 0.01, 3.0 * standard_error):
        return None
    reason = get_noise_model(record.model).make_options(record.options).rate_gap_reason(record)
    return f"the realised flip rate {realised:.4f} is far from the target {target} ({num_pairs} pairs): {reason}"


def high_rate_warning(rate: float) -> str | None:
    """Why a flip rate above 0.5 is rarely meant (None at or below 0.5): allowed, but the noisy labels
    then mostly disagree with the original ones, and at 1 every label is reversed."""
    if rate <= 0.5:
        return None
    reversed_labels = "every label is reversed" if rate >= 1 else "most labels disagree with the original ones"
    return f"flip rate {rate} is above 0.5: {reversed_labels}, so training learns the opposite preference"


def inject(
    dataset: datasets.Dataset, model: str, rate: float, seed: int, **options: Any
) -> tuple[datasets.Dataset, FlipRecord]:
    """Flip preference labels with the registered noise model `model` at target `rate`.

    Returns the noisy dataset (`chosen` / `rejected`, and `score_chosen` / `score_rejected` where
    present, swapped on flipped pairs; every other value, the row order and the row count
    unchanged) and the `FlipRecord`. Raises ValueError, changing nothing, on a rate outside
    [0, 1], an unknown model or option, missing columns, missing or duplicate pair_ids, or an
    empty dataset. A rate above 0.5 is allowed with a warning.
    """
    noise_model = get_noise_model(model)
    model_options = noise_model.make_options(options)
    _check_rate(rate)
    _check_seed(seed)
    _check_dataset(dataset, model_options.required_columns, model)
    warning = high_rate_warning(rate)
    if warning is not None:
        warnings.warn(warning, UserWarning, stacklevel=2)
    pairs = PreferencePairs(dataset)
    draw = noise_model.draw_flips(pairs, float(rate), int(seed), model_options)
    is_flipped = np.asarray(draw.is_flipped, dtype=bool)
    if is_flipped.shape != (len(pairs),):
        raise RuntimeError(f"noise model {model!r} returned {is_flipped.shape} flips for {len(pairs)} pairs")
    identical_pairs = _count_identical_pairs(pairs)
    if identical_pairs:
        logger.warning(
            "%d of %d pairs have chosen equal to rejected; flipping them changes nothing, they are kept",
            identical_pairs,
            len(pairs),
        )
    record = FlipRecord(
        model=model,
        options=dataclasses.asdict(model_options),
        seed=int(seed),
        target_rate=float(rate),
        table=pd.DataFrame(
            {
                "pair_id": pairs.pair_ids,
                "is_flipped": is_flipped,
                "flip_probability": (
                    np.full(len(pairs), np.nan)
                    if draw.flip_probability is None
                    else np.asarray(draw.flip_probability)
                ),
            }
        ),
        identical_pairs=identical_pairs,
    )
    logger.info(
        "noise %s (seed %d): flipped %d of %d pairs, realised rate %.4f (target %s)",
        model,
        seed,
        record.num_flipped,
        record.num_pairs,
        record.realised_rate,
        rate,
    )
    return swap_labels(dataset, is_flipped), record


def swap_labels(dataset: datasets.Dataset, is_flipped: np.ndarray) -> datasets.Dataset:
    """Swap chosen/rejected (and score_chosen/score_rejected where present) on the marked rows."""
    column_pairs = [pair for pair in SWAPPED_COLUMN_PAIRS if set(pair) <= set(dataset.column_names)]
    swapped_columns = [column for pair in column_pairs for column in pair]

    def swap_batch(*columns_and_indices: Any) -> dict[str, list[Any]]:
        *columns, indices = columns_and_indices
        flips = is_flipped[indices]
        batch = dict(zip(swapped_columns, columns, strict=True))
        for first, second in column_pairs:
            first_values, second_values = batch[first], batch[second]
            batch[first] = [
                b if flip else a for a, b, flip in zip(first_values, second_values, flips, strict=True)
            ]
            batch[second] = [
                a if flip else b for a, b, flip in zip(first_values, second_values, flips, strict=True)
            ]
        return batch

    dataset_format = dataset.format
    noisy = dataset.with_format(None).map(
        swap_batch,
        input_columns=swapped_columns,
        with_indices=True,
        batched=True,
        features=dataset.features,
        keep_in_memory=True,
        load_from_cache_file=False,
        desc="swapping flipped labels",
    )
    return noisy.with_format(
        type=dataset_format["type"],
        columns=dataset_format["columns"],
        output_all_columns=dataset_format["output_all_columns"],
        **dataset_format["format_kwargs"],
    )


def _check_rate(rate: Any) -> None:
    try:
        interval(0, 1, high_inclusive=True)(rate)
    except Invalid as error:
        raise ValueError(f"flip rate {rate!r} is not allowed; it must be {error.expected}") from None


def _check_seed(seed: Any) -> None:
    try:
        integer()(seed)
    except Invalid as error:
        raise ValueError(f"seed {seed!r} is not allowed; it must be {error.expected}") from None


def check_preference_dataset(dataset: datasets.Dataset, columns: Sequence[str], user: str, action: str) -> None:
    """``ValueError`` unless ``dataset`` is a non-empty preference dataset with the columns ``user`` (e.g.
    "noise model 'confidence'", "judge 'score_margin'") needs and a unique string ``pair_id`` on every row;
    ``action`` names what would be done to its pairs ("flip", "judge"). Noise injection and cleaning share it."""
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the dataset lacks the column(s) {', '.join(missing)}; a preference dataset needs "
            f"{', '.join(REQUIRED_COLUMNS)} (it has {', '.join(dataset.column_names)})"
        )
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{user} needs the column(s) {', '.join(missing)}, which the dataset lacks "
            f"(it has {', '.join(dataset.column_names)})"
        )
    if len(dataset) == 0:
        raise ValueError(f"the dataset is empty: there are no pairs to {action}")
    pair_id_type = getattr(dataset.features["pair_id"], "dtype", type(dataset.features["pair_id"]).__name__)
    if pair_id_type not in ("string", "large_string"):
        raise ValueError(f"pair_id must be strings, not {pair_id_type}; convert the column before the {user} sees it")
    pair_ids = pd.Series(list(dataset["pair_id"]), dtype=object)
    missing_rows = [int(row) for row in np.flatnonzero(pair_ids.isna() | (pair_ids == "").to_numpy())]
    if missing_rows:
        raise ValueError(
            f"{len(missing_rows)} row(s) have no pair_id (rows {_examples(missing_rows)}); every pair needs a unique id"
        )
    duplicated = pair_ids[pair_ids.duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(
            f"{len(duplicated)} pair_id(s) occur more than once ({_examples(duplicated)}); every pair needs a unique id"
        )


def _check_dataset(dataset: datasets.Dataset, model_columns: Iterable[str], model: str) -> None:
    model_columns = list(model_columns)
    check_preference_dataset(dataset, model_columns, f"noise model {model!r}", "flip")
    for column in (column for column in model_columns if column in SCORE_COLUMNS):
        values = np.asarray(dataset[column], dtype=np.float64)
        if not np.isfinite(values).all():
            bad_rows = np.flatnonzero(~np.isfinite(values)).tolist()
            raise ValueError(
                f"noise model {model!r} needs a finite {column} on every pair; "
                f"{len(bad_rows)} row(s) have none (rows {_examples(bad_rows)})"
            )


def _count_identical_pairs(pairs: PreferencePairs) -> int:
    return sum(
        chosen == rejected
        for chosen, rejected in zip(pairs.column("chosen"), pairs.column("rejected"), strict=True)
    )


def _examples(values: Sequence[Any]) -> str:
    shown = ", ".join(
        repr(value) if isinstance(value, str) else str(value) for value in values[:EXAMPLES_IN_MESSAGES]
    )
    return shown + (", ..." if len(values) > EXAMPLES_IN_MESSAGES else "")
