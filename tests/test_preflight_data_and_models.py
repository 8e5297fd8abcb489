"""Mistakes a study file's schema accepts and a run would hit (issue 19), one test per case: a model that
is neither an alias, a folder nor on the hub; scores missing or NaN for confidence noise; a local file too
small for its held-out split; a dataset of identical pairs (and identical pairs leave every metric); flex
attention without CUDA. `validate` and `run` both exit 2 with a message naming the file or field, the bad
value and what is allowed, and nothing is written. The engine's hunk is tested on canned model outputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import assert_user_error, cli, write_pairs, write_study


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
