"""Acceptance: the whole run (testbed, noise, DPO training, evaluation) learns the gold preference and
is hurt by label flips; result.json carries every metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from noisypref.benchmark.config.run_config import default_run_config, run_id
from noisypref.benchmark.run.execute import RunFailed, execute_run

EVALUATION_METRICS = {
    "heldout_accuracy",
    "noise_detection_auroc",
    "gold_reward_mean",
    "gold_reward_reference_mean",
    "gold_win_rate",
    "gold_lc_win_rate",
    "kl_estimate",
    "final_loss",
    "train_accuracy",
    "realised_flip_rate",
    "label_gold_agreement",
}


@pytest.fixture(scope="module")
def dpo_runs(default_testbed, engine_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Plain DPO on the default testbed (DESIGN §6 settings), seed 0, at 0 % and 40 % symmetric flips."""
    runs = {}
    for rate in (0.0, 0.4):
        config = default_run_config(noise={"model": "symmetric", "rate": rate, "options": {"mode": "exact"}})
        run_dir = tmp_path_factory.mktemp(f"run_{rate}")
        runs[rate] = (execute_run(config, run_dir, engine_cache_dir, device="cpu"), run_dir, config)
    return runs


def test_dpo_learns_the_gold_preference_without_noise(dpo_runs) -> None:
    metrics = dpo_runs[0.0][0]["metrics"]
    # The reference policy scores 0.5 on both (ties count ½); calibrated on seeds 0-2: 0.74-0.76 and 0.96-0.98.
    assert metrics["heldout_accuracy"] > 0.65
    assert metrics["gold_win_rate"] > 0.8
    assert metrics["gold_reward_mean"] > metrics["gold_reward_reference_mean"] + 0.5
    assert metrics["kl_estimate"] > 0


def test_flips_hurt_dpo(dpo_runs) -> None:
    clean, noisy = dpo_runs[0.0][0]["metrics"], dpo_runs[0.4][0]["metrics"]
    assert noisy["realised_flip_rate"] == pytest.approx(0.4, abs=1e-3)
    assert noisy["heldout_accuracy"] < clean["heldout_accuracy"] - 0.05
    assert noisy["gold_win_rate"] < clean["gold_win_rate"]
    # The final reward gap flags flipped training pairs better than chance.
    assert noisy["noise_detection_auroc"] > 0.53  # seeds 0-2: 0.556-0.562
    assert "noise_detection_auroc_gold" not in clean  # nothing flipped: no AUROC


def test_premise_metrics_recomputed_from_the_testbed_pairs_and_flips_csv(dpo_runs, default_testbed) -> None:
    """label_gold_agreement and noise_detection_auroc_gold by hand: the testbed's gold rewards of each
    pair, flipped where flips.csv says so, and a brute-force count over (flipped, clean) pairs."""
    clean = default_testbed.train_pairs
    for rate, (result, run_dir, _) in dpo_runs.items():
        with open(run_dir / "flips.csv") as file:
            flipped = {row["pair_id"]: row["is_flipped"] == "True" for row in csv.DictReader(file)}
        noisy_gaps, flags = [], []
        for row in clean:
            gap = row["score_chosen"] - row["score_rejected"]
            noisy_gaps.append(-gap if flipped[row["pair_id"]] else gap)
            flags.append(flipped[row["pair_id"]])
        metrics = result["metrics"]
        assert metrics["label_gold_agreement"] == pytest.approx(sum(gap > 0 for gap in noisy_gaps) / len(noisy_gaps))
        if rate == 0:
            # The testbed's Bradley-Terry labels at temperature 0.5 (docs/testbed.md: 74.6 % agree).
            assert metrics["label_gold_agreement"] == pytest.approx(0.746, abs=0.005)
            continue
        flipped_gaps = np.sort([gap for gap, flag in zip(noisy_gaps, flags) if flag])
        clean_gaps = np.array([gap for gap, flag in zip(noisy_gaps, flags) if not flag])
        # score −gap: a flipped pair wins against each clean pair with a larger gap (no ties in the testbed)
        wins = sum(int((clean_gaps > gap).sum()) for gap in flipped_gaps)
        assert metrics["noise_detection_auroc_gold"] == pytest.approx(wins / (len(flipped_gaps) * len(clean_gaps)))


def test_result_files_hold_every_metric_config_and_versions(dpo_runs) -> None:
    result, run_dir, config = dpo_runs[0.4]
    written = json.loads((run_dir / "result.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert EVALUATION_METRICS <= set(written["metrics"])
    assert written["run_id"] == run_id(config) and written["status"] == "succeeded"
    assert written["config"] == config and written["seed"] == 0
    assert {"torch", "transformers", "datasets", "noisypref"} <= set(written["versions"])
    assert written["wall_time_s"] > 0
    assert json.loads((run_dir / "config.json").read_text()) == config
    with open(run_dir / "flips.csv") as file:
        flips = list(csv.DictReader(file))
    assert len(flips) == 2048 and sum(row["is_flipped"] == "True" for row in flips) == round(0.4 * 2048)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(10, 201, 10))


def test_invalid_configs_name_the_field_and_failures_leave_no_result(
    default_testbed, engine_cache_dir, tmp_path
) -> None:
    with pytest.raises(ValueError, match=r"training\.steps = 0"):
        execute_run(
            default_run_config(training={**default_run_config()["training"], "steps": 0}),
            tmp_path,
            engine_cache_dir,
        )
    with pytest.raises(ValueError, match=r"noise\.rate = 1\.5"):
        execute_run(
            default_run_config(noise={"model": "symmetric", "rate": 1.5, "options": {}}),
            tmp_path,
            engine_cache_dir,
        )
    with pytest.raises(ValueError, match="method"):
        execute_run(
            default_run_config(method={"label": "x", "name": "dpo", "hyperparameters": {"beta": -1}}),
            tmp_path,
            engine_cache_dir,
        )
    with pytest.raises(ValueError, match="missing key"):
        execute_run({"seed": 0}, tmp_path, engine_cache_dir)

    diverging = default_run_config(
        method={"label": "dpo", "name": "dpo", "hyperparameters": {"beta": 1e30}},
        training={**default_run_config()["training"], "steps": 5, "learning_rate": 1e30, "log_every": 1},
    )
    with pytest.raises(RunFailed, match="non-finite (loss|gradient) at step"):
        execute_run(diverging, tmp_path / "diverging", engine_cache_dir, device="cpu")
    assert not (tmp_path / "diverging" / "result.json").exists()
