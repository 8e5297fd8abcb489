"""The last bad inputs (issue 19): one test per case. Each asserts the exit status (2 for a mistake of
the user), that the message names the file or field, the bad value and what is allowed, and that
nothing was written or lost. Studies run with a fake executor (no training); the engine's hunks are
tested on canned model outputs."""

from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from noisypref.benchmark.storage import write_json_atomic
from noisypref.cli import main

ANNOTATIONS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "alpaca_eval"
ANNOTATIONS_FILE = ANNOTATIONS / "alpaca-7b_weighted_alpaca_eval_gpt4_turbo_annotations.json"


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `noisypref ARGV`, run in this process."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return status, out, err


def assert_user_error(status: int, err: str, *names: object) -> None:
    assert status == 2, err
    assert "error:" in err, err
    for name in names:
        assert str(name) in err, (name, err)


def write_pairs(path: Path, count: int, **columns) -> Path:
    """`count` informative pairs as JSON lines; `columns` maps a column to a list of values (or one)."""
    rows = []
    for index in range(count):
        row = {
            "prompt": f"prompt {index}",
            "chosen": f"good answer {index}",
            "rejected": f"bad answer {index}",
        }
        for name, values in columns.items():
            row[name] = values[index] if isinstance(values, list) else values
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_study(path: Path, **sections) -> Path:
    study = {
        "name": "issue19",
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": [{"name": "dpo"}],
    }
    study.update(sections)
    path.write_text(yaml.safe_dump(study))
    return path


def file_study(tmp_path: Path, data: Path, **sections) -> Path:
    sections.setdefault("models", [{"name": str(local_model_folder(tmp_path))}])
    sections.setdefault("training", {"batch_size": 4})  # a step takes batch_size distinct pairs of the small files
    return write_study(tmp_path / "study.yaml", datasets=[{"kind": "file", "source": str(data)}], **sections)


def local_model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "a_model"
    folder.mkdir(exist_ok=True)
    return folder


def assert_validate_and_run_refuse(capsys, tmp_path: Path, study: Path, *names: object) -> None:
    """validate and run both exit 2 naming `names`; run writes no output folder."""
    assert_user_error(*cli(capsys, "validate", study)[::2], study, *names)
    out = tmp_path / "out"
    assert_user_error(*cli(capsys, "run", study, "--out", out)[::2], study, *names)
    assert not out.exists()
    assert not (tmp_path / ".cache").exists()


# ---------------------------------------------------------------------------------------------
# Accepted by validate, failing at run time


def test_a_model_neither_alias_nor_folder_nor_on_the_hub_is_refused_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    study = file_study(tmp_path, data, models=[{"name": "no-such-model-xyz"}])
    assert_validate_and_run_refuse(
        capsys,
        tmp_path,
        study,
        "models[0].name = 'no-such-model-xyz'",
        "smollm2-135m-instruct",
        "HF_HUB_OFFLINE",
    )
    # validate --elsewhere (a study meant for another machine) does not look for the model here.
    assert cli(capsys, "validate", study, "--elsewhere")[0] == 0
    # A local folder and a packaged alias are accepted.
    for name in (str(local_model_folder(tmp_path)), "smollm2-135m-instruct"):
        status, out, err = cli(capsys, "validate", file_study(tmp_path, data, models=[{"name": name}]))
        assert status == 0, err
        assert "is valid" in out


def test_scores_missing_or_nan_for_confidence_noise_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    noise = [{"model": "confidence", "rates": [0.2]}]
    no_scores = write_pairs(tmp_path / "no_scores.jsonl", 20)
    study = file_study(tmp_path, no_scores, noise=noise)
    assert_validate_and_run_refuse(
        capsys, tmp_path, study, "noise[0].model = 'confidence'", no_scores, "no score_chosen column"
    )
    score_rejected = [0.0] * 20
    score_rejected[3] = float("nan")
    score_rejected[7] = None
    nan_scores = write_pairs(tmp_path / "nan.jsonl", 20, score_chosen=1.0, score_rejected=score_rejected)
    study = file_study(tmp_path, nan_scores, noise=noise)
    assert_validate_and_run_refuse(
        capsys,
        tmp_path,
        study,
        nan_scores,
        "2 of 20 pair(s) have a missing or NaN score_rejected (pairs 3, 7)",
    )
    # The same files are fine for a noise model that reads no score.
    assert cli(capsys, "validate", file_study(tmp_path, nan_scores))[0] == 0


def test_a_local_file_too_small_for_its_heldout_split_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_row = write_pairs(tmp_path / "one.jsonl", 1)
    study = file_study(tmp_path, one_row)
    # heldout_fraction 0.1: round(0.5) = 0 (ties to even), round(0.6) = 1, so 6 pairs are the fewest.
    assert_validate_and_run_refuse(
        capsys,
        tmp_path,
        study,
        f"datasets[0].source = {str(one_row)!r}",
        "heldout_fraction = 0.1",
        "1 pair(s) split into 0 held-out and 1 training pair(s)",
        "at least 6 pairs",
    )
    assert cli(capsys, "validate", file_study(tmp_path, write_pairs(tmp_path / "six.jsonl", 6)))[0] == 0


def test_a_dataset_of_identical_pairs_is_refused_and_identical_pairs_leave_every_metric(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    same = write_pairs(tmp_path / "same.jsonl", 8, rejected=[f"good answer {index}" for index in range(8)])
    assert_validate_and_run_refuse(
        capsys, tmp_path, file_study(tmp_path, same), same, "all 8 pairs chosen equals rejected"
    )

    # The engine: 4 training pairs, the last two with identical responses; 3 held-out, the first identical.
    from noisypref.benchmark.config.run_config import default_run_config, parse_run_config
    from noisypref.benchmark.run import evaluate as engine

    class Tokens(SimpleNamespace):
        def __len__(self) -> int:
            return len(self.pair_ids)

    def tokens(identical: list[bool]):
        return Tokens(
            pair_ids=[f"p{index}" for index in range(len(identical))],
            response_a_ids=[[1, 2] for _ in identical],
            response_b_ids=[[1, 2] if same else [3] for same in identical],
        )

    train = {
        "chosen_reward": np.array([1.0, 0.0, 0.0, 0.0]),
        "rejected_reward": np.array([0.0, 1.0, 0.0, 0.0]),
    }
    train["reward_gap"] = train["chosen_reward"] - train["rejected_reward"]
    heldout = {"chosen_reward": np.array([0.0, 2.0, 1.0]), "rejected_reward": np.array([0.0, 1.0, 3.0])}
    heldout["reward_gap"] = heldout["chosen_reward"] - heldout["rejected_reward"]
    train_tokens, heldout_tokens = tokens([False, False, True, True]), tokens([True, False, False])
    monkeypatch.setattr(
        engine,
        "method_outputs",
        lambda policy, method, pairs, *args: train if pairs is train_tokens else heldout,
    )
    flips = SimpleNamespace(
        realised_rate=0.5,
        table=pd.DataFrame({"pair_id": train_tokens.pair_ids, "is_flipped": [False, True, False, True]}),
    )
    prepared = SimpleNamespace(
        policy=None, method=None, train_tokens=train_tokens, heldout_tokens=heldout_tokens, train_reference=None,
        heldout_reference=None, pad_token_id=0, flips=flips, data=SimpleNamespace(testbed=None), cleaning=None,
    )  # fmt: skip
    config = parse_run_config(default_run_config())
    metrics = engine.evaluate_run(config, prepared, tmp_path, torch.device("cpu"))
    # By hand, on the informative pairs only: training gaps [1, -1] -> accuracy 1/2; flipped [F, T] with
    # scores -gap [-1, 1] -> AUROC 1; held-out pairs 2 and 3: (2 > 1) and (1 < 3) -> 1/2.
    assert metrics["train_accuracy"] == 0.5
    assert metrics["noise_detection_auroc"] == 1.0
    assert metrics["heldout_accuracy"] == 0.5
    assert metrics["identical_pairs_excluded"] == 3
    # Training pairs all identical (a tokenizer that reads the responses as nothing): the run fails saying so.
    prepared.train_tokens = train_tokens = tokens([True, True, True, True])
    with pytest.raises(ValueError, match="all 4 training pairs have identical chosen and rejected token ids"):
        engine.evaluate_run(config, prepared, tmp_path, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_flex_attention_without_cuda_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(
        tmp_path / "study.yaml", models=[{"name": "testbed", "attn_implementation": "flex_attention"}]
    )
    assert_validate_and_run_refuse(
        capsys, tmp_path, study, "models[0].attn_implementation = 'flex_attention'", "CUDA", "'sdpa'"
    )


# ---------------------------------------------------------------------------------------------
# noisypref noise


def noise(capsys, data: Path, out: Path, *flags: object) -> tuple[int, str, str]:
    return cli(capsys, "noise", "--data", data, "--model", "symmetric", "--rate", 0.2, "--out", out, *flags)


def test_noise_split_on_a_local_file_is_refused(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    status, _, err = noise(capsys, data, tmp_path / "out", "--split", "test")
    assert_user_error(status, err, "--split 'test'", data, "hub dataset")
    assert not (tmp_path / "out").exists()


def test_noise_seed_outside_the_study_bound_is_refused(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    for seed in (-1, 2**32):
        status, _, err = noise(capsys, data, tmp_path / "out", "--seed", seed)
        assert_user_error(status, err, f"--seed {seed}", ">= 0 and <= 4294967295")
    assert not (tmp_path / "out").exists()
    assert noise(capsys, data, tmp_path / "out", "--seed", 2**32 - 1)[0] == 0


def test_noise_out_onto_an_earlier_output_is_refused_unless_forced(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "out"
    assert noise(capsys, data, out, "--seed", 1)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    status, _, err = noise(capsys, data, out, "--seed", 2)
    assert_user_error(status, err, out / "noisy.jsonl", out / "flips.csv", out / "flips.json", "--force")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert noise(capsys, data, out, "--seed", 2, "--force")[0] == 0
    assert json.loads((out / "flips.json").read_text())["seed"] == 2


def test_annotators_far_from_the_target_rate_warn_and_say_why(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 400)
    status, out, err = cli(
        capsys, "noise", "--data", data, "--model", "annotators", "--rate", 0.2, "--option", "accuracy=0.3",
        "--out", tmp_path / "annotators",
    )  # fmt: skip
    assert status == 0, err
    # Three annotators wrong with probability 0.7 each: the majority errs with 3 * 0.7^2 * 0.3 + 0.7^3.
    expected_rate = 3 * 0.7**2 * 0.3 + 0.7**3
    assert "warning: the realised flip rate" in err and "far from the target 0.2 (400 pairs)" in err, err
    assert "3 annotator(s) with accuracy 0.3" in err and f"expected rate is {expected_rate:.4f}" in err, err
    realised = json.loads((tmp_path / "annotators" / "flips.json").read_text())["realised_rate"]
    assert f"{realised:.4f}" in err
    # A calibrated model gives no warning.
    status, _, err = noise(capsys, data, tmp_path / "symmetric", "--option", "mode=exact")
    assert status == 0 and "warning" not in err, err


# ---------------------------------------------------------------------------------------------
# Study folders

STUDY = {
    "name": "folder",
    "noise": [{"model": "symmetric", "rates": [0, 0.2]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
    "evaluation": {"num_eval_prompts": 128},
}


def fake_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """A fake run writing result.json last, atomically, as the engine does."""
    result = {
        "run_id": Path(run_dir).name,
        "status": "succeeded",
        "metrics": {"heldout_accuracy": 0.75 - run_config["noise"]["rate"]},
        "config": run_config,
        "wall_time_s": 0.0,
    }
    write_json_atomic(Path(run_dir) / "result.json", result)
    return result


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:fake_execute")


def results(out: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}


def test_a_torn_result_is_not_done_is_named_and_is_rerun(tmp_path, capsys, caplog, fake_engine):
    study, out = write_study(tmp_path / "study.yaml", **STUDY), tmp_path / "out"
    assert cli(capsys, "run", study, "--out", out, "--workers", 1, "--no-report")[0] == 0
    finished = results(out)
    torn = next(iter(sorted(out.glob("runs/*/result.json"))))
    torn.write_text(torn.read_text()[:40])
    caplog.set_level(logging.WARNING)
    status, stdout, err = cli(capsys, "status", out)
    assert status == 0, err
    assert "4 runs: 3 done, 0 running, 0 failed, 1 pending" in stdout
    assert str(torn) in caplog.text and "unreadable" in caplog.text
    caplog.clear()
    status, stdout, _ = cli(capsys, "collect", out)
    assert status == 0 and "3 succeeded" in stdout and "1 pending" in stdout
    assert str(torn) in caplog.text
    status, stdout, _ = cli(capsys, "run", study, "--out", out, "--workers", 1, "--no-report")
    assert status == 0 and "1 succeeded, 0 failed, 3 skipped" in stdout
    again = results(out)
    assert json.loads(torn.read_text())["status"] == "succeeded"
    assert {run: mtime for run, mtime in again.items() if run != torn.parent.name} == {
        run: mtime for run, mtime in finished.items() if run != torn.parent.name
    }


def test_ctrl_c_while_writing_the_report_keeps_the_runs_and_names_the_report_command(
    tmp_path, capsys, monkeypatch, fake_engine
):
    import noisypref.reports

    def interrupted(out):
        raise KeyboardInterrupt

    monkeypatch.setattr(noisypref.reports, "write_report", interrupted)
    study, out = write_study(tmp_path / "study.yaml", **STUDY), tmp_path / "out"
    status, _, err = cli(capsys, "run", study, "--out", out, "--workers", 1)
    assert status == 130
    assert "interrupted while writing the report" in err and "All runs are kept (4 of 4 finished)" in err, err
    assert f"noisypref report {out}" in err
    assert len(results(out)) == 4 and (out / "results.parquet").is_file()


def test_force_moves_the_previous_studys_runs_into_superseded(tmp_path, capsys, caplog, fake_engine):
    out = tmp_path / "out"
    first = write_study(tmp_path / "first.yaml", **STUDY)
    assert cli(capsys, "run", first, "--out", out, "--workers", 1, "--no-report")[0] == 0
    first_runs = results(out)
    second = write_study(
        tmp_path / "second.yaml", **{**STUDY, "name": "second", "methods": [{"name": "dpo"}]}
    )
    caplog.set_level(logging.WARNING)
    status, stdout, _ = cli(capsys, "run", second, "--out", out, "--workers", 1, "--no-report", "--force")
    assert status == 0
    assert "0 succeeded, 0 failed, 2 skipped" in stdout  # the two dpo runs are shared and kept
    (superseded,) = (out / "superseded").iterdir()
    moved = {path.parent.name: path.stat().st_mtime_ns for path in superseded.glob("runs/*/result.json")}
    assert len(moved) == 2 and not set(moved) & set(results(out))
    assert {**moved, **results(out)} == first_runs  # nothing deleted, nothing rewritten
    assert yaml.safe_load((superseded / "study.yaml").read_text())["methods"][1]["name"] == "ipo"
    assert (
        "2 run folder(s)" in caplog.text
        and str(superseded) in caplog.text
        and "nothing deleted" in caplog.text
    )


# ---------------------------------------------------------------------------------------------
# Metrics and alpacaeval


def test_a_degenerate_length_controlled_win_rate_is_missing_and_small_samples_warn(
    tmp_path, capsys, caplog, monkeypatch
):
    from noisypref.benchmark.evaluation import alpaca_eval
    from noisypref.benchmark.evaluation import metrics as evaluate

    # Every comparison a tie: the GLM's log loss is smallest with every coefficient 0, nothing to fit.
    with pytest.raises(alpaca_eval.NothingToFit, match="on 32 comparisons"):
        alpaca_eval.length_controlled_minimal_winrate(np.full(32, 0.5), np.arange(32)[::-1] - np.arange(32))
    monkeypatch.setattr(
        evaluate, "sample_responses", lambda model, tokenizer, prompts, **options: [["same"]] * len(prompts)
    )
    gold_reward = SimpleNamespace(score_many=lambda prompts, responses: np.ones(len(responses)))
    settings = SimpleNamespace(samples_per_prompt=1, temperature=1.0, max_new_tokens=4, kl_samples=0)
    caplog.set_level(logging.WARNING)
    metrics = evaluate.gold_reward_metrics(None, None, None, ["p"] * 32, gold_reward, settings, seed=0)
    assert metrics["gold_win_rate"] == 0.5 and "gold_lc_win_rate" not in metrics
    assert "gold_lc_win_rate is missing" in caplog.text and "32 comparisons" in caplog.text
    # validate warns that 32 prompts are too few: standard error up to 0.5 / sqrt(32).
    caplog.clear()
    study = write_study(tmp_path / "study.yaml", evaluation={"num_eval_prompts": 32})
    assert cli(capsys, "validate", study)[0] == 0
    assert "evaluation.num_eval_prompts = 32" in caplog.text and f"{0.5 / math.sqrt(32):.3f}" in caplog.text


def test_alpacaeval_reads_jsonl_gz_and_names_a_torn_one(tmp_path, capsys):
    records = json.loads(ANNOTATIONS_FILE.read_text())
    compressed = tmp_path / "annotations.jsonl.gz"
    compressed.write_bytes(gzip.compress("".join(json.dumps(record) + "\n" for record in records).encode()))
    status, out, err = cli(capsys, "alpacaeval", "--annotations", compressed, "--lc-variant", "offline-glm")
    assert status == 0, err
    assert f"{len(records)} annotations" in out
    torn = tmp_path / "torn.jsonl.gz"
    torn.write_bytes(compressed.read_bytes()[:200])
    status, _, err = cli(capsys, "alpacaeval", "--annotations", torn, "--lc-variant", "offline-glm")
    assert_user_error(status, err, torn, "gzip")


def test_alpacaeval_refuses_out_of_range_preferences_and_counts_nulls(tmp_path, capsys):
    records = json.loads(ANNOTATIONS_FILE.read_text())
    bad = [dict(record) for record in records]
    bad[3]["preference"], bad[10]["preference"] = 3.5, -1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    status, _, err = cli(capsys, "alpacaeval", "--annotations", path, "--lc-variant", "offline-glm")
    assert_user_error(status, err, path, "2 annotation(s)", "row 3: 3.5", "row 10: -1", "[1, 2]", "null")
    with_nulls = [dict(record) for record in records]
    with_nulls[0]["preference"] = with_nulls[5]["preference"] = None
    path = tmp_path / "nulls.json"
    path.write_text(json.dumps(with_nulls))
    status, out, err = cli(
        capsys, "alpacaeval", "--annotations", path, "--lc-variant", "offline-glm", "--json"
    )
    assert status == 0, err
    score = json.loads(out)
    assert score["n_dropped_null"] == 2 and score["n_total"] == len(records) - 2
    status, out, _ = cli(capsys, "alpacaeval", "--annotations", path, "--lc-variant", "offline-glm")
    assert "left out (null preference)   2" in out
