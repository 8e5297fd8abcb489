"""Issue 22's first premise target, on the default study's own testbed: before any injected flip, the
training labels agree with the gold order on at least 90 % of pairs (docs/testbed.md)."""

from __future__ import annotations

import numpy as np
import pytest

from noisypref.benchmark.study import default_study_path, load_study
from noisypref.benchmark.testbed import build_testbed


def test_the_default_study_s_labels_agree_with_the_gold_order(default_testbed, engine_cache_dir) -> None:
    (dataset,) = load_study(default_study_path()).datasets
    config = dataset.testbed
    assert config.reference_policy_key() == default_testbed.config.reference_policy_key()  # pairs only: cheap
    pairs = build_testbed(config, engine_cache_dir).train_pairs
    gold_gap = np.array(pairs["score_chosen"]) - np.array(pairs["score_rejected"])
    agreement = float(np.mean(gold_gap > 0))
    assert agreement >= 0.90  # measured: 0.966 at temperature 0.05
    # Independently, Bradley-Terry at temperature T labels a pair with gold gap Δ correctly with probability
    # σ(|Δ| / T): their mean predicts the agreement within the binomial error (sd 0.004 for 2,048 pairs).
    predicted = float(np.mean(1 / (1 + np.exp(-np.abs(gold_gap) / config.bt_temperature))))
    assert agreement == pytest.approx(predicted, abs=0.015)
    # ... and the testbed's own default temperature does not reach the target (0.746): the study sets it.
    default_pairs = default_testbed.train_pairs
    assert np.mean(np.array(default_pairs["score_chosen"]) > np.array(default_pairs["score_rejected"])) < 0.90
