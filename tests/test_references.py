"""References (noisypref.benchmark.config.references): the clean_only oracle, known-rate variants, the
with/without pairing of dynamic margins, and what results.parquet says of each.

The oracle's and the known-rate runs' data are checked against flips.csv read back with pandas (not
the engine's FlipRecord), and the labels of a rate-0 run of the same testbed; the pairing by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from test_study import SMALL_STUDY, TINY_TESTBED, fake_execute, write_study

import noisypref.benchmark.run.execute as execute_module
import noisypref.benchmark.run.prepare as prepare_module
from noisypref.benchmark.study import StudyError, load_study, parse_study, plan_runs, run_study
from noisypref.cli import USER_ERROR_STATUS, main
from noisypref.noise_injection import FlipRecord

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINING = {"steps": 3, "batch_size": 8, "max_length": 16, "max_prompt_length": 4}
TINY_EVALUATION = {"num_eval_prompts": 8, "max_new_tokens": 5}


def tiny_study(name: str, noise: list[dict], methods: list[dict]) -> dict:
    return {
        "name": name,
        "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
        "noise": noise,
        "methods": methods,
        "seeds": [0],
        "training": TINY_TRAINING,
        "evaluation": TINY_EVALUATION,
    }


def flips_csv(out: Path, run_id: str) -> pd.DataFrame:
    return pd.read_csv(out / "runs" / run_id / "flips.csv")


def result_json(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "result.json").read_text())


def run_id_of(frame: pd.DataFrame, method: str, rate: float) -> str:
    (run_id,) = frame.loc[(frame["method_label"] == method) & (frame["target_flip_rate"] == rate), "run_id"]
    return run_id


# ---------------------------------------------------------------------------------------------
# The oracle


def test_the_oracle_trains_on_the_noisy_pairs_minus_the_recorded_flips_and_no_other_run_sees_them(
    tmp_path, monkeypatch
):
    """What the training loop and the method receive, recorded for every run: the competitor at 20 %
    gets every pair with its noisy label (the rate-0 label swapped exactly where flips.csv says), the
    oracle the same pairs minus the flipped ones, and neither sees anything of the flip record."""
    trained: dict[str, dict] = {}  # run id -> what train() received
    built: list[tuple[tuple, dict]] = []  # what building the method received
    real_train, real_build = execute_module.train, prepare_module.build

    def recording_train(*args, **kwargs):
        run_id = Path(kwargs["metrics_path"]).parent.name
        trained[run_id] = {"args": args, "kwargs": kwargs, "pairs": args[2]}
        return real_train(*args, **kwargs)

    def recording_build(*args, **kwargs):
        built.append((args, kwargs))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(execute_module, "train", recording_train)
    monkeypatch.setattr(prepare_module, "build", recording_build)
    methods = [
        {"name": "dpo", "hyperparameters": {"beta": 0.1}},
        {"label": "clean_only", "name": "dpo", "hyperparameters": {"beta": 0.1}, "reference": "clean_only"},
    ]
    study = parse_study(tiny_study("oracle", [{"model": "symmetric", "rates": [0, 0.2]}], methods))
    out = tmp_path / "out"
    summary = run_study(study, out, cache_dir=tmp_path / "cache", progress=False)
    assert summary.all_succeeded, summary.report()
    frame = pd.read_parquet(out / "results.parquet")
    # no oracle at rate 0 (it would be the dpo run): dpo at 0 and 0.2, the oracle at 0.2
    assert sorted(zip(frame["method_label"], frame["target_flip_rate"], strict=True)) == [
        ("clean_only", 0.2), ("dpo", 0.0), ("dpo", 0.2),
    ]  # fmt: skip
    clean_id, noisy_id, zero_id = (run_id_of(frame, *key) for key in (("clean_only", 0.2), ("dpo", 0.2), ("dpo", 0.0)))
    assert set(trained) == {clean_id, noisy_id, zero_id}

    def labels(run_id: str) -> dict[str, bool]:
        pairs = trained[run_id]["pairs"]
        return dict(zip(pairs.pair_ids, pairs.chosen_is_a.tolist(), strict=True))

    original = labels(zero_id)  # no flips: the testbed's own labels
    flips = flips_csv(out, noisy_id)
    assert flips["is_flipped"].sum() == 8  # exact symmetric flips: round(0.2 * 40)
    flipped = set(flips.loc[flips["is_flipped"], "pair_id"])
    # the competitor trains on every pair, each label swapped exactly where flips.csv says
    assert list(trained[noisy_id]["pairs"].pair_ids) == list(flips["pair_id"])
    assert labels(noisy_id) == {pair: label != (pair in flipped) for pair, label in original.items()}
    # the oracle: the same flips drawn, and the noisy pairs minus exactly those, in order
    assert flips_csv(out, clean_id).equals(flips)
    kept = [pair for pair in flips["pair_id"] if pair not in flipped]
    assert list(trained[clean_id]["pairs"].pair_ids) == kept
    assert labels(clean_id) == {pair: original[pair] for pair in kept}
    # nothing of the flip record reaches the method or the training loop
    for record in trained.values():
        for value in [*record["args"], *record["kwargs"].values()]:
            assert not isinstance(value, (FlipRecord, pd.DataFrame))
    assert len(built) == 3
    for args, kwargs in built:
        assert args == ("dpo",) and kwargs == {"seed": 0, "beta": 0.1}

    # its results: the noise injected into its dataset, the pairs it trained on, no detection AUROC
    oracle = frame.set_index("run_id").loc[clean_id]
    assert oracle["reference"] == "clean_only" and oracle["realised_flip_rate"] == 8 / 40
    assert oracle["training_pairs"] == 32 and frame.set_index("run_id").loc[noisy_id, "training_pairs"] == 40
    assert math.isnan(oracle["noise_detection_auroc"])
    assert not math.isnan(frame.set_index("run_id").loc[noisy_id, "noise_detection_auroc"])
    result = result_json(out, clean_id)
    assert result["reference"] == "clean_only" and result["config"]["method"]["reference"] == "clean_only"
    assert "no flipped pair" in result["missing_metrics"]["noise_detection_auroc"]
    assert result["noise"]["num_flipped"] == 8 and result["num_train_pairs"] == 32
    assert "reference" not in result_json(out, noisy_id)["config"]["method"]
    assert result_json(out, noisy_id)["reference"] == "none"
    pairs = pd.read_parquet(out / "runs" / clean_id / "pairs.parquet")
    assert list(pairs["pair_id"]) == kept and not pairs["is_flipped"].any()
    assert set(frame["reference"]) == {"none", "clean_only"}


# ---------------------------------------------------------------------------------------------
# Known-rate variants


def test_a_known_rate_run_trains_with_its_realised_flip_rate_and_fails_where_the_method_refuses_it(tmp_path):
    """Bernoulli flips realise a rate other than the target; the symbol resolves to the realised one,
    recomputed here from flips.csv, and trains exactly as the same ε given as a number."""
    bernoulli = {"model": "symmetric", "rates": [0.3], "options": {"mode": "bernoulli"}}
    exact_half = {"model": "symmetric", "rates": [0.5], "options": {"mode": "exact"}}
    methods = [
        {"label": "cdpo_known", "name": "cdpo", "hyperparameters": {"label_smoothing": "realised_flip_rate"}},
        {"label": "rdpo_known", "name": "robust_dpo", "hyperparameters": {"label_smoothing": "realised_flip_rate"}},
    ]
    out = tmp_path / "known"
    study = parse_study(tiny_study("known", [bernoulli, exact_half], methods))
    summary = run_study(study, out, cache_dir=tmp_path / "cache", progress=False)
    assert (summary.succeeded, summary.failed) == (2, 2)
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame["reference"]) == {"known_rate"}
    assert set(frame["symbolic_hyperparameters"]) == {json.dumps({"label_smoothing": "realised_flip_rate"})}

    done = frame[frame["status"] == "succeeded"]
    assert set(done["target_flip_rate"]) == {0.3}
    realised = flips_csv(out, done["run_id"].iloc[0])["is_flipped"].mean()
    assert realised != 0.3  # the draw realised another rate than the target
    for _, row in done.iterrows():
        assert row["hp_label_smoothing"] == realised == row["realised_flip_rate"]
        assert json.loads(row["hyperparameters"])["label_smoothing"] == realised
        result = result_json(out, row["run_id"])
        assert result["hyperparameters"]["label_smoothing"] == realised
        assert result["config"]["method"]["hyperparameters"]["label_smoothing"] == "realised_flip_rate"
        assert result["symbolic_hyperparameters"] == {"label_smoothing": "realised_flip_rate"}

    # at exactly 0.5 flipped, both methods refuse ε = 0.5: the runs fail saying so, no value resolved
    failed = frame[frame["status"] == "failed"]
    assert set(failed["target_flip_rate"]) == {0.5} and failed["hp_label_smoothing"].isna().all()
    for reason in failed["failure_reason"]:
        assert "label_smoothing = 'realised_flip_rate' resolved to 0.5" in reason
        assert "expected a number in [0.0, 0.5)" in reason

    # the same ε given as a number trains the same loss; the target rate as ε does not
    numeric = [
        {"name": "cdpo", "hyperparameters": {"label_smoothing": [float(realised), 0.3]}},
        {"name": "robust_dpo", "hyperparameters": {"label_smoothing": float(realised)}},
    ]
    out_numeric = tmp_path / "numeric"
    run_study(parse_study(tiny_study("numeric", [bernoulli], numeric)), out_numeric, cache_dir=tmp_path / "cache", progress=False)
    numbers = pd.read_parquet(out_numeric / "results.parquet").set_index("method_label")
    known = done.set_index("method_label")
    compared = ["final_loss", "train_accuracy", "heldout_accuracy", "gold_win_rate"]
    assert (numbers.loc[f"cdpo(label_smoothing={realised:g})", compared] == known.loc["cdpo_known", compared]).all()
    assert (numbers.loc["robust_dpo", compared] == known.loc["rdpo_known", compared]).all()
    assert numbers.loc["cdpo(label_smoothing=0.3)", "final_loss"] != known.loc["cdpo_known", "final_loss"]
    assert set(numbers["reference"]) == {"none"} and numbers["symbolic_hyperparameters"].isna().all()


def test_validate_warns_when_a_study_rate_would_be_refused_by_a_known_rate_method(tmp_path, capsys, caplog):
    raw = {
        **SMALL_STUDY,
        "noise": [{"model": "symmetric", "rates": [0, 0.2, 0.5]}],
        "methods": [
            {"name": "dpo"},
            {"label": "rdpo_known", "name": "robust_dpo", "hyperparameters": {"label_smoothing": "realised_flip_rate"}},
        ],
    }
    assert main(["validate", str(write_study(tmp_path / "study.yaml", raw)), "--count"]) == 0
    (warning,) = [record.getMessage() for record in caplog.records if "rdpo_known" in record.getMessage()]
    assert "methods[1] (rdpo_known)" in warning and "flip rate(s) 0.5 " in warning
    assert "label_smoothing = 0.5 is invalid: expected a number in [0.0, 0.5)" in warning


def test_the_symbol_is_checked_at_load_and_names_its_runs_apart_from_a_number():
    def study(*methods: dict) -> dict:
        return {**SMALL_STUDY, "methods": list(methods)}

    with pytest.raises(StudyError) as caught:
        parse_study(study({"name": "dpo", "hyperparameters": {"beta": "realised_flip_rate"}}))
    (problem,) = caught.value.problems
    assert problem.startswith("methods[0].hyperparameters.beta = 'realised_flip_rate': expected a valid beta")
    assert "'dpo' has none" in problem
    with pytest.raises(StudyError) as caught:
        parse_study(study({"name": "gamma_dpo", "hyperparameters": {"tau": [1, "realised_flip_rate"]}}))
    assert caught.value.problems[0].startswith("methods[0].hyperparameters.tau[1] = 'realised_flip_rate'")
    oracle_with_symbol = {"label": "o", "name": "cdpo", "reference": "clean_only",
                          "hyperparameters": {"label_smoothing": "realised_flip_rate"}}  # fmt: skip
    with pytest.raises(StudyError, match=r"methods\[1\]\.reference = 'clean_only': expected no reference here"):
        parse_study(study({"name": "dpo"}, oracle_with_symbol))
    with pytest.raises(StudyError, match=r"methods\[1\]\.reference = 'known_rate': expected one of 'none', 'clean_only'"):
        parse_study(study({"name": "dpo"}, {"label": "k", "name": "cdpo", "reference": "known_rate"}))

    # a sweep may mix the symbol and numbers; each symbolic variant is a known-rate reference
    swept = parse_study(study({"name": "cdpo", "hyperparameters": {"label_smoothing": [0.2, "realised_flip_rate"]}}))
    variants = swept.method_variants()
    assert [(variant.label, variant.reference_kind) for variant in variants] == [
        ("cdpo(label_smoothing=0.2)", "none"),
        ("cdpo(label_smoothing=realised_flip_rate)", "known_rate"),
    ]
    runs = plan_runs(swept)
    symbolic = [run for run in runs if run.is_reference]
    assert {run.config["method"]["hyperparameters"]["label_smoothing"] for run in symbolic} == {"realised_flip_rate"}
    assert {run.noise_rate for run in symbolic} == {0.2, 0.4}  # no reference at rate 0
    # stable across loads, apart from every numeric ε
    assert [run.run_id for run in plan_runs(parse_study(swept.to_dict()))] == [run.run_id for run in runs]
    assert not {run.run_id for run in symbolic} & {run.run_id for run in runs if not run.is_reference}


# ---------------------------------------------------------------------------------------------
# The grid


def test_references_are_left_out_at_rate_0_and_leave_the_competitors_run_ids_alone(tmp_path, capsys):
    with_references = {
        **SMALL_STUDY,
        "methods": [
            *SMALL_STUDY["methods"],
            {"label": "oracle", "name": "dpo", "reference": "clean_only"},
            {"label": "cdpo_known", "name": "cdpo", "hyperparameters": {"label_smoothing": "realised_flip_rate"}},
        ],
    }
    competitors = plan_runs(parse_study(SMALL_STUDY))
    runs = plan_runs(parse_study(with_references))
    assert [run.run_id for run in runs if not run.is_reference] == [run.run_id for run in competitors]
    references = [run for run in runs if run.is_reference]
    # 2 references x (2 noise entries x 1 non-zero rate) x 2 seeds; none at rate 0
    assert len(references) == 2 * 2 * 2 and all(run.noise_rate > 0 for run in references)
    assert {(run.method, run.reference) for run in references} == {("oracle", "clean_only"), ("cdpo_known", "known_rate")}

    assert main(["validate", str(write_study(tmp_path / "study.yaml", with_references))]) == 0
    output = capsys.readouterr().out
    assert "5 method setting(s) (3 competitor(s), 2 reference(s))" in output
    assert f"= 40 grid points -> {len(runs)} runs (8 reference grid points skipped: at rate 0" in output
    assert "competitors (ranked): dpo, gamma_dpo(tau=1), gamma_dpo(tau=10)" in output
    assert "reference oracle (clean_only, drawn, never ranked)" in output
    competitor_table, reference_table = output.split("\n\n")[1:3]
    assert len(competitor_table.splitlines()) == 1 + len(competitors)
    assert reference_table.splitlines()[0].startswith(f"reference runs ({len(references)};")
    assert len(reference_table.strip().splitlines()) == 2 + len(references)


def test_validate_counts_the_reference_points_skipped_under_cleaning_entries(tmp_path, capsys):
    study = {
        **SMALL_STUDY,
        "methods": [
            *SMALL_STUDY["methods"],
            {"label": "oracle", "name": "dpo", "reference": "clean_only"},
            {"label": "cdpo_known", "name": "cdpo", "hyperparameters": {"label_smoothing": "realised_flip_rate"}},
        ],
        "cleaning": ["none", {"judge": "small_loss"}, {"judge": "oracle"}],
    }
    runs = plan_runs(parse_study(study))
    # by hand: 4 (noise model, rate) points x 3 cleaning entries x 5 method settings x 2 seeds = 120 points;
    # runs: per cleaning entry 3 competitors x 3 distinct noise settings (rate 0 merged) x 2 seeds = 18, so 54,
    # plus the 2 method references at the 2 rates above 0 without cleaning x 2 seeds = 8: 62 runs;
    # skipped references: 2 x 2 seeds x (2 zero rates x 3 entries + 2 non-zero rates x 2 cleaning entries) = 40;
    # merged: the 3 x 2 competitor runs of each entry at the second rate 0, x 3 entries = 18 = 120 - 40 - 62
    assert len(runs) == 62
    assert main(["validate", "--count", str(write_study(tmp_path / "study.yaml", study))]) == 0
    output = capsys.readouterr().out
    assert "= 120 grid points -> 62 runs (40 reference grid points skipped: at rate 0" in output
    assert "(18 grid points merged into identical runs" in output


# ---------------------------------------------------------------------------------------------
# With and without dynamic margins


PAIRING_STUDY = {
    **SMALL_STUDY,
    "methods": [
        {"label": "oracle", "name": "dpo", "reference": "clean_only"},  # same β as dpo(beta=0.1): never a base
        {"name": "dpo", "hyperparameters": {"beta": [0.1, 0.5]}},
        {"name": "gamma_dpo", "hyperparameters": {"beta": [0.1, 0.5, 1.0]}},
        {"name": "simpo", "hyperparameters": {"gamma": 1.0}},
        {"name": "gamma_simpo", "hyperparameters": {"gamma0": [1.0, 2.0]}},
        {"label": "dpo_long", "name": "dpo", "hyperparameters": {"beta": 0.1}, "training": {"steps": 400}},
        {"label": "gamma_long", "name": "gamma_dpo", "hyperparameters": {"beta": 0.1}, "training": {"steps": 400}},
        {"name": "robust_dpo"},
    ],
    "report": {"pairs": [{"method": "gamma_dpo(beta=0.1)", "base": "robust_dpo"}]},
}


def test_each_competitor_row_carries_its_own_base_at_the_same_shared_hyperparameters(tmp_path):
    study = parse_study(PAIRING_STUDY)
    run_study(study, tmp_path, executor=fake_execute, progress=False)
    frame = pd.read_parquet(tmp_path / "results.parquet")
    by_hand = {
        "oracle": None,
        "dpo(beta=0.1)": None,
        "dpo(beta=0.5)": None,
        "gamma_dpo(beta=0.1)": "dpo(beta=0.1)",
        "gamma_dpo(beta=0.5)": "dpo(beta=0.5)",
        "gamma_dpo(beta=1)": None,  # no dpo at β 1
        "simpo": None,
        "gamma_simpo(gamma0=1)": "simpo",  # γ-SimPO's gamma0 is SimPO's gamma
        "gamma_simpo(gamma0=2)": None,
        "dpo_long": None,
        "gamma_long": "dpo_long",  # same β, and the same training settings
        "robust_dpo": None,  # a declared pair (report.pairs) is not an automatic base
    }
    assert set(frame["method_label"]) == set(by_hand)
    for label, base in by_hand.items():
        bases = {None if pd.isna(value) else value for value in frame.loc[frame["method_label"] == label, "base_label"]}
        assert bases == {base}, label
    assert study.report.pairs == ({"method": "gamma_dpo(beta=0.1)", "base": "robust_dpo"},)
    assert set(frame.loc[frame["method_label"] == "oracle", "reference"]) == {"clean_only"}


def test_declared_pairs_name_two_competitors_of_the_study(tmp_path, capsys):
    def problems(pairs: object) -> list[str]:
        with pytest.raises(StudyError) as caught:
            parse_study({**PAIRING_STUDY, "report": {"pairs": pairs}})
        return caught.value.problems

    (unknown,) = problems([{"method": "gamma_dpo(beta=0.1)", "base": "dpo"}])
    assert unknown.startswith("report.pairs[0].base = 'dpo': expected the label of one of the study's competitors: ")
    assert "dpo(beta=0.1), dpo(beta=0.5), gamma_dpo(beta=0.1)" in unknown and "oracle" not in unknown
    (second, *_) = problems([{"method": "gamma_dpo(beta=0.1)", "base": "dpo(beta=0.1)"}, {"method": "gamma", "base": "simpo"}])
    assert second.startswith("report.pairs[1].method = 'gamma': expected the label of one of the study's competitors")
    (reference,) = problems([{"method": "gamma_dpo(beta=0.1)", "base": "oracle"}])
    assert "report.pairs[0].base = 'oracle'" in reference and "it labels a reference" in reference
    (same,) = problems([{"method": "simpo", "base": "simpo"}])
    assert same.startswith("report.pairs[0].base = 'simpo': expected a label other than the pair's method")
    (shape,) = problems([{"method": "simpo"}])
    assert shape.startswith("report.pairs = [{'method': 'simpo'}]: expected a list of {method: LABEL, base: LABEL}")
    # on the command line: exit status 2, the problem on stderr, nothing written
    broken = write_study(tmp_path / "study.yaml", {**PAIRING_STUDY, "report": {"pairs": [{"method": "x", "base": "simpo"}]}})
    assert main(["validate", str(broken)]) == USER_ERROR_STATUS
    assert "report.pairs[0].method = 'x'" in capsys.readouterr().err
    assert main(["run", str(broken), "--out", str(tmp_path / "out")]) == USER_ERROR_STATUS
    assert not (tmp_path / "out").exists()


def test_methods_declare_their_base_and_their_flip_rate_hyperparameters(capsys):
    assert main(["methods", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert entries["gamma_dpo"]["base_method"] == "dpo" and entries["gamma_simpo"]["base_method"] == "simpo"
    assert entries["dpo"]["base_method"] is None
    assert entries["cdpo"]["flip_rate_hyperparameters"] == ["label_smoothing"]
    assert entries["robust_dpo"]["flip_rate_hyperparameters"] == ["label_smoothing"]
    assert entries["gamma_dpo"]["flip_rate_hyperparameters"] == []


# ---------------------------------------------------------------------------------------------
# Shipped study files


def test_noise_models_study_keeps_its_competitor_runs_and_adds_its_references():
    study = load_study(REPO / "configs" / "noise_models.yaml")
    runs = plan_runs(study)
    pinned = json.loads((REPO / "tests" / "data" / "shipped_configs_v0_1" / "run_ids.json").read_text())
    assert [run.run_id for run in runs if not run.is_reference] == pinned["noise_models.yaml"]
    references = {(run.method, run.reference) for run in runs if run.is_reference}
    assert references == {("clean_only", "clean_only"), ("cdpo_known", "known_rate"), ("rdpo_known", "known_rate")}


def test_a_study_without_references_reads_with_none_everywhere(tmp_path):
    run_study(parse_study(SMALL_STUDY), tmp_path, executor=fake_execute, progress=False)
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert set(frame["reference"]) == {"none"}
    assert frame["symbolic_hyperparameters"].isna().all()
    assert dict(zip(frame["method_label"], frame["base_label"].fillna("(none)"), strict=True)) == {
        "dpo": "(none)", "gamma_dpo(tau=1)": "dpo", "gamma_dpo(tau=10)": "dpo",
    }  # fmt: skip
    columns = list(frame.columns)
    assert columns[columns.index("method_name") + 1 : columns.index("method_name") + 5] == [
        "reference", "base_label", "hyperparameters", "symbolic_hyperparameters",
    ]  # fmt: skip


def test_a_clean_only_run_with_every_pair_flipped_fails_saying_so(tmp_path):
    methods = [{"label": "clean_only", "name": "dpo", "reference": "clean_only"}]
    study = parse_study(tiny_study("all_flipped", [{"model": "symmetric", "rates": [1.0]}], methods))
    summary = run_study(study, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert summary.failed == 1
    (reason,) = pd.read_parquet(tmp_path / "out" / "results.parquet")["failure_reason"]
    assert "all 40 training pairs were flipped" in reason and "no pair to train on" in reason
