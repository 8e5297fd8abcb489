"""Study settings that validated and then failed later, or meant something else than they seemed:
a scalar `seeds`, a batch larger than the training set, a report section naming what does not exist,
and settings that are allowed but rarely meant (flip rates above 0.5, a checkpoint interval longer
than the run, a held-out split too small to measure anything). Mistakes exit 2 naming the field, the
value and what is allowed, before any folder is written; the rarely-meant ones warn.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli

from noisypref.benchmark.config.dataset import DatasetSettings
from noisypref.benchmark.config.run_config import make_run_config, parse_run_config
from noisypref.benchmark.config.sections import EvaluationSettings, ModelSettings, TrainingSettings
from noisypref.benchmark.engine.train import train
from noisypref.benchmark.run.prepare import resolve_dataset
from noisypref.benchmark.study import load_study
from noisypref.methods import build


def write_study(path: Path, **sections) -> Path:
    study = {"name": "checks", "noise": [{"model": "symmetric", "rates": [0.2]}], "methods": [{"name": "dpo"}]}
    study.update(sections)
    path.write_text(yaml.safe_dump(study))
    return path


def write_pairs(path: Path, count: int) -> Path:
    rows = [{"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def refused_by_validate_and_run(capsys, tmp_path: Path, study: Path, *names: str) -> str:
    """validate and run both exit 2 naming the file and each of `names`; run writes no folder."""
    status, _, err = cli(capsys, "validate", study)
    assert status == 2 and str(study) in err, err
    for name in names:
        assert name in err, (name, err)
    out, cache = tmp_path / "out", tmp_path / "cache"
    status, _, run_err = cli(capsys, "run", study, "--out", out, "--cache-dir", cache)
    assert status == 2 and all(name in run_err for name in names), run_err
    assert not out.exists() and not cache.exists()
    return err


# ---------------------------------------------------------------------------------------------
# seeds


def test_a_single_number_as_seeds_is_refused_as_ambiguous(tmp_path, capsys):
    study = write_study(tmp_path / "study.yaml", seeds=3)
    refused_by_validate_and_run(capsys, tmp_path, study, "seeds = 3", "[3] for the one seed 3", "[0, 1, 2] for 3 seeds")
    assert load_study(write_study(tmp_path / "listed.yaml", seeds=[3])).seeds == (3,)


# ---------------------------------------------------------------------------------------------
# batch_size against the training pairs


def test_a_batch_larger_than_the_testbed_training_set_is_refused_at_load(tmp_path, capsys):
    testbed = [{"kind": "testbed", "testbed": {"num_train_pairs": 256}}]
    study = write_study(tmp_path / "study.yaml", datasets=testbed, training={"batch_size": 100000})
    refused_by_validate_and_run(
        capsys, tmp_path, study, "training.batch_size = 100000", "at most the 256 training pairs of datasets[0]"
    )
    # a method's own override is named as such; max_pairs lowers the count
    capped = [{"kind": "testbed", "testbed": {"num_train_pairs": 256}, "max_pairs": 64}]
    methods = [{"name": "dpo"}, {"name": "ipo", "training": {"batch_size": 128}}]
    study = write_study(tmp_path / "method.yaml", datasets=capped, methods=methods, training={"batch_size": 32})
    err = refused_by_validate_and_run(capsys, tmp_path, study, "methods[1].training.batch_size = 128", "64 training pairs")
    assert "  - training.batch_size" not in err  # the study's own 32 fits
    write_study(tmp_path / "fits.yaml", datasets=capped, training={"batch_size": 64})
    assert load_study(tmp_path / "fits.yaml").training.batch_size == 64


def test_a_batch_larger_than_a_data_file_training_split_is_refused_by_the_preflight(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 40)  # 4 held-out (fraction 0.1), 36 training pairs
    model = tmp_path / "a_model"
    model.mkdir()
    datasets = [{"kind": "file", "source": str(data)}]
    study = write_study(tmp_path / "study.yaml", datasets=datasets, models=[str(model)], training={"batch_size": 64})
    refused_by_validate_and_run(
        capsys, tmp_path, study, "training.batch_size = 64", f"at most the 36 training pairs of datasets[0] ({data})"
    )


def test_the_engine_refuses_a_batch_larger_than_its_pairs_before_any_work():
    # A hub dataset's size is known only at run time: the engine says so before a forward pass.
    with pytest.raises(ValueError, match=r"training.batch_size = 100000 is more than the 256 training pairs"):
        train(None, build("simpo"), [None] * 256, TrainingSettings(batch_size=100000), reference=None,
              pad_token_id=0, seed=0, device="cpu")  # fmt: skip


def test_pair_counts_agree_with_the_split_a_run_takes(tmp_path):
    # the counts the checks use against resolve_dataset's actual split, for a file with max_pairs
    data = write_pairs(tmp_path / "pairs.jsonl", 200)
    for max_pairs, max_heldout in ((None, None), (16, None), (50, 3), (500, None)):
        dataset = DatasetSettings(kind="file", source=str(data), max_pairs=max_pairs)
        evaluation = EvaluationSettings(max_heldout_pairs=max_heldout)
        config = parse_run_config(make_run_config(dataset=dataset, evaluation=evaluation, model=ModelSettings(name="org/model")))
        data_split = resolve_dataset(config, tmp_path / "cache")
        expected = (len(data_split.train_pairs), len(data_split.heldout_pairs))
        assert dataset.pair_counts(200, max_heldout) == expected, (max_pairs, max_heldout)


# ---------------------------------------------------------------------------------------------
# report


def test_report_metrics_and_baseline_that_do_not_exist_are_refused_at_load(tmp_path, capsys):
    methods = [{"name": "dpo"}, {"name": "gamma_dpo", "hyperparameters": {"tau": [1, 3]}}]
    study = write_study(
        tmp_path / "study.yaml", methods=methods, report={"primary_metrics": ["heldout_acc"], "baseline": "ipo"}
    )
    refused_by_validate_and_run(
        capsys, tmp_path, study,
        "report.primary_metrics[0] = 'heldout_acc'", "did you mean 'heldout_accuracy'?",
        "report.baseline = 'ipo'", "dpo, gamma_dpo(tau=1), gamma_dpo(tau=3)",
    )  # fmt: skip
    good = write_study(
        tmp_path / "good.yaml", methods=methods, report={"primary_metrics": ["gold_win_rate"], "baseline": "gamma_dpo(tau=3)"}
    )
    assert load_study(good).report.baseline == "gamma_dpo(tau=3)"
    # the default baseline (dpo) is not required of a study without dpo: the report falls back
    assert load_study(write_study(tmp_path / "no_dpo.yaml", methods=[{"name": "ipo"}])).report.baseline == "dpo"


# ---------------------------------------------------------------------------------------------
# allowed, but warned about


def test_flip_rates_above_one_half_warn_as_noise_does(tmp_path, capsys, caplog):
    study = write_study(tmp_path / "study.yaml", noise=[{"model": "symmetric", "rates": [0, 0.7, 1.0]}])
    caplog.set_level(logging.WARNING)
    assert cli(capsys, "validate", study)[0] == 0
    assert "noise[0].rates[1] = 0.7: flip rate 0.7 is above 0.5: most labels disagree" in caplog.text
    assert "noise[0].rates[2] = 1: flip rate 1.0 is above 0.5: every label is reversed" in caplog.text
    assert "noise[0].rates[0]" not in caplog.text


def test_a_checkpoint_interval_longer_than_the_run_warns(tmp_path, capsys, caplog):
    methods = [{"name": "dpo"}, {"name": "ipo", "training": {"steps": 500}}]
    study = write_study(tmp_path / "study.yaml", methods=methods, training={"steps": 5, "checkpoint_every": 100})
    caplog.set_level(logging.WARNING)
    assert cli(capsys, "validate", study)[0] == 0
    assert "training.checkpoint_every = 100 with steps = 5: no checkpoint is ever written" in caplog.text
    assert "methods[1].training" not in caplog.text  # 500 steps: checkpoints at 100, 200, ...


def test_a_file_dataset_capped_by_max_pairs_gets_the_small_sample_warning(tmp_path, capsys, caplog):
    data = write_pairs(tmp_path / "pairs.jsonl", 400)  # 40 held-out pairs at fraction 0.1, 360 training
    datasets = [{"kind": "file", "source": str(data), "max_pairs": 16}]
    study = write_study(tmp_path / "study.yaml", datasets=datasets, models=["org/model"], training={"batch_size": 8})
    caplog.set_level(logging.WARNING)
    assert cli(capsys, "validate", study, "--elsewhere")[0] == 0
    assert f"datasets[0] ({data}) has 2 held-out pair(s) with datasets[0].max_pairs = 16" in caplog.text
    assert "on 2 comparisons only (standard error up to 0.354)" in caplog.text
