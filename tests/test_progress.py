"""Long runs a person can watch (issue 18): progress lines, the heartbeat file, `noisypref status`,
truncation counts, the held-out bound, dataset labels and the training seed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_study import TINY_TESTBED

from noisypref.benchmark import progress
from noisypref.benchmark.config.dataset import DatasetSettings
from noisypref.benchmark.config.run_config import parse_run_config
from noisypref.benchmark.progress import HEARTBEAT_FILE, heartbeat, phase
from noisypref.benchmark.study import StudyFolder, parse_study, plan_runs, run_study
from noisypref.benchmark.study.folder import claim_run
from noisypref.cli import main


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def test_a_phase_logs_plain_lines_at_the_interval_and_beats_the_heartbeat(tmp_path, clock, monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 10.0)
    monkeypatch.setattr(progress, "HEARTBEAT_INTERVAL_S", 2.0)
    path = tmp_path / HEARTBEAT_FILE
    caplog.set_level(logging.INFO, logger="noisypref.benchmark.progress")
    with heartbeat(path), phase("training dpo", 40, "step", items_per_unit=8) as training:
        clock.now += 4.0  # 4 s for 2 steps: 0.5 steps/s, 4 pairs/s
        training.advance(2, loss=0.75)
        beat = json.loads(path.read_text())
        # 38 steps left at 0.5 steps/s: 76 s
        assert (beat["phase"], beat["step"], beat["total"], beat["eta_s"]) == ("training dpo", 2, 40, 76.0)
        assert beat["values"] == {"loss": 0.75}
        clock.now += 1.0  # within the heartbeat interval: the file is not rewritten
        training.advance(1)
        assert json.loads(path.read_text())["step"] == 2
        clock.now += 5.0  # 10 s since the start: one progress line
        training.advance(1)
        assert json.loads(path.read_text())["step"] == 4
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "training dpo: started (40 steps)"
    # 4 steps in 10 s = 0.4 steps/s, 3.2 pairs/s; 36 steps left: 90 s
    assert lines[1] == "training dpo: step 4/40 (10 %), loss 0.75, 3.2 pairs/s, ETA 1m30s"
    assert lines[2].startswith("training dpo: done in 10 s, step 4/40")
    assert len(lines) == 3 and not any("\r" in line for line in lines)
    assert json.loads(path.read_text())["step"] == 4  # the last beat of a phase is always written


def test_status_shows_the_phase_step_and_eta_of_a_running_run(tmp_path, clock, capsys):
    study = parse_study({"name": "watch", "noise": [{"model": "symmetric", "rates": [0.1]}], "methods": [{"name": "dpo"}]})
    folder = StudyFolder(tmp_path)
    folder.prepare(study)
    run = plan_runs(study)[0]
    run_dir = folder.run_dir(run.run_id)
    with claim_run(run_dir, wait=False) as claimed:
        assert claimed
        assert main(["status", str(tmp_path)]) == 0
        assert "starting (no heartbeat yet)" in capsys.readouterr().out
        with heartbeat(run_dir / HEARTBEAT_FILE), phase("training dpo", 200, "step") as training:
            clock.now += 30.0
            training.advance(50, loss=0.5)  # 50 steps in 30 s; 150 left: 90 s
            assert main(["status", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert f"running  {run.run_id}" in output
    assert "training dpo step 50/200, ETA 1m30s, loss 0.5 (updated " in output


def _tiny_study(**sections) -> dict:
    study = {
        "name": "tiny",
        "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": [{"name": "dpo"}],
        "training": {"steps": 3, "batch_size": 8, "max_length": 16, "max_prompt_length": 4, "log_every": 1},
        "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5, "gold_reward": False},
    }
    study.update(sections)
    return study


def test_a_real_run_logs_its_phases_and_sizes_in_run_log_and_leaves_a_heartbeat(tmp_path):
    study = parse_study(_tiny_study())
    summary = run_study(study, tmp_path / "out", progress=False, cache_dir=tmp_path / "cache")
    assert summary.all_succeeded, summary.report()
    run_dir = StudyFolder(tmp_path / "out").run_dir(plan_runs(study)[0].run_id)
    log = (run_dir / "run.log").read_text()
    for expected in (
        "loading testbed and model testbed: started",
        "testbed: 40 training pairs (trained and evaluated), 16 held-out pairs (evaluated)",
        "training dpo: started (3 steps)",
        "training dpo: done in",
        "evaluation of 16 held-out pairs: done in",
    ):
        assert expected in log
    assert "\r" not in log
    beat = json.loads((run_dir / HEARTBEAT_FILE).read_text())
    assert beat["phase"] == "evaluation of 16 held-out pairs" and beat["step"] == beat["total"] == 16


def test_truncation_is_counted_once_per_run_in_the_log_and_result_json(tmp_path):
    from noisypref.benchmark.engine.models import load_causal_lm
    from noisypref.benchmark.testbed import TestbedConfig, build_testbed

    testbed = build_testbed(TestbedConfig(**TINY_TESTBED), tmp_path / "cache")
    _, tokenizer = load_causal_lm(str(testbed.reference_model_dir), "float32")
    pairs = testbed.train_pairs.select(range(24))
    max_length, max_prompt_length = 3, 1
    # By hand: a plain pair is [bos] + prompt, then response + [eos], each tokenised on its own.
    bos = 1 if tokenizer.bos_token_id is not None else 0

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    expected_prompts = expected_responses = 0
    for row in pairs:
        prompt_length = count(row["prompt"]) + bos
        expected_prompts += prompt_length > max_prompt_length
        kept_prompt = min(prompt_length, max_prompt_length)
        for response in (row["chosen"], row["rejected"]):
            expected_responses += kept_prompt + count(response) + 1 > max_length
    assert expected_prompts > 0 and expected_responses > 0  # the lengths chosen do cut something

    from noisypref.benchmark.engine.tokenization import tokenize_pairs

    tokens = tokenize_pairs(pairs, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    assert tokens.truncation == {"prompts": expected_prompts, "responses": expected_responses}

    study = parse_study(
        _tiny_study(training={"steps": 1, "batch_size": 8, "max_length": 4, "max_prompt_length": 1})
    )
    assert run_study(study, tmp_path / "out", progress=False, cache_dir=tmp_path / "cache").all_succeeded
    run_dir = StudyFolder(tmp_path / "out").run_dir(plan_runs(study)[0].run_id)
    truncation = json.loads((run_dir / "result.json").read_text())["truncation"]
    assert (truncation["max_length"], truncation["max_prompt_length"]) == (4, 1)
    assert truncation["train"]["pairs"] == 40 and truncation["heldout"]["pairs"] == 16
    assert truncation["train"]["responses_cut"] > 0
    lines = [line for line in (run_dir / "run.log").read_text().splitlines() if "truncation:" in line]
    assert len(lines) == 1
    assert f"{truncation['train']['responses_cut']} of 80 responses cut to max_length 4" in lines[0]


def _file_run_config(path: Path, **dataset) -> dict:
    study = parse_study(
        {
            "name": "file",
            "datasets": [{"kind": "file", "source": str(path), **dataset}],
            "noise": [{"model": "symmetric", "rates": [0.1]}],
            "methods": [{"name": "dpo"}],
            "models": [{"name": "some-org/some-model"}],  # never loaded: resolve_dataset reads the data only
        }
    )
    return plan_runs(study)[0].config


def _write_pairs(path: Path, count: int) -> Path:
    with open(path, "w") as file:
        for index in range(count):
            file.write(json.dumps({"prompt": f"q{index}", "chosen": f"good {index}", "rejected": f"bad {index}"}) + "\n")
    return path


def test_max_pairs_bounds_the_heldout_pairs_of_a_file_and_max_heldout_pairs_of_every_kind(tmp_path):
    from noisypref.benchmark.run.prepare import resolve_dataset

    path = _write_pairs(tmp_path / "prefs.jsonl", 200)
    unbounded = resolve_dataset(parse_run_config(_file_run_config(path)), tmp_path)
    # heldout_fraction 0.1 of 200 pairs: 20 held out, 180 for training
    assert (len(unbounded.train_pairs), len(unbounded.heldout_pairs)) == (180, 20)
    bounded = resolve_dataset(parse_run_config(_file_run_config(path, max_pairs=30)), tmp_path)
    # 30 training pairs, ceil(0.1 * 30) = 3 held-out pairs: the first 3 of the 20
    assert (len(bounded.train_pairs), len(bounded.heldout_pairs)) == (30, 3)
    assert bounded.heldout_pairs["pair_id"] == unbounded.heldout_pairs["pair_id"][:3]
    config = _file_run_config(path)
    config["evaluation"]["max_heldout_pairs"] = 7
    assert len(resolve_dataset(parse_run_config(config), tmp_path).heldout_pairs) == 7


def test_max_heldout_pairs_and_training_seed_at_their_defaults_leave_run_ids_unchanged():
    def run_id(**sections) -> str:
        return plan_runs(parse_study(_tiny_study(**sections)))[0].run_id

    base = _tiny_study()
    unchanged = run_id()
    for section, name, value in (("evaluation", "max_heldout_pairs", 4), ("training", "seed", 3)):
        assert run_id(**{section: {**base[section], name: None}}) == unchanged
        assert run_id(**{section: {**base[section], name: value}}) != unchanged


def test_a_file_dataset_is_labelled_by_its_file_stem(tmp_path):
    path = _write_pairs(tmp_path / "hh_rlhf_slice.jsonl.gz", 0)
    assert DatasetSettings(kind="file", source=str(path)).display_label == "hh_rlhf_slice"
    assert DatasetSettings(kind="file", source=str(path), label="hh").display_label == "hh"
    assert DatasetSettings(kind="hub", source="Anthropic/hh-rlhf").display_label == "Anthropic/hh-rlhf"
    source = str(_write_pairs(tmp_path / "prefs.jsonl", 4))
    study = parse_study(
        {"name": "labels", "datasets": [{"kind": "file", "source": source}], "methods": [{"name": "dpo"}],
         "noise": [{"model": "symmetric", "rates": [0.1]}], "models": [{"name": "some-org/some-model"}]}
    )  # fmt: skip
    assert study.datasets[0].label == "prefs"


def test_training_seed_varies_training_and_leaves_the_noise_draw(tmp_path):
    base = _tiny_study(seeds=[0])
    variants = {
        "run seed": base,
        "training seed = run seed": {**base, "training": {**base["training"], "seed": 0}},
        "training seed 7": {**base, "training": {**base["training"], "seed": 7}},
    }
    outcomes = {}
    for name, raw in variants.items():
        study = parse_study({**raw, "name": name.replace(" ", "_").replace("=", "eq")})
        out = tmp_path / study.name
        assert run_study(study, out, progress=False, cache_dir=tmp_path / "cache").all_succeeded
        run_dir = StudyFolder(out).run_dir(plan_runs(study)[0].run_id)
        losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        outcomes[name] = (pd.read_csv(run_dir / "flips.csv"), losses, plan_runs(study)[0].run_id)
    run_seed, same, other = outcomes["run seed"], outcomes["training seed = run seed"], outcomes["training seed 7"]
    assert run_seed[1] == same[1]  # the default is the run's seed
    assert run_seed[2] != same[2]  # a training seed given is part of the run's id
    pd.testing.assert_frame_equal(run_seed[0], other[0])  # the same flips
    assert run_seed[1] != other[1]  # a different pair order: different losses


def test_a_study_folder_of_0_1_with_path_labels_is_the_same_study(tmp_path):
    source = str(_write_pairs(tmp_path / "prefs.jsonl", 4))
    raw = {"name": "labels", "datasets": [{"kind": "file", "source": source}], "methods": [{"name": "dpo"}],
           "noise": [{"model": "symmetric", "rates": [0.1]}], "models": [{"name": "some-org/some-model"}]}  # fmt: skip
    folder = StudyFolder(tmp_path / "out")
    folder.prepare(parse_study(raw))
    written = yaml.safe_load(folder.study_file.read_text())
    written["datasets"][0]["label"] = source  # as 0.1 resolved a file dataset without a label
    folder.study_file.write_text(yaml.safe_dump(written))
    folder.prepare(parse_study(raw))  # not "another study"
    with pytest.raises(ValueError, match="already holds a different study"):
        folder.prepare(parse_study({**raw, "datasets": [{"kind": "file", "source": source, "label": "other"}]}))
