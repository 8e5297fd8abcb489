"""Win rates at their edges and AlpacaEval annotation files (issue 19): a degenerate length-controlled win
rate is missing and small samples warn; gzip-compressed JSON lines are read and a torn file is named;
preferences out of range are refused and null ones counted."""

from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import assert_user_error, cli, write_study

ANNOTATIONS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "alpaca_eval"
ANNOTATIONS_FILE = ANNOTATIONS / "alpaca-7b_weighted_alpaca_eval_gpt4_turbo_annotations.json"


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
