"""The cleaning axis of a study (issue 23): cleaners crossed with methods in one grid, run ids of studies
without cleaning unchanged, study-file checks, and one tiny study end to end on the real engine."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from test_study import TINY_TESTBED  # the engine's tiny testbed

from noisypref.benchmark.config.run_config import parse_run_config
from noisypref.benchmark.study import StudyError, parse_study, plan_runs
from noisypref.benchmark.study.folder import StudyFolder
from noisypref.benchmark.study.results import results_frame
from noisypref.benchmark.study.scheduler import run_study
from noisypref.cleaning import CleaningRecord
from noisypref.cli.validate import describe_methods

BASE = {
    "name": "cleaning_grid",
    "noise": [{"model": "symmetric", "rates": [0.0, 0.2]}],
    "methods": [{"name": "dpo"}, {"name": "cdpo"}],
    "seeds": [0, 1],
}


def test_a_study_without_cleaning_plans_the_runs_it_planned_before():
    without = plan_runs(parse_study(BASE))
    explicit = plan_runs(parse_study({**BASE, "cleaning": ["none"]}))
    assert [run.run_id for run in explicit] == [run.run_id for run in without]
    assert all("cleaning" not in run.config and run.cleaning == "none" for run in without)
    assert "cleaning" not in parse_study(BASE).to_dict()


def test_cleaners_are_crossed_with_methods_rates_and_seeds():
    cleaning = ["none", {"judge": "oracle"}, {"judge": "reward_model", "treatment": "flip", "budget": 0.2}]
    study = parse_study({**BASE, "cleaning": cleaning})
    runs = plan_runs(study)
    assert len(runs) == 3 * 2 * 2 * 2
    by_cleaning: dict[str, list] = {}
    for run in runs:
        by_cleaning.setdefault(run.cleaning, []).append(run)
    assert sorted(by_cleaning) == ["none", "oracle", "reward_model(flip, top 20%)"]
    assert {(run.method, run.noise_rate, run.seed) for run in by_cleaning["oracle"]} == {
        (method, rate, seed) for method in ("dpo", "cdpo") for rate in (0.0, 0.2) for seed in (0, 1)
    }
    # the runs without cleaning are the runs of the same study without the axis
    assert {run.run_id for run in by_cleaning["none"]} == {run.run_id for run in plan_runs(parse_study(BASE))}
    (flip_run, *_) = by_cleaning["reward_model(flip, top 20%)"]
    assert flip_run.config["cleaning"] == {
        "judge": "reward_model",
        "options": {"folds": 4, "steps": 32, "beta": 0.1, "model": None, "batch_size": 8, "max_length": 1024},
        "treatment": "flip",
        "budget": {"fraction": 0.2},
    }
    config = parse_run_config(flip_run.config)
    assert config.cleaning.judge == "reward_model" and config.run_id == flip_run.run_id
    assert "after reward_model(flip, top 20%)" in flip_run.describe()
    # the resolved study reads back to the same grid
    again = parse_study(study.to_dict())
    assert [run.run_id for run in plan_runs(again)] == [run.run_id for run in runs]


def test_cleaning_that_reads_the_flip_record_or_the_realised_rate_makes_a_reference(tmp_path):
    cleaning = [
        "none",
        {"judge": "oracle"},  # removes exactly the flipped pairs: the clean_only oracle
        {"judge": "oracle", "budget": "realised_rate"},  # the same pairs, counted from the record
        {"judge": "oracle", "treatment": "flip"},  # reads the flip record otherwise
        {"judge": "oracle", "budget": 0.1},
        {"judge": "reward_model", "budget": "realised_rate"},  # told how many pairs flipped
        {"judge": "small_loss"},  # a competitor
        {"judge": "small_loss", "budget": 0.2},
    ]
    expected = {
        "none": "none", "oracle": "clean_only", "oracle(realised rate)": "clean_only", "oracle(flip)": "oracle",
        "oracle(top 10%)": "oracle", "reward_model(realised rate)": "known_rate", "small_loss": "none",
        "small_loss(top 20%)": "none",
    }  # fmt: skip
    study = parse_study({**BASE, "cleaning": cleaning})
    runs = plan_runs(study)
    assert {run.cleaning: run.reference for run in runs} == expected
    assert all(run.is_reference == (expected[run.cleaning] != "none") for run in runs)
    # plan.json and results.parquet carry the kind (the rows `noisypref collect` writes, before any run)
    folder = StudyFolder(tmp_path / "study")
    frame = results_frame(folder, study)
    assert dict(zip(frame["cleaning"], frame["reference"])) == expected
    # the kind is not part of a run's config: the runs keep the ids they had without it
    config = parse_run_config(next(run for run in runs if run.cleaning == "oracle(flip)").config)
    assert "reference" not in config.raw["method"] and "reference" not in config.raw["cleaning"]
    # `noisypref validate` names each cleaning reference, what it reads, and nothing else
    pattern = r"^reference cleaning (.+) \((\w+), drawn, never ranked\): reads (the flip record|the realised flip rate)"
    named = {label: (kind, reads) for label, kind, reads in re.findall(pattern, describe_methods(study), re.M)}
    assert named == {
        label: (kind, "the realised flip rate" if kind == "known_rate" else "the flip record")
        for label, kind in expected.items() if kind != "none"
    }  # fmt: skip


def test_score_margin_is_refused_on_the_testbed_with_the_field_the_value_and_the_choices():
    for cleaning, field in (
        ([{"judge": "score_margin"}], "cleaning[0].judge = 'score_margin'"),
        (["none", {"judge": "ensemble", "options": {"members": ["reference_margin", "score_margin"]}}],
         "cleaning[1].options.members[1].judge = 'score_margin'"),
    ):  # fmt: skip
        with pytest.raises(StudyError) as caught:
            parse_study({**BASE, "cleaning": cleaning})
        message = str(caught.value)
        assert field in message and "on the testbed (datasets[0])" in message
        assert "reveal the injected flips" in message
        assert "ensemble, oracle, reference_margin, reward_model, small_loss" in message
    # on a data file the judge is allowed: its scores may come from another source than the labels
    study = parse_study(
        {**BASE, "datasets": [{"kind": "file", "source": "data/pairs.jsonl"}], "models": ["gpt2"],
         "cleaning": [{"judge": "score_margin"}]},
        check_files=False,
    )  # fmt: skip
    assert [entry.label for entry in study.cleaning] == ["score_margin"]


def test_a_label_names_an_entry_and_does_not_change_its_runs():
    labelled = plan_runs(parse_study({**BASE, "cleaning": [{"label": "perfect", "judge": "oracle"}]}))
    plain = plan_runs(parse_study({**BASE, "cleaning": [{"judge": "oracle"}]}))
    assert [run.run_id for run in labelled] == [run.run_id for run in plain]
    assert {run.cleaning for run in labelled} == {"perfect"}


@pytest.mark.parametrize(
    "cleaning, path, message",
    [
        ([{"judge": "llm_judge"}], "cleaning[0].judge", "expected one of"),
        ([{"judge": "small_loss", "options": {"step": 3}}], "cleaning[0].options", "has no option 'step'"),
        ([{"judge": "small_loss", "budget": "half"}], "cleaning[0].budget", "a valid budget"),
        ([{"judge": "small_loss", "treatment": "drop"}], "cleaning[0].treatment", "expected one of"),
        ([{"treatment": "flip"}], "cleaning[0].judge", "missing"),
        ([{"judge": "oracle"}, {"judge": "oracle"}], "cleaning[1]", "a label of its own"),
        ([{"judge": "oracle", "label": "none"}], "cleaning[0].label", "a label other than 'none'"),
        ([{"judge": "oracle", "colour": "red"}], "cleaning[0].colour", "unknown key"),
        ([], "cleaning", "a non-empty list"),
        (["nothing"], "cleaning[0]", "'none' or a mapping"),
    ],
)
def test_bad_cleaning_entries_are_named_with_their_path(cleaning, path, message):
    with pytest.raises(StudyError) as raised:
        parse_study({**BASE, "cleaning": cleaning})
    text = str(raised.value)
    assert path in text and message in text, text


def test_a_run_config_with_an_unknown_key_is_still_refused():
    (run, *_) = plan_runs(parse_study(BASE))
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['cleanup'\\]"):
        parse_run_config({**run.config, "cleanup": {}})


def test_a_tiny_study_cleans_once_per_judge_rate_and_seed_and_trains_every_method_on_it(tmp_path):
    study = parse_study(
        {
            "name": "tiny_cleaning",
            "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
            "noise": [{"model": "symmetric", "rates": [0.25]}],
            "cleaning": ["none", {"judge": "oracle"}, {"judge": "reference_margin", "treatment": "flip"}],
            "methods": [{"name": "dpo"}, {"name": "cdpo"}],
            "training": {"steps": 2, "batch_size": 8, "max_length": 16, "max_prompt_length": 4},
            "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5, "gold_reward": False},
        }
    )
    summary = run_study(study, tmp_path / "out", progress=False, workers=1)
    assert summary.all_succeeded, summary.report()
    frame = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index(["cleaning", "method_label"])
    assert sorted(set(frame.index.get_level_values("cleaning"))) == ["none", "oracle", "reference_margin(flip)"]
    assert frame.loc[("oracle", "dpo"), "cleaning_judge"] == "oracle"
    # exact symmetric flips: round(0.25 * 40) = 10 of the 40 training pairs, all removed by the oracle
    assert frame.loc[("oracle", "dpo"), "cleaning_precision"] == frame.loc[("oracle", "dpo"), "cleaning_recall"] == 1.0
    assert frame.loc[("oracle", "dpo"), "cleaning_pairs_left"] == 30
    assert frame.loc[("reference_margin(flip)", "cdpo"), "cleaning_pairs_left"] == 40
    assert pd.isna(frame.loc[("none", "dpo"), "cleaning_recall"])
    for cleaning in ("oracle", "reference_margin(flip)"):  # one record per judge, shared by both methods
        assert frame.loc[(cleaning, "dpo"), "cleaning_auroc"] == frame.loc[(cleaning, "cdpo"), "cleaning_auroc"]
    records = sorted(tmp_path.rglob("cleaning/record-*"))  # the cache folder beside the study folder
    assert len([path for path in records if path.is_dir()]) == 2
    run_dir = tmp_path / "out" / "runs" / frame.loc[("oracle", "dpo"), "run_id"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["num_train_pairs"] == 30 and result["cleaning"]["num_flagged"] == 10
    record = pd.read_csv(run_dir / "cleaning.csv", dtype={"pair_id": str})
    flips = pd.read_csv(run_dir / "flips.csv", dtype={"pair_id": str})
    assert record["flagged"].tolist() == flips["is_flipped"].tolist()
    pairs = pd.read_parquet(run_dir / "pairs.parquet")  # the pairs trained on: none of them flipped any more
    assert len(pairs) == 30 and not pairs["is_flipped"].any()
    flip_dir = tmp_path / "out" / "runs" / frame.loc[("reference_margin(flip)", "dpo"), "run_id"]
    flip_record = pd.read_csv(flip_dir / "cleaning.csv", dtype={"pair_id": str})
    flip_pairs = pd.read_parquet(flip_dir / "pairs.parquet").set_index("pair_id")
    wrong_after = flips.set_index("pair_id")["is_flipped"] ^ flip_record.set_index("pair_id")["flagged"]
    assert flip_pairs["is_flipped"].to_dict() == wrong_after.to_dict()
    assert CleaningRecord.read(records[0]).num_pairs == 40


def test_the_cleaning_cost_benchmark_runs_in_smoke_mode():
    """benchmarks/cleaning_cost.py on a tiny testbed: every judge of the shipped study and every method
    measured, and the estimate its own arithmetic of the figures it prints."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "cleaning_cost.py"), "--smoke"],
        capture_output=True, text=True, check=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    costs = figures["cpu_seconds"]
    assert {name for name in costs if name.startswith("cleaning ")} == {
        f"cleaning {entry}" for entry in ("none", "oracle", "reference_margin", "reward_model", "small_loss", "ensemble")
    }
    assert {name for name in costs if name.startswith("run ")} == {"run dpo", "run cdpo", "run gamma_dpo"}
    cleaning = sum(seconds for name, seconds in costs.items() if name.startswith("cleaning "))
    runs = sum(seconds for name, seconds in costs.items() if name.startswith("run ")) / 3
    assert figures["runs"] == 108 and figures["points"] == 6
    assert figures["study_cpu_seconds_estimate"] == pytest.approx(costs["testbed"] + 6 * cleaning + 108 * runs)
