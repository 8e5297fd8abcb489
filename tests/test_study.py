"""Studies (noisypref.benchmark.study): validation, grid expansion, running, the results store, the CLI.

Runs go through fake executors that follow the run-config contract (write result.json atomically,
or raise), so these tests need no training; one test uses the real engine on a tiny testbed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from noisypref.benchmark.study import (
    StudyError,
    StudyFolder,
    default_study_path,
    grid_point_count,
    load_study,
    parse_study,
    plan_runs,
    run_study,
)
from noisypref.benchmark.study.folder import claim_run
from noisypref.cli import USER_ERROR_STATUS, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# The run-config contract's keys (scratch/contract.md), written out here rather than taken from the code.
CONTRACT_KEYS = {
    "": {"study", "dataset", "noise", "method", "model", "training", "evaluation", "seed"},
    "dataset": {"kind", "testbed", "source", "split", "heldout_fraction", "max_pairs", "hub_options"},
    "noise": {"model", "rate", "options"},
    "method": {"label", "name", "hyperparameters"},
    "model": {"name", "dtype", "attn_implementation", "gradient_checkpointing", "lora", "reference"},
    "training": {
        "steps", "batch_size", "gradient_accumulation", "learning_rate", "weight_decay", "warmup_ratio",
        "max_grad_norm", "max_length", "max_prompt_length", "log_every", "nan_policy",
    },
    "evaluation": {
        "heldout_accuracy", "noise_detection", "gold_reward", "num_eval_prompts", "samples_per_prompt",
        "temperature", "max_new_tokens", "kl_samples", "benchmarks",
    },
}  # fmt: skip
RESULT_COLUMNS = [
    "study", "run_id", "dataset", "noise_model", "target_flip_rate", "realised_flip_rate", "method_label",
    "method_name", "hyperparameters", "seed", "model", "wall_time_s", "status", "failure_reason",
]  # fmt: skip

SMALL_STUDY = {
    "name": "small",
    "noise": [{"model": "symmetric", "rates": [0, 0.2]}, {"model": "length", "rates": [0, 0.4]}],
    "methods": [{"name": "dpo"}, {"name": "gamma_dpo", "hyperparameters": {"tau": [1, 10]}}],
    "seeds": [0, 1],
}
SMALL_STUDY_RUNS = (
    4 * 3 * 2 - 3 * 2
)  # (2 + 2 rates) x 3 method settings x 2 seeds, less the repeated rate 0: 18


# ---------------------------------------------------------------------------------------------
# Fake executors (the contract's execute_run signature)


class RunFailed(RuntimeError):
    """Stands in for noisypref.benchmark.run.execute.RunFailed."""


def fake_metrics(run_config: dict) -> dict[str, float]:
    rate, seed = run_config["noise"]["rate"], run_config["seed"]
    return {
        "heldout_accuracy": 0.75 - 0.5 * rate + 0.001 * seed,
        "final_loss": 0.6 + rate,
        "realised_flip_rate": rate,
    }


def fake_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    run_dir = Path(run_dir)
    (run_dir / "config.json").write_text(json.dumps(run_config))
    result = {
        "run_id": contract_run_id(run_config),
        "status": "succeeded",
        "metrics": fake_metrics(run_config),
        "config": run_config,
        "seed": run_config["seed"],
        "realised_flip_rate": run_config["noise"]["rate"],
        "wall_time_s": 0.01,
    }
    temporary = run_dir / "result.json.tmp"
    temporary.write_text(json.dumps(result))
    os.replace(temporary, run_dir / "result.json")
    return result


def failing_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """Fails every gamma_dpo run at tau 1 (a RunFailed) and every seed-1 DPO run (any exception)."""
    method = run_config["method"]
    if method["name"] == "gamma_dpo" and method["hyperparameters"]["tau"] == 1.0:
        raise RunFailed("non-finite loss at step 3")
    if method["name"] == "dpo" and run_config["seed"] == 1:
        raise KeyError("boom")
    return fake_execute(run_config, run_dir, cache_dir, device)


def contract_run_id(run_config: dict) -> str:
    identity = {key: value for key, value in run_config.items() if key != "study"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def write_study(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


# ---------------------------------------------------------------------------------------------
# Study files


def expected_run_count(raw: dict) -> int:
    """Runs of a study computed from its YAML alone: the product of the list lengths, with the rate-0
    grid points of all noise entries counted once, and none for references (an entry with
    `reference: clean_only` or a hyperparameter given as realised_flip_rate)."""
    datasets = len(raw.get("datasets", [{}]))
    cleaning = len(raw.get("cleaning", ["none"]))
    seeds = len(raw.get("seeds", [0]))
    models = len(raw.get("models", [{}]))
    method_settings = reference_settings = 0
    for method in raw["methods"]:
        hyperparameters = method.get("hyperparameters", {})
        swept = [len(value) for value in hyperparameters.values() if isinstance(value, list)]
        if "reference" in method or "realised_flip_rate" in hyperparameters.values():
            reference_settings += math.prod(swept)
        else:
            method_settings += math.prod(swept)
    rates = [rate for noise in raw["noise"] for rate in noise["rates"]]
    zero_rates = sum(rate == 0 for rate in rates)
    noise_points = len(rates) - max(0, zero_rates - 1)
    # references run only on the uncleaned pairs, at the rates above 0
    grid = noise_points * cleaning * method_settings + (len(rates) - zero_rates) * reference_settings
    return datasets * grid * seeds * models


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_every_config_file_validates_and_expands_to_the_expected_number_of_runs(path):
    study = load_study(path)
    runs = plan_runs(study)
    assert len(runs) == expected_run_count(yaml.safe_load(path.read_text()))
    assert len({run.run_id for run in runs}) == len(runs)
    assert {run.method for run in runs} == {variant.label for variant in study.method_variants()}


def test_config_files_include_the_issue_studies():
    assert {path.name for path in CONFIGS} >= {
        "default.yaml",
        "noise_models.yaml",
        "tau_sweep.yaml",
        "hub_example.yaml",
    }


def test_the_packaged_default_study_is_configs_default_yaml():
    assert default_study_path().read_bytes() == (REPO / "configs" / "default.yaml").read_bytes()


def test_the_default_study_is_the_design_default():
    study = load_study(default_study_path())
    runs = plan_runs(study)
    assert len(study.seeds) >= 6  # issue 22: at least six seeds
    competitors = [run for run in runs if not run.is_reference]
    references = [run for run in runs if run.is_reference]
    # testbed x symmetric at 3 rates x 7 methods x 6 seeds (issue 22's regime: docs/testbed.md), plus the
    # three references at the 2 rates above 0
    assert len(competitors) == 1 * 3 * 7 * 6 and len(references) == 1 * 2 * 3 * 6
    assert {run.method for run in competitors} == {
        "dpo",
        "cdpo",
        "robust_dpo",
        "ipo",
        "simpo",
        "gamma_dpo",
        "gamma_simpo",
    }
    assert {(run.method, run.reference) for run in references} == {
        ("clean_only", "clean_only"),
        ("cdpo_known_rate", "known_rate"),
        ("robust_dpo_known_rate", "known_rate"),
    }
    # with and without dynamic margins, each against its own base at the same beta
    assert {(run.method, run.base_label) for run in competitors if run.base_label} == {
        ("gamma_dpo", "dpo"),
        ("gamma_simpo", "simpo"),
    }
    assert sorted({run.noise_rate for run in runs}) == [0.0, 0.2, 0.4]
    assert sorted({run.noise_rate for run in references}) == [0.2, 0.4]
    assert {run.seed for run in runs} == set(range(6))
    assert {run.config["dataset"]["kind"] for run in runs} == {"testbed"}
    assert {run.config["model"]["name"] for run in runs} == {"testbed"}


def test_small_gap_regime_is_the_old_default_with_robust_dpo_at_half_c_beside_each_gamma_dpo():
    """configs/small_gap_regime.yaml: today's regime before issue 22 (TestbedConfig's label temperature 0.5,
    32 steps x 64 pairs at lr 2e-3, beta 0.1), and for each gamma_dpo an rDPO at eps = c/2, with
    c = gamma0^2 s'(gamma0) / (gamma0^2 s'(gamma0) + tau) written out here (docs/methods.md)."""
    study = load_study(REPO / "configs" / "small_gap_regime.yaml")
    runs = plan_runs(study)
    config = runs[0].config
    assert "bt_temperature" not in yaml.safe_load((REPO / "configs" / "small_gap_regime.yaml").read_text())["datasets"][0]["testbed"]
    assert config["dataset"]["testbed"]["bt_temperature"] == 0.5
    assert config["dataset"]["testbed"]["num_train_pairs"] == 2048
    assert (config["training"]["steps"], config["training"]["batch_size"], config["training"]["learning_rate"]) == (32, 64, 2e-3)
    assert sorted({run.noise_rate for run in runs}) == [0.0, 0.1, 0.2, 0.3, 0.4] and {run.seed for run in runs} == set(range(6))
    variants = study.method_variants()
    gammas = [variant.hyperparameters for variant in variants if variant.name == "gamma_dpo"]
    epsilons = [variant.hyperparameters["label_smoothing"] for variant in variants if variant.name == "robust_dpo"]
    assert len(gammas) == 2
    for hyperparameters in gammas:
        assert hyperparameters["beta"] == 0.1
        gamma0, tau = hyperparameters["gamma0"], hyperparameters["tau"]
        slope = gamma0**2 * math.exp(-gamma0) / (1 + math.exp(-gamma0)) ** 2
        half_c = slope / (slope + tau) / 2
        assert min(abs(epsilon - half_c) for epsilon in epsilons) < 5e-4  # written to 3-4 decimals


def test_noise_models_study_covers_the_five_models_at_two_rates_for_dpo_and_gamma_dpo():
    runs = plan_runs(load_study(REPO / "configs" / "noise_models.yaml"))
    noisy = {(run.noise_model, run.noise_rate) for run in runs if run.noise_rate > 0}
    models = {"symmetric", "confidence", "length", "adversarial", "annotators"}
    assert noisy == {(model, rate) for model in models for rate in (0.2, 0.4)}
    assert {run.method for run in runs if not run.is_reference} == {"dpo", "gamma_dpo"}
    assert {run.method for run in runs if run.is_reference} == {"clean_only", "cdpo_known", "rdpo_known"}


def test_hub_example_names_a_hub_model_and_dataset():
    study = load_study(REPO / "configs" / "hub_example.yaml")
    run = plan_runs(study)[0]
    assert run.config["dataset"]["kind"] == "hub" and "/" in run.config["dataset"]["source"]
    assert run.config["model"]["name"] == "Qwen/Qwen2.5-0.5B-Instruct"


def test_every_problem_is_reported_at_once_with_path_value_and_what_is_allowed():
    raw = {
        "name": "broken",
        "colour": "red",
        "datasets": [{"kind": "testbed", "testbed": {"num_topics": 0}}],
        "noise": [
            {"model": "symetric", "rates": [0.1]},
            {"model": "symmetric", "rates": [0.2, 1.5], "options": {"mode": "sometimes"}},
        ],
        "methods": [
            {"name": "dpo"},
            {"name": "dpoo"},
            {"name": "gamma_dpo", "hyperparameters": {"tau": [1, -3, 10], "betta": 0.1}},
        ],
        "seeds": [0, "one"],
        "training": {"steps": 0, "learning_rate": 1e-3},
        "evaluation": {"gold_reward": "yes"},
    }
    with pytest.raises(StudyError) as caught:
        parse_study(raw, "broken.yaml")
    message = str(caught.value)
    expected = [
        ("colour", "unknown key"),
        ("datasets[0].testbed.num_topics = 0", "integer >= 1"),
        ("noise[0].model = 'symetric'", "'symmetric'"),
        ("noise[1].rates[1] = 1.5", "<= 1"),
        ("noise[1].options.mode = 'sometimes'", "'exact'"),
        ("methods[1].name = 'dpoo'", "'gamma_dpo'"),
        ("methods[2].hyperparameters.tau[1] = -3.0", "> 0"),
        ("methods[2].hyperparameters.betta", "did you mean 'beta'"),
        ("seeds[1] = 'one'", "an integer >= 0"),
        ("training.steps = 0", "an integer >= 1"),
        ("evaluation.gold_reward = 'yes'", "true or false"),
    ]
    for located, allowed in expected:
        line = next((line for line in message.splitlines() if located in line), None)
        assert line is not None, f"{located!r} not reported in:\n{message}"
        assert allowed in line, line
    assert len(caught.value.problems) == len(expected)
    assert message.startswith(f"broken.yaml is not a valid study ({len(expected)} problems)")


def test_missing_sections_and_wrong_shapes_are_reported():
    with pytest.raises(StudyError) as caught:
        parse_study({"methods": {"name": "dpo"}, "models": [{"name": "testbed"}, {"name": "testbed"}]})
    problems = caught.value.problems
    assert any(problem.startswith("name: missing") for problem in problems)
    assert any(problem.startswith("noise: missing") for problem in problems)
    assert any(
        problem.startswith("methods = {'name': 'dpo'}: expected a non-empty list") for problem in problems
    )
    assert any(problem.startswith("models[1].name = 'testbed'") for problem in problems)


def test_impossible_combinations_are_rejected():
    raw = {
        "name": "impossible",
        "datasets": [{"kind": "hub", "source": "org/data", "heldout_fraction": 0.1}],
        "noise": [
            {"model": "annotators", "rates": [0.2], "options": {"panel_size": 3, "accuracy": [0.9, 0.8]}}
        ],
        "methods": [{"name": "dpo", "training": {"max_prompt_length": 600}}],
        "training": {"batch_size": 10, "gradient_accumulation": 4},
    }
    with pytest.raises(StudyError) as caught:
        parse_study(raw)
    message = str(caught.value)
    assert "models[0].name = 'testbed'" in message  # the testbed policy cannot train on hub data
    assert "noise[0].options: these options do not work together" in message
    assert "methods[0].training.max_prompt_length = 600" in message
    assert "training.batch_size = 10: expected a multiple of gradient_accumulation = 4" in message


def test_file_datasets_are_checked_where_the_study_runs(tmp_path, monkeypatch):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    monkeypatch.chdir(tmp_path)
    raw = {
        **SMALL_STUDY,
        "datasets": [{"kind": "file", "source": "pairs.jsonl"}],
        "models": [{"name": "org/model"}],
    }
    run = plan_runs(parse_study(raw))[0]
    assert run.dataset == "pairs" and run.model == "org/model"
    assert run.config["dataset"] == {
        "kind": "file", "testbed": None, "source": "pairs.jsonl", "split": None, "heldout_fraction": 0.1,
        "max_pairs": None, "hub_options": {},
    }  # fmt: skip
    missing = {**raw, "datasets": [{"kind": "file", "source": "absent.jsonl"}]}
    with pytest.raises(StudyError, match=r"datasets\[0\]\.source = 'absent.jsonl': expected an existing"):
        parse_study(missing)
    assert parse_study(missing, check_files=False).datasets[0].source == "absent.jsonl"


def test_yaml_reads_1e_minus_3_as_a_number_and_rejects_repeated_keys(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: s\nnoise: [{model: symmetric, rates: [0.1]}]\nmethods: [{name: dpo}]\ntraining: {learning_rate: 1e-4}\n"
    )
    assert load_study(path).training.learning_rate == 1e-4
    path.write_text("name: s\nname: t\nnoise: [{model: symmetric, rates: [0.1]}]\nmethods: [{name: dpo}]\n")
    with pytest.raises(ValueError, match="found the key 'name' twice"):
        load_study(path)


def test_sweeps_expand_to_labelled_method_settings():
    raw = {
        **SMALL_STUDY,
        "methods": [
            {"name": "gamma_dpo", "hyperparameters": {"tau": [1, 3, 10]}},
            {"label": "g", "name": "gamma_dpo", "hyperparameters": {"gamma0": [0.5, 2], "tau": [0.3, 30]}},
        ],
    }
    variants = parse_study(raw).method_variants()
    assert [variant.label for variant in variants] == [
        "gamma_dpo(tau=1)", "gamma_dpo(tau=3)", "gamma_dpo(tau=10)",
        "g(gamma0=0.5, tau=0.3)", "g(gamma0=0.5, tau=30)", "g(gamma0=2, tau=0.3)", "g(gamma0=2, tau=30)",
    ]  # fmt: skip
    # Unswept hyperparameters take the method's defaults (published γ-PO values: Q 2048, K 256).
    assert variants[1].hyperparameters["tau"] == 3.0
    assert variants[1].hyperparameters["queue_size"] == 2048
    assert variants[1].hyperparameters["candidates"] == 256


def test_a_method_listed_twice_needs_distinct_labels():
    twice = {**SMALL_STUDY, "methods": [{"name": "dpo"}, {"name": "dpo", "hyperparameters": {"beta": 0.3}}]}
    with pytest.raises(
        StudyError, match=r"methods\[1\]\.label: missing: 'dpo' also labels runs of methods\[0\]"
    ):
        parse_study(twice)
    clash = {**SMALL_STUDY, "methods": [{"name": "gamma_dpo", "hyperparameters": {"tau": [1, 3]}},
                                        {"label": "gamma_dpo(tau=3)", "name": "gamma_dpo"}]}  # fmt: skip
    with pytest.raises(StudyError, match=r"methods\[1\]\.label = 'gamma_dpo\(tau=3\)'"):
        parse_study(clash)
    labelled = {
        **SMALL_STUDY,
        "methods": [{"name": "dpo"}, {"label": "dpo_b03", "name": "dpo", "hyperparameters": {"beta": 0.3}}],
    }
    assert [variant.label for variant in parse_study(labelled).method_variants()] == ["dpo", "dpo_b03"]


def test_run_configs_have_exactly_the_contract_shape_and_id():
    runs = plan_runs(parse_study(SMALL_STUDY))
    for run in runs:
        assert set(run.config) == CONTRACT_KEYS[""]
        for section, keys in CONTRACT_KEYS.items():
            if section:
                assert set(run.config[section]) == keys, section
        assert run.config["study"] == "small"
        assert run.run_id == contract_run_id(run.config)
        assert json.loads(json.dumps(run.config)) == run.config
    assert (
        runs[0].config["training"]["steps"] == 200 and runs[0].config["evaluation"]["num_eval_prompts"] == 256
    )


def test_rate_zero_runs_are_shared_by_all_noise_models():
    study = parse_study(SMALL_STUDY)
    runs = plan_runs(study)
    assert grid_point_count(study) == 4 * 3 * 2
    assert len(runs) == SMALL_STUDY_RUNS
    zero = [run for run in runs if run.noise_rate == 0]
    assert len(zero) == 3 * 2 and all(run.noise_model == "none" and run.grid_points == 2 for run in zero)
    assert {run.config["noise"]["rate"] for run in zero} == {0.0}


def test_one_and_one_point_zero_name_the_same_run():
    as_int = {**SMALL_STUDY, "methods": [{"name": "gamma_dpo", "hyperparameters": {"tau": 3}}]}
    as_float = {**SMALL_STUDY, "methods": [{"name": "gamma_dpo", "hyperparameters": {"tau": 3.0}}]}
    assert [run.run_id for run in plan_runs(parse_study(as_int))] == [
        run.run_id for run in plan_runs(parse_study(as_float))
    ]


def test_the_resolved_study_reads_back_to_the_same_runs(tmp_path):
    study = parse_study(
        {
            **SMALL_STUDY,
            "methods": [
                *SMALL_STUDY["methods"],
                {"label": "long", "name": "dpo", "training": {"steps": 400}},
            ],
        }
    )
    folder = StudyFolder(tmp_path)
    folder.prepare(study)
    reread = folder.load_study()
    assert [run.config for run in plan_runs(reread)] == [run.config for run in plan_runs(study)]
    assert {run.config["training"]["steps"] for run in plan_runs(study) if run.method == "long"} == {400}


# ---------------------------------------------------------------------------------------------
# Running


def test_run_study_runs_every_run_once_and_a_rerun_skips_them(tmp_path):
    study = parse_study(SMALL_STUDY)
    summary = run_study(study, tmp_path / "out", executor=fake_execute, progress=False)
    assert (summary.succeeded, summary.failed, summary.already_done) == (SMALL_STUDY_RUNS, 0, 0)
    assert summary.all_succeeded
    run_dirs = sorted((tmp_path / "out" / "runs").iterdir())
    assert len(run_dirs) == SMALL_STUDY_RUNS
    assert all(
        (run_dir / "result.json").is_file() and (run_dir / "run.log").is_file() for run_dir in run_dirs
    )
    mtimes = {run_dir.name: (run_dir / "result.json").stat().st_mtime_ns for run_dir in run_dirs}

    again = run_study(study, tmp_path / "out", executor=failing_execute, progress=False)
    assert (again.succeeded, again.failed, again.already_done) == (0, 0, SMALL_STUDY_RUNS)
    assert mtimes == {run_dir.name: (run_dir / "result.json").stat().st_mtime_ns for run_dir in run_dirs}


def test_results_parquet_has_one_row_per_run_with_every_column(tmp_path):
    study = parse_study(SMALL_STUDY)
    run_study(study, tmp_path, executor=fake_execute, progress=False)
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert len(frame) == SMALL_STUDY_RUNS and frame["run_id"].is_unique
    assert set(RESULT_COLUMNS) <= set(frame.columns)
    hyperparameter_columns = {
        "hp_beta",
        "hp_gamma0",
        "hp_tau",
        "hp_queue_size",
        "hp_candidates",
        "hp_solver",
        "hp_iterations",
    }
    assert hyperparameter_columns <= set(frame.columns)
    assert {"heldout_accuracy", "final_loss"} <= set(frame.columns)
    assert set(frame["status"]) == {"succeeded"}
    row = frame[
        (frame["method_label"] == "gamma_dpo(tau=10)")
        & (frame["target_flip_rate"] == 0.4)
        & (frame["seed"] == 1)
    ]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["noise_model"] == "length" and row["method_name"] == "gamma_dpo" and row["model"] == "testbed"
    assert row["dataset"] == "testbed" and row["study"] == "small"
    assert row["heldout_accuracy"] == pytest.approx(0.75 - 0.5 * 0.4 + 0.001)
    assert row["realised_flip_rate"] == pytest.approx(0.4)
    assert row["hp_tau"] == 10.0 and json.loads(row["hyperparameters"])["tau"] == 10.0
    assert math.isnan(frame.loc[frame["method_name"] == "dpo", "hp_tau"].iloc[0])
    assert set(frame.loc[frame["target_flip_rate"] == 0, "noise_model"]) == {"none"}


def test_a_failing_run_is_recorded_and_the_others_complete(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "test_study:failing_execute")
    study_file = write_study(tmp_path / "small.yaml", SMALL_STUDY)
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--out", str(out)]) == 1
    frame = pd.read_parquet(out / "results.parquet")
    failed = frame[frame["status"] == "failed"]
    # gamma_dpo(tau=1) at 3 rates x 2 seeds, and dpo seed 1 at 3 rates
    assert len(failed) == 6 + 3
    assert (frame["status"] == "succeeded").sum() == SMALL_STUDY_RUNS - 9
    tau_one = failed[failed["method_label"] == "gamma_dpo(tau=1)"]
    assert set(tau_one["failure_reason"]) == {"non-finite loss at step 3"}
    assert set(failed[failed["method_name"] == "dpo"]["failure_reason"]) == {"KeyError: 'boom'"}
    failure = json.loads((out / "runs" / tau_one["run_id"].iloc[0] / "failure.json").read_text())
    assert failure["reason"] == "non-finite loss at step 3" and "RunFailed" in failure["traceback"]
    assert not (out / "runs" / tau_one["run_id"].iloc[0] / "result.json").exists()
    printed = capsys.readouterr().out
    assert f"{SMALL_STUDY_RUNS - 9} succeeded, 9 failed, 0 skipped as already done" in printed

    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert f"{SMALL_STUDY_RUNS} runs: {SMALL_STUDY_RUNS - 9} done, 0 running, 9 failed, 0 pending" in status
    assert status.count("non-finite loss at step 3") == 6

    # Running again retries the failed runs only.
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "test_study:fake_execute")
    assert main(["run", str(study_file), "--out", str(out)]) == 0
    assert f"9 succeeded, 0 failed, {SMALL_STUDY_RUNS - 9} skipped as already done" in capsys.readouterr().out
    assert set(pd.read_parquet(out / "results.parquet")["status"]) == {"succeeded"}


def test_status_shows_done_running_failed_and_pending(tmp_path, capsys):
    study = parse_study(SMALL_STUDY)
    runs = plan_runs(study)
    folder = StudyFolder(tmp_path)
    folder.prepare(study)
    run_study(
        study,
        tmp_path,
        executor=fake_execute,
        run_ids=[runs[0].run_id, runs[1].run_id],
        collect=False,
        progress=False,
    )
    run_study(
        study, tmp_path, executor=failing_execute, run_ids=[runs[2].run_id], collect=False, progress=False
    )
    held = folder.run_dir(runs[3].run_id)
    with claim_run(held, wait=False) as claimed:
        assert claimed
        assert main(["status", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert f"{SMALL_STUDY_RUNS} runs: 2 done, 1 running, 1 failed, {SMALL_STUDY_RUNS - 4} pending" in output
    assert f"running  {runs[3].run_id}" in output and f"failed   {runs[2].run_id}" in output
    assert main(["collect", str(tmp_path)]) == 0
    statuses = pd.read_parquet(tmp_path / "results.parquet")["status"].value_counts().to_dict()
    assert statuses == {"succeeded": 2, "failed": 1, "pending": SMALL_STUDY_RUNS - 3}


def test_a_run_held_by_another_process_is_waited_for_not_computed_twice(tmp_path):
    study = parse_study(SMALL_STUDY)
    runs = plan_runs(study)
    folder = StudyFolder(tmp_path)
    folder.prepare(study)
    held_dir = folder.run_dir(runs[0].run_id)
    claimed = threading.Event()

    def other_process() -> None:  # holds the run's lock (its own open file, as another process would)
        with claim_run(held_dir, wait=False):
            claimed.set()
            time.sleep(1.0)
            fake_execute(runs[0].config, held_dir, tmp_path)

    other = threading.Thread(target=other_process)
    other.start()
    claimed.wait()
    executed = []

    def counting_execute(run_config, run_dir, cache_dir, device=None):
        executed.append(Path(run_dir).name)
        return fake_execute(run_config, run_dir, cache_dir, device)

    summary = run_study(study, tmp_path, executor=counting_execute, progress=False)
    other.join()
    assert (summary.done_elsewhere, summary.succeeded, summary.failed) == (1, SMALL_STUDY_RUNS - 1, 0)
    assert runs[0].run_id not in executed and len(executed) == len(set(executed)) == SMALL_STUDY_RUNS - 1
    assert summary.all_succeeded


def test_an_output_folder_holding_another_study_is_refused_without_force(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "test_study:fake_execute")
    first = write_study(tmp_path / "first.yaml", SMALL_STUDY)
    second = write_study(tmp_path / "second.yaml", {**SMALL_STUDY, "seeds": [0, 1, 2]})
    out = tmp_path / "out"
    assert main(["run", str(first), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", str(second), "--out", str(out)]) == USER_ERROR_STATUS
    error = capsys.readouterr().err
    assert "already holds a different study" in error and "differing: seeds" in error
    assert main(["run", str(second), "--out", str(out), "--force"]) == 0
    # The runs of seeds 0 and 1 are unchanged and reused; only seed 2 ran.
    assert (
        f"{SMALL_STUDY_RUNS // 2} succeeded, 0 failed, {SMALL_STUDY_RUNS} skipped as already done"
        in capsys.readouterr().out
    )


def test_emit_jobs_prints_one_command_per_unfinished_run_and_run_id_runs_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "test_study:fake_execute")
    study_file = write_study(tmp_path / "small.yaml", SMALL_STUDY)
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--out", str(out), "--emit-jobs"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == SMALL_STUDY_RUNS
    run_ids = [command.split("--run-id ")[1] for command in commands]
    assert sorted(run_ids) == sorted(run.run_id for run in plan_runs(parse_study(SMALL_STUDY)))
    assert all(f"--out {out}" in command and "-m noisypref run" in command for command in commands)

    assert main(["run", str(out / "study.yaml"), "--out", str(out), "--run-id", run_ids[0]]) == 0
    assert [path.name for path in (out / "runs").iterdir() if (path / "result.json").exists()] == [run_ids[0]]
    assert "1 runs in" in capsys.readouterr().out
    assert main(["run", str(study_file), "--out", str(out), "--emit-jobs"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == SMALL_STUDY_RUNS - 1
    assert main(["run", str(study_file), "--out", str(out), "--run-id", "000000000000"]) == USER_ERROR_STATUS


def test_validate_prints_the_grid(tmp_path, capsys):
    study_file = write_study(tmp_path / "small.yaml", SMALL_STUDY)
    assert main(["validate", str(study_file)]) == 0
    output = capsys.readouterr().out
    assert "1 dataset(s) x 4 (noise model, rate) x 3 method setting(s) x 2 seed(s) x 1 model(s)" in output
    assert f"= 24 grid points -> {SMALL_STUDY_RUNS} runs (6 grid points merged" in output
    table = output.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["run_id", "dataset", "noise", "rate", "method", "seed", "model"]
    assert len(table) == 1 + SMALL_STUDY_RUNS

    broken = write_study(
        tmp_path / "broken.yaml", {**SMALL_STUDY, "seeds": [-1], "methods": [{"name": "nope"}]}
    )
    assert main(["validate", str(broken)]) == USER_ERROR_STATUS
    error = capsys.readouterr().err
    assert "seeds[0] = -1" in error and "methods[0].name = 'nope'" in error


def test_workers_and_devices_must_agree(tmp_path):
    with pytest.raises(ValueError, match="one process runs per listed device"):
        run_study(parse_study(SMALL_STUDY), tmp_path, executor=fake_execute, workers=3, devices=["0", "1"])


# ---------------------------------------------------------------------------------------------
# The real engine, on a testbed small enough for seconds


def _engine_missing_reason() -> str | None:
    try:
        import noisypref.benchmark.run.execute  # noqa: F401
    except ImportError as error:
        return f"the engine (noisypref.benchmark.run.execute) cannot be imported: {error}"
    return None


TINY_TESTBED = {
    "num_topics": 2, "num_words": 8, "relevant_words_per_topic": 2, "off_topic_words_per_topic": 2,
    "max_response_words": 4, "hidden_size": 16, "num_attention_heads": 2, "num_layers": 1, "intermediate_size": 32,
    "sft_steps": 5, "sft_batch_size": 8, "num_train_pairs": 40, "num_heldout_pairs": 16, "num_eval_prompts": 8,
    "max_new_tokens": 5,
}  # fmt: skip


@pytest.mark.skipif(_engine_missing_reason() is not None, reason=str(_engine_missing_reason()))
def test_the_real_engine_runs_a_tiny_study(tmp_path):
    study = parse_study(
        {
            "name": "tiny",
            "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
            "noise": [{"model": "symmetric", "rates": [0.2]}],
            "methods": [{"name": "dpo"}, {"name": "gamma_dpo", "hyperparameters": {"tau": 1.0}}],
            "training": {"steps": 2, "batch_size": 8, "max_length": 16, "max_prompt_length": 4},
            "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
        }
    )
    summary = run_study(study, tmp_path / "out", progress=False)
    assert summary.all_succeeded, summary.report()
    frame = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert len(frame) == 2 and set(frame["status"]) == {"succeeded"}
    # exact symmetric flips: round(0.2 * 40) = 8 of the 40 training pairs
    assert frame["realised_flip_rate"].tolist() == [8 / 40, 8 / 40]
    assert frame["heldout_accuracy"].between(0, 1).all()
    assert {"noise_detection_auroc", "gold_win_rate", "final_loss"} <= set(frame.columns)
    assert (tmp_path / ".cache").is_dir()  # the contract's default cache beside the study folder
    from noisypref.noise_injection import FlipRecord

    for run_id in frame["run_id"]:  # a run folder's flips.csv reads back with result.json's noise summary
        record = FlipRecord.read(tmp_path / "out" / "runs" / run_id / "flips.csv")
        assert (record.model, record.num_flipped, record.num_pairs) == ("symmetric", 8, 40)
    # the declarations of every metric in the table, next to it
    declarations = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert declarations["heldout_accuracy"]["direction"] == "higher"
    assert declarations["heldout_accuracy"]["bounds"] == [0.0, 1.0]
    assert declarations["train_accuracy"]["noisy_labels"] and declarations["train_accuracy"]["diagnostic"]
    assert declarations["gold_reward_reference_mean"]["diagnostic"]
    assert {"final_loss", "gold_win_rate", "noise_detection_auroc"} <= set(declarations)
    # per-item values: a mean metric is the mean of its items, the same items for every method
    items = {
        run_id: pd.read_parquet(tmp_path / "out" / "runs" / run_id / "items.parquet") for run_id in frame["run_id"]
    }
    for run_id, run_items in items.items():
        row = frame.set_index("run_id").loc[run_id]
        held_out = run_items[run_items["metric"] == "heldout_accuracy"]
        assert len(held_out) == 16 and held_out["value"].isin([0.0, 0.5, 1.0]).all()
        assert held_out["value"].mean() == pytest.approx(row["heldout_accuracy"], abs=1e-12)
        wins = run_items[run_items["metric"] == "gold_win_rate"]
        assert len(wins) == 8 and wins["value"].mean() == pytest.approx(row["gold_win_rate"], abs=1e-12)
    first, second = (set(run_items["item"]) for run_items in items.values())
    assert first == second


def test_run_ids_do_not_depend_on_the_order_of_the_study_file():
    runs = plan_runs(parse_study(SMALL_STUDY))
    reordered = parse_study(dict(reversed(list(SMALL_STUDY.items()))))
    assert [run.run_id for run in plan_runs(reordered)] == [run.run_id for run in runs]


@pytest.mark.parametrize("option", [{"ld_alpha": 0.5}, {"use_weighting": True}])
def test_wpo_and_ld_dpo_options_load_from_a_study_file(option):
    """The engine computes their per-token terms (issue 26; they were refused at load before)."""
    raw = {**SMALL_STUDY, "methods": [{"name": "dpo"}, {"label": "with_option", "name": "dpo", "hyperparameters": option}]}
    runs = plan_runs(parse_study(raw))
    with_option = [run for run in runs if run.config["method"]["label"] == "with_option"]
    assert with_option and all(option.items() <= run.config["method"]["hyperparameters"].items() for run in with_option)
    plain_ids = {run.run_id for run in plan_runs(parse_study({**SMALL_STUDY, "methods": [{"name": "dpo"}]}))}
    assert plain_ids <= {run.run_id for run in runs}  # the runs without the option keep their ids
    assert not plain_ids & {run.run_id for run in with_option}


@pytest.mark.parametrize(
    ("option", "allowed"), [({"ld_alpha": 1.5}, "[0.0, 1.0]"), ({"use_weighting": "yes"}, "true or false")]
)
def test_wpo_and_ld_dpo_options_are_checked_at_load(option, allowed):
    raw = {**SMALL_STUDY, "methods": [{"name": "dpo", "hyperparameters": option}]}
    with pytest.raises(StudyError) as caught:
        parse_study(raw)
    (problem,) = caught.value.problems
    assert problem.startswith("methods[0].hyperparameters") and allowed in problem
