"""Tests of AlpacaEval 2 support (noisypref.benchmark.evaluation.alpaca_eval, noisypref alpacaeval)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaForSequenceClassification

from noisypref.benchmark.evaluation import alpaca_eval
from noisypref.benchmark.evaluation.alpaca_eval import (
    HFRewardModel,
    RewardJudge,
    annotate_pairs,
    evaluate_outputs,
    load_eval_set,
    run_api_judge,
    score_annotations,
    write_model_outputs,
)
from noisypref.benchmark.testbed import GoldReward, TestbedConfig, build_word_tokenizer
from noisypref.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"
ANNOTATIONS = DATA / "alpaca-7b_weighted_alpaca_eval_gpt4_turbo_annotations.json"
LEADERBOARD = DATA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
REFERENCE_OUTPUTS = DATA / "gpt4_1106_preview_model_outputs.json"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"public AlpacaEval files not found at {DATA}")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def no_hub(monkeypatch):
    """Make the official LC variant fail at once, as it does on a machine with no hub access."""

    def unreachable(annotations):
        raise OSError("df_gamed.csv: hub unreachable (test)")

    monkeypatch.setattr(alpaca_eval.scoring, "official_length_controlled_winrate", unreachable)


@needs_data
def test_alpaca_7b_annotations_give_the_leaderboard_win_rate_and_standard_error():
    leaderboard = pd.read_csv(LEADERBOARD, index_col=0)
    published = leaderboard.loc["alpaca-7b"]

    score = score_annotations(ANNOTATIONS, lc_variant="offline-glm")

    assert score.model == "alpaca-7b" and score.baseline == "gpt4_1106_preview"
    assert score.win_rate == pytest.approx(published["win_rate"], abs=1e-6)
    assert score.standard_error == pytest.approx(published["standard_error"], abs=1e-6)
    assert score.discrete_win_rate == pytest.approx(published["discrete_win_rate"], abs=1e-6)
    assert (score.n_wins, score.n_wins_base, score.n_draws, score.n_total) == (
        published["n_wins"],
        published["n_wins_base"],
        published["n_draws"],
        published["n_total"],
    )
    assert score.avg_length == published["avg_length"]
    assert score.lc_variant == "offline-glm" and "not comparable" in score.lc_note


@needs_data
def test_auto_falls_back_to_the_offline_glm_and_says_so(no_hub, caplog):
    score = score_annotations(ANNOTATIONS)
    assert score.lc_variant == "offline-glm"
    assert "df_gamed.csv" in score.lc_note and "fell back" in score.lc_note
    assert "df_gamed.csv" in caplog.text
    assert score.lc_standard_error is None
    with pytest.raises(OSError, match="hub unreachable"):
        score_annotations(ANNOTATIONS, lc_variant="official")


def length_driven_annotations(equal_length_win_rate: float, rows: int = 400, seed: int = 0) -> list[dict]:
    """Annotations where the model is always longer and P(model wins) = σ(a + b·tanh(z)), z the
    standardised length difference (baseline − model) — exactly the GLM's functional form — with
    a = logit(equal_length_win_rate) and b = −2 (longer answers win more)."""
    rng = np.random.default_rng(seed)
    extra_characters = rng.integers(50, 400, size=rows)
    delta_length = -extra_characters.astype(float)
    z = delta_length / pd.Series(delta_length).std()
    intercept = math.log(equal_length_win_rate / (1 - equal_length_win_rate))
    preference = 1 + sigmoid(intercept - 2.0 * np.tanh(z))
    return [
        {
            "instruction": f"instruction {row}",
            "output_1": "b" * 100,
            "output_2": "m" * (100 + int(extra)),
            "generator_1": "baseline",
            "generator_2": "model",
            "preference": float(pref),
        }
        for row, (extra, pref) in enumerate(zip(extra_characters, preference, strict=True))
    ]


@pytest.mark.parametrize("equal_length_win_rate", [0.5, 0.3])
def test_offline_glm_removes_a_known_length_effect(equal_length_win_rate):
    annotations = length_driven_annotations(equal_length_win_rate)
    score = score_annotations(annotations, lc_variant="offline-glm")
    # The raw win rate is inflated by length; at equal length the true model gives the parameter back.
    assert score.win_rate > 100 * equal_length_win_rate + 15
    assert score.length_controlled_winrate == pytest.approx(100 * equal_length_win_rate, abs=2.0)


def test_offline_glm_leaves_a_length_independent_judge_alone():
    rng = np.random.default_rng(1)
    annotations = [
        {
            "output_1": "b" * int(n1),
            "output_2": "m" * int(n2),
            "generator_1": "b",
            "generator_2": "m",
            "preference": 1.3,
        }
        for n1, n2 in zip(rng.integers(50, 500, 300), rng.integers(50, 500, 300), strict=True)
    ]
    score = score_annotations(annotations, lc_variant="offline-glm")
    assert score.win_rate == pytest.approx(30.0)
    assert score.length_controlled_winrate == pytest.approx(30.0, abs=1.0)


def test_official_variant_is_the_package_glm(monkeypatch, tmp_path):
    """Wiring only: the package's GLM runs on a synthetic stand-in for the hub's df_gamed.csv."""
    annotations = length_driven_annotations(0.5)
    rows = len(annotations)
    gamed = pd.DataFrame(
        {
            "model": ["gamed_verbose"] * rows + ["gamed_concise"] * rows,
            "index": list(range(rows)) * 2,
            "preference": [0.7] * rows + [0.3] * rows,
            "std_delta_len": [-1.0] * rows + [1.0] * rows,
            "instruction_difficulty": [0.0] * (2 * rows),
            "not_gamed_baseline": [False] * (2 * rows),
        }
    )
    gamed_file = tmp_path / "df_gamed.csv"
    gamed.to_csv(gamed_file, index=False)
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        return str(gamed_file)

    monkeypatch.setattr("alpaca_eval.metrics.glm_winrate.hf_hub_download", fake_download)
    score = score_annotations(annotations, lc_variant="official")
    assert requested == [("tatsu-lab/alpaca_eval", "df_gamed.csv")]
    assert score.lc_variant == "official" and score.lc_note == ""
    assert 0 < score.length_controlled_winrate < score.win_rate
    assert score.lc_standard_error is not None


def test_select_pair_names_the_problem():
    annotations = length_driven_annotations(0.5, rows=20)
    annotations += [{**row, "generator_2": "other"} for row in annotations]
    with pytest.raises(ValueError, match="several models"):
        score_annotations(annotations, lc_variant="offline-glm")
    score = score_annotations(annotations, model="other", lc_variant="offline-glm")
    assert score.model == "other" and score.n_total == 20
    with pytest.raises(ValueError, match="baseline 'nobody' is not in the annotations"):
        score_annotations(annotations, model="model", baseline="nobody")


@needs_data
def test_eval_set_from_a_local_file_and_model_outputs_in_alpaca_eval_format(tmp_path):
    from alpaca_eval.utils import load_or_convert_to_dataframe

    eval_set = load_eval_set(REFERENCE_OUTPUTS)
    assert len(eval_set) == 805
    outputs = [f"answer {index}" for index in range(805)]
    path = write_model_outputs(tmp_path / "model_outputs.json", eval_set, outputs, "my-model")

    written = json.loads(path.read_text())
    assert [set(row) for row in written] == [{"instruction", "output", "generator", "dataset"}] * 805
    assert [row["instruction"] for row in written] == [row["instruction"] for row in eval_set]
    assert [row["dataset"] for row in written] == [row["dataset"] for row in eval_set]
    assert [row["output"] for row in written] == outputs
    as_read_by_alpaca_eval = load_or_convert_to_dataframe(path)
    assert list(as_read_by_alpaca_eval["generator"].unique()) == ["my-model"]
    with pytest.raises(ValueError, match="804 outputs for 805"):
        write_model_outputs(tmp_path / "bad.json", eval_set, outputs[:-1], "my-model")


def test_eval_set_from_the_hub_reads_the_config_file(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(
            [{"instruction": "i", "output": "o", "generator": "g", "dataset": "d"}]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_eval_set() == [{"instruction": "i", "output": "o", "generator": "g", "dataset": "d"}]
    assert calls == [
        (
            "json",
            {
                "data_files": "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval_gpt4_baseline.json",
                "split": "train",
            },
        )
    ]


def test_reward_judge_preferences_by_hand():
    rewards = {"low": 1.0, "high": 3.0, "same": 1.0}

    def reward(prompts, responses):
        return [rewards[response] for response in responses]

    hard = RewardJudge(reward)
    assert hard.preferences(["p"] * 3, ["low", "high", "low"], ["high", "low", "same"]) == [2.0, 1.0, 1.5]
    weighted = RewardJudge(reward, temperature=2.0)
    assert weighted("p", "low", "high") == pytest.approx(1 + 1 / (1 + math.exp(-1.0)))
    assert weighted("p", "high", "low") == pytest.approx(1 + 1 / (1 + math.exp(1.0)))
    with pytest.raises(ValueError, match="temperature"):
        RewardJudge(reward, temperature=0.0)


def test_gold_reward_judge_writes_package_format_annotations(tmp_path):
    gold = GoldReward(TestbedConfig())
    rng = np.random.default_rng(0)
    prompts = [gold.topics[index % len(gold.topics)] for index in range(40)]

    def random_response() -> str:
        return " ".join(gold.words[index] for index in rng.integers(len(gold.words), size=rng.integers(3, 9)))

    reference = [
        {"instruction": p, "output": random_response(), "generator": "reference", "dataset": "t"}
        for p in prompts
    ]
    model = [
        {"instruction": p, "output": random_response(), "generator": "policy", "dataset": "t"}
        for p in prompts
    ]
    judge = RewardJudge.from_gold_reward(gold)

    annotations = annotate_pairs(reference, model, judge)

    expected = [
        1.0 if gold(p, r["output"]) > gold(p, m["output"]) else 2.0
        for p, r, m in zip(prompts, reference, model, strict=True)
    ]
    assert [row["preference"] for row in annotations] == expected
    assert {row["annotator"] for row in annotations} == {"gold_reward"}
    assert set(annotations[0]) == {
        "instruction",
        "output_1",
        "generator_1",
        "output_2",
        "generator_2",
        "dataset",
        "annotator",
        "preference",
    }
    score = score_annotations(annotations, lc_variant="offline-glm")
    assert score.win_rate == pytest.approx(100 * np.mean(np.array(expected) - 1))
    assert score.annotator == "gold_reward"


def test_annotate_pairs_checks_its_inputs():
    reference = [{"instruction": "a", "output": "x", "generator": "r"}]
    with pytest.raises(ValueError, match="instruction 0 differs"):
        annotate_pairs(reference, [{"instruction": "b", "output": "y", "generator": "m"}], lambda *_: 2.0)
    with pytest.raises(ValueError, match="preference 3"):
        annotate_pairs(reference, [{"instruction": "a", "output": "y", "generator": "m"}], lambda *_: 3.0)


def test_hf_reward_model_scores_like_a_plain_forward_pass(tmp_path, tiny_llama_config):
    tokenizer = build_word_tokenizer(num_topics=4, num_words=16)
    config = tiny_llama_config(
        len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "reward_model")
    tokenizer.save_pretrained(tmp_path / "reward_model")

    reward_model = HFRewardModel(tmp_path / "reward_model", device="cpu", batch_size=2)
    prompts = ["topic_0", "topic_1", "topic_2"]
    responses = ["w1 w2 w3 w4 w5", "w3", "w7 w8"]
    rewards = reward_model(prompts, responses)

    plain = LlamaForSequenceClassification.from_pretrained(tmp_path / "reward_model").eval()
    for prompt, response, reward in zip(prompts, responses, rewards, strict=True):
        ids = tokenizer(f"{prompt}\n\n{response}", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert reward == pytest.approx(plain(ids).logits[0, 0].item(), abs=1e-5)

    judge = RewardJudge(reward_model, name="tiny_rm")
    expected = 1.5 + 0.5 * np.sign(rewards[1] - rewards[0])
    assert judge(prompts[0], responses[0], responses[1]) == expected


@needs_data
def test_cli_prints_win_rate_standard_error_and_the_lc_variant(capsys):
    published = pd.read_csv(LEADERBOARD, index_col=0).loc["alpaca-7b"]
    assert (
        main(["alpacaeval", "--annotations", str(ANNOTATIONS), "--lc-variant", "offline-glm", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["win_rate"] == pytest.approx(published["win_rate"], abs=1e-6)
    assert result["standard_error"] == pytest.approx(published["standard_error"], abs=1e-6)
    assert result["lc_variant"] == "offline-glm"

    assert main(["alpacaeval", "--annotations", str(ANNOTATIONS), "--lc-variant", "offline-glm"]) == 0
    text = capsys.readouterr().out
    assert "2.59 ± 0.49" in text and "[offline-glm]" in text

    assert main(["alpacaeval", "--annotations", str(ANNOTATIONS), "--baseline", "nobody"]) == 2
    assert "baseline 'nobody' is not in the annotations" in capsys.readouterr().err


def test_api_judge_is_wired_to_alpaca_eval_evaluate(monkeypatch, tmp_path):
    import alpaca_eval as package

    received = {}
    canned = [
        {
            "instruction": "a",
            "output_1": "x",
            "output_2": "y",
            "generator_1": "r",
            "generator_2": "m",
            "annotator": "weighted_alpaca_eval_gpt4_turbo",
            "preference": float("nan"),
        }
    ]

    def fake_evaluate(**kwargs):
        received.update(kwargs)
        return pd.DataFrame(), pd.DataFrame(canned)

    monkeypatch.setattr(package, "evaluate", fake_evaluate)
    for name in alpaca_eval.API_KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    model = [{"instruction": "a", "output": "y", "generator": "m", "dataset": "d"}]
    reference = [{"instruction": "a", "output": "x", "generator": "r", "dataset": "d"}]
    with pytest.raises(RuntimeError, match="no API key"):
        run_api_judge(model, reference, tmp_path)

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    annotations = run_api_judge(model, reference, tmp_path, annotator="alpaca_eval_gpt4_turbo_fn")
    assert received["annotators_config"] == "alpaca_eval_gpt4_turbo_fn"
    assert received["fn_metric"] == "get_winrate"
    assert received["output_path"] == str(tmp_path)
    assert list(received["model_outputs"]["output"]) == ["y"]
    assert annotations[0]["preference"] is None  # a failed annotation stays missing, not NaN


def test_evaluate_outputs_uses_the_api_when_a_key_is_set_and_the_local_judge_otherwise(monkeypatch, tmp_path):
    judged = []
    monkeypatch.setattr(alpaca_eval.scoring, "run_api_judge", lambda *args, **kwargs: judged.append("api") or [])
    for name in alpaca_eval.API_KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    reference = [
        {"instruction": f"i{n}", "output": "x" * n, "generator": "r", "dataset": "d"} for n in range(1, 31)
    ]
    model = [
        {"instruction": f"i{n}", "output": "y" * (n + 5), "generator": "m", "dataset": "d"}
        for n in range(1, 31)
    ]

    def local_judge(instruction, output_1, output_2):
        judged.append("local")
        return 2.0 if len(output_2) % 2 else 1.0

    score = evaluate_outputs(model, reference, tmp_path, local_judge=local_judge, lc_variant="offline-glm")
    assert judged == ["local"] * 30
    assert score.win_rate == pytest.approx(50.0)
    assert json.loads((tmp_path / "score.json").read_text())["win_rate"] == pytest.approx(50.0)
    assert len(json.loads((tmp_path / "annotations.json").read_text())) == 30

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with pytest.raises(ValueError, match="no annotations"):  # the stub API judge returns none
        evaluate_outputs(model, reference, tmp_path, local_judge=local_judge)
    assert judged[-1] == "api"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="no judge"):
        evaluate_outputs(model, reference, tmp_path)
