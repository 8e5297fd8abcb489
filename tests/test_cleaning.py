"""Data cleaning (issue 23): every judge against a by-hand computation, the budgets and treatments, the
record's detection metrics recomputed by hand, and the wall between the flip record and every judge but
the oracle."""

from __future__ import annotations

import dataclasses
import logging
import math

import datasets
import numpy as np
import pandas as pd
import pytest

from noisypref.benchmark.evaluation.cleaning_metrics import cleaning_quality, training_flips
from noisypref.cleaning import (
    JUDGES,
    Budget,
    CleaningRecord,
    JudgeInputs,
    JudgeOptions,
    JudgeScores,
    OracleInputs,
    ResponseLogps,
    apply_record,
    clean,
    get_judge,
    register_judge,
)
from noisypref.cleaning.estimate import anchor_flip_rate
from noisypref.cleaning.reward_model import fold_of_each_pair
from noisypref.cleaning.score_margin import warn_if_scores_reveal_labels
from noisypref.noise_injection import inject

# ---------------------------------------------------------------------------------------------
# Small datasets and a stand-in for the models a run supplies


def scored_pairs(num_pairs: int = 40, seed: int = 0) -> datasets.Dataset:
    """Pairs whose score gap is positive (the label agrees with the scores), in a shuffled row order."""
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.1, 3.0, num_pairs)
    base = rng.normal(0.0, 1.0, num_pairs)
    return datasets.Dataset.from_dict(
        {
            "pair_id": [f"p{index:03d}" for index in rng.permutation(num_pairs)],
            "prompt": [f"prompt {index}" for index in range(num_pairs)],
            "chosen": [f"good answer {index}" for index in range(num_pairs)],
            "rejected": [f"bad answer {index} longer" for index in range(num_pairs)],
            "score_chosen": (base + gaps).tolist(),
            "score_rejected": base.tolist(),
        }
    )


class StandInModels:
    """`PairModels` with hand-set values: the reference log-probs of each row's chosen and rejected
    response, and a fixed 'trained' reward gap per row; it records every training it is asked for."""

    def __init__(self, num_pairs: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.chosen = rng.normal(-20.0, 4.0, num_pairs)
        self.rejected = rng.normal(-22.0, 4.0, num_pairs)
        self.chosen_length = rng.integers(3, 12, num_pairs).astype(float)
        self.rejected_length = rng.integers(3, 12, num_pairs).astype(float)
        self.gaps = rng.normal(0.5, 1.0, num_pairs)
        self.calls: list[tuple[np.ndarray, np.ndarray, int, float, int]] = []

    def reference_logps(self) -> ResponseLogps:
        return ResponseLogps(self.chosen, self.rejected, self.chosen_length, self.rejected_length)

    def trained_reward_gaps(self, train_rows, score_rows, *, steps, beta, seed):
        self.calls.append((np.asarray(train_rows), np.asarray(score_rows), steps, beta, seed))
        return self.gaps[np.asarray(score_rows)]


def top_share_by_hand(suspicion: np.ndarray, pair_ids: list[str], share: float) -> set[str]:
    """The round(share · N) most suspect pairs; ties to the smaller pair_id."""
    order = sorted(range(len(pair_ids)), key=lambda row: (-suspicion[row], pair_ids[row]))
    return {pair_ids[row] for row in order[: round(share * len(pair_ids))]}


def flagged_ids(record: CleaningRecord) -> set[str]:
    return set(record.table.loc[record.table["flagged"], "pair_id"])


# ---------------------------------------------------------------------------------------------
# The oracle


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.4])
@pytest.mark.parametrize("budget", ["estimated", "realised_rate"])
def test_the_oracle_at_the_realised_rate_has_precision_and_recall_one(rate, budget):
    noisy, flips = inject(scored_pairs(), "symmetric", rate, seed=3)
    cleaned, record = clean(
        noisy, "oracle", seed=3, budget=budget, is_flipped=flips.table["is_flipped"].to_numpy(),
        known_flip_rate=flips.realised_rate,
    )  # fmt: skip
    quality = cleaning_quality(record, flips)
    assert quality["cleaning_precision"] == 1.0 and quality["cleaning_recall"] == 1.0
    assert quality["cleaning_f1"] == 1.0 and quality["cleaning_auroc"] == 1.0
    assert quality["cleaning_noise_left"] == 0.0
    assert record.estimated_rate == flips.realised_rate


def test_the_oracle_removing_its_estimate_is_the_noisy_data_minus_the_flipped_pairs():
    """The clean_only reference of issue 22: noisy pairs minus the recorded flips, each with its original label."""
    clean_data = scored_pairs(60)
    noisy, flips = inject(clean_data, "symmetric", 0.3, seed=5)
    cleaned, _ = clean(noisy, "oracle", seed=5, is_flipped=flips.table["is_flipped"].to_numpy())
    flipped = flips.flipped_pair_ids()
    expected = [row for row in clean_data.to_list() if row["pair_id"] not in flipped]
    assert cleaned.to_list() == expected


def test_the_oracle_needs_the_flip_record():
    noisy, _ = inject(scored_pairs(), "symmetric", 0.2, seed=0)
    with pytest.raises(ValueError, match="reads the flip record"):
        clean(noisy, "oracle", seed=0)


# ---------------------------------------------------------------------------------------------
# Judges against by-hand computations


def test_score_columns_that_made_the_labels_are_warned_about_before_injection(caplog):
    def pairs(chosen: list[float], rejected: list[float]) -> datasets.Dataset:
        ids = [f"p{index}" for index in range(len(chosen))]
        return datasets.Dataset.from_dict({"pair_id": ids, "prompt": ids, "chosen": ids, "rejected": ids,
                                           "score_chosen": chosen, "score_rejected": rejected})  # fmt: skip

    options = get_judge("score_margin").make_options({})
    revealing = pairs([1.0] * 199 + [0.5], [0.0] * 199 + [0.5])  # 199 agree, one tie: (199 + 0.5) / 200
    with caplog.at_level(logging.WARNING, logger="noisypref.cleaning.score_margin"):
        assert warn_if_scores_reveal_labels(revealing, options) == pytest.approx(199.5 / 200)
    assert "99.8 % of the 200 pairs before noise injection" in caplog.text
    caplog.clear()
    independent = pairs([1.0] * 197 + [0.0] * 3, [0.0] * 197 + [1.0] * 3)  # 197 / 200 = 98.5 %: no warning
    with caplog.at_level(logging.WARNING, logger="noisypref.cleaning.score_margin"):
        assert warn_if_scores_reveal_labels(independent, options) == pytest.approx(0.985)
    assert caplog.text == ""
    unscored = revealing.remove_columns(["score_chosen"])
    assert warn_if_scores_reveal_labels(unscored, options) is None


def test_score_margin_flags_the_pairs_a_by_hand_ranking_flags():
    noisy, flips = inject(scored_pairs(50), "symmetric", 0.2, seed=1)
    rows = noisy.to_list()
    suspicion = np.array([row["score_rejected"] - row["score_chosen"] for row in rows])
    pair_ids = [row["pair_id"] for row in rows]
    _, record = clean(noisy, "score_margin", seed=1, budget=0.3)
    assert flagged_ids(record) == top_share_by_hand(suspicion, pair_ids, 0.3)
    np.testing.assert_allclose(record.table["score"], suspicion)
    # a threshold: every pair whose rejected response scored more than 0.5 above the chosen one
    _, record = clean(noisy, "score_margin", seed=1, budget={"threshold": 0.5})
    assert flagged_ids(record) == {row["pair_id"] for row in rows if row["score_rejected"] - row["score_chosen"] > 0.5}
    # the labels were made from these scores and swapped with them: the sign of the gap is the flip record
    _, record = clean(noisy, "score_margin", seed=1, budget={"threshold": 0.0})
    assert flagged_ids(record) == flips.flipped_pair_ids()


@pytest.mark.parametrize("normalise", ["sum", "mean"])
def test_reference_margin_flags_the_pairs_a_by_hand_log_likelihood_ratio_flags(normalise):
    noisy = scored_pairs(30)
    models = StandInModels(30)
    if normalise == "sum":
        margins = [c - r for c, r in zip(models.chosen, models.rejected, strict=True)]
    else:  # minus PerpCorrect's PPLDiff = log PPL(chosen) − log PPL(rejected), log PPL(y) = −(sum log p) / |y|
        margins = [
            -((-c / cl) - (-r / rl))
            for c, r, cl, rl in zip(models.chosen, models.rejected, models.chosen_length, models.rejected_length, strict=True)
        ]  # fmt: skip
    suspicion = -np.array(margins)
    _, record = clean(noisy, "reference_margin", seed=0, options={"normalise": normalise}, budget=0.2, models=models)
    np.testing.assert_allclose(record.table["score"], suspicion, rtol=1e-12)
    assert flagged_ids(record) == top_share_by_hand(suspicion, list(noisy["pair_id"]), 0.2)


def test_small_loss_scores_each_pair_by_its_dpo_loss_after_a_warm_up_on_every_pair():
    noisy = scored_pairs(30)
    models = StandInModels(30)
    _, record = clean(noisy, "small_loss", seed=7, options={"steps": 5, "beta": 0.2}, budget=0.1, models=models)
    ((train_rows, score_rows, steps, beta, seed),) = models.calls
    assert sorted(train_rows) == sorted(score_rows) == list(range(30)) and (steps, beta, seed) == (5, 0.2, 7)
    loss_by_hand = [math.log(1.0 + math.exp(-gap)) for gap in models.gaps]  # −log σ(h)
    np.testing.assert_allclose(record.table["score"], loss_by_hand, rtol=1e-12)
    assert flagged_ids(record) == top_share_by_hand(np.array(loss_by_hand), list(noisy["pair_id"]), 0.1)


def test_reward_model_is_cross_fitted_no_pair_is_scored_by_a_model_that_trained_on_it():
    noisy = scored_pairs(41)
    models = StandInModels(41)
    _, record = clean(noisy, "reward_model", seed=2, options={"folds": 4, "steps": 3}, budget=0.25, models=models)
    assert len(models.calls) == 4
    scored = np.concatenate([score_rows for _, score_rows, *_ in models.calls])
    assert sorted(scored) == list(range(41))  # every pair scored exactly once
    for train_rows, score_rows, steps, *_ in models.calls:
        assert not set(train_rows) & set(score_rows) and len(train_rows) + len(score_rows) == 41 and steps == 3
    assert sorted(len(score_rows) for _, score_rows, *_ in models.calls) == [10, 10, 10, 11]
    np.testing.assert_allclose(record.table["score"], -models.gaps, rtol=1e-12)


def test_reward_model_folds_depend_on_the_pair_set_not_on_the_row_order():
    pair_ids = [f"id{index}" for index in range(23)]
    folds = dict(zip(pair_ids, fold_of_each_pair(pair_ids, 3, seed=4), strict=True))
    reordered = pair_ids[::-1]
    assert dict(zip(reordered, fold_of_each_pair(reordered, 3, seed=4), strict=True)) == folds
    assert fold_of_each_pair(pair_ids, 3, seed=5).tolist() != fold_of_each_pair(pair_ids, 3, seed=4).tolist()


def test_a_reward_model_folder_scores_prompt_and_response_as_a_direct_forward_pass_does(tmp_path, tiny_llama_config):
    import torch
    from transformers import LlamaForSequenceClassification

    from noisypref.benchmark.testbed import build_word_tokenizer

    tokenizer = build_word_tokenizer(2, 8)
    vocabulary = [token for token in tokenizer.get_vocab() if not token.startswith(("<", "["))][:6]
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    rows = {
        "pair_id": ["a", "b", "c"],
        "prompt": [vocabulary[0], vocabulary[1], vocabulary[2]],
        "chosen": [f"{vocabulary[3]} {vocabulary[4]}", vocabulary[5], vocabulary[3]],
        "rejected": [vocabulary[4], f"{vocabulary[5]} {vocabulary[5]}", f"{vocabulary[1]} {vocabulary[2]}"],
    }
    _, record = clean(datasets.Dataset.from_dict(rows), "reward_model", seed=0, budget=0.0,
                      options={"model": str(tmp_path / "rm"), "batch_size": 2})  # fmt: skip

    def reward(prompt: str, response: str) -> float:  # no chat template: bos, then the texts on their own lines
        ids = tokenizer((tokenizer.bos_token or "") + f"{prompt}\n{response}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([ids])).logits[0, 0])

    by_hand = [reward(p, r) - reward(p, c) for p, c, r in zip(rows["prompt"], rows["chosen"], rows["rejected"], strict=True)]
    np.testing.assert_allclose(record.table["score"], by_hand, rtol=1e-4, atol=1e-5)


def test_an_ensemble_flags_by_the_vote_of_its_members_at_their_budgets():
    rng = np.random.default_rng(3)
    num_pairs = 30
    columns = {f"{name}_{side}": rng.normal(size=num_pairs).tolist() for name in "abc" for side in ("c", "r")}
    dataset = datasets.Dataset.from_dict({
        "pair_id": [f"q{index:02d}" for index in range(num_pairs)], "prompt": ["x"] * num_pairs,
        "chosen": [f"y{index}" for index in range(num_pairs)], "rejected": [f"z{index}" for index in range(num_pairs)],
        **columns,
    })  # fmt: skip
    members = [
        {"judge": "score_margin", "options": {"chosen_column": f"{name}_c", "rejected_column": f"{name}_r"}, "budget": share}
        for name, share in (("a", 0.3), ("b", 0.4), ("c", 0.5))
    ]  # fmt: skip
    pair_ids = list(dataset["pair_id"])
    member_flags = [
        top_share_by_hand(np.array(columns[f"{name}_r"]) - np.array(columns[f"{name}_c"]), pair_ids, share)
        for name, share in (("a", 0.3), ("b", 0.4), ("c", 0.5))
    ]
    votes = {pair_id: sum(pair_id in flags for flags in member_flags) for pair_id in pair_ids}
    for rule, needed in (("any", 1), ("majority", 2), ("all", 3)):
        _, record = clean(dataset, "ensemble", seed=0, options={"members": members, "rule": rule})
        assert flagged_ids(record) == {pair_id for pair_id, count in votes.items() if count >= needed}, rule
        assert np.floor(record.table["score"]).tolist() == [votes[pair_id] for pair_id in pair_ids]


@pytest.mark.parametrize(
    "members, message",
    [
        ([{"judge": "oracle"}, {"judge": "score_margin"}], "cannot be an ensemble member"),
        ([{"judge": "score_margin"}], "at least two judges"),
        ([{"judge": "score_margin", "budget": "realised_rate"}, "small_loss"], "not available to ensemble members"),
        ([{"judge": "nope"}, "small_loss"], "unknown judge 'nope'"),
    ],
)
def test_an_ensemble_refuses_members_it_cannot_combine(members, message):
    with pytest.raises(ValueError, match=message):
        get_judge("ensemble").make_options({"members": members})


# ---------------------------------------------------------------------------------------------
# The wall between the flip record and the judges


def test_only_the_oracle_may_be_registered_to_read_the_flip_record():
    @dataclasses.dataclass(frozen=True)
    class NoOptions(JudgeOptions):
        pass

    with pytest.raises(ValueError, match="cannot read the flip record"):
        register_judge("peeker", options=NoOptions, description="", source="", reads_flip_record=True)
    assert "peeker" not in JUDGES
    assert [name for name, judge in JUDGES.items() if judge.reads_flip_record] == ["oracle"]


@pytest.mark.parametrize("judge_name", sorted(name for name in JUDGES if name != "oracle"))
def test_no_judge_but_the_oracle_sees_the_flip_record(judge_name, monkeypatch):
    """Each judge gets plain JudgeInputs (no flags in them), and its record is the same whatever flip
    record is handed to `clean`."""
    noisy, flips = inject(scored_pairs(), "symmetric", 0.25, seed=2)
    judge = JUDGES[judge_name]
    seen: list[type] = []

    def spy(inputs, options):
        seen.append(type(inputs))
        return judge.score_pairs(inputs, options)

    monkeypatch.setitem(JUDGES, judge_name, dataclasses.replace(judge, score_pairs=spy))
    records = []
    for is_flipped in (flips.table["is_flipped"].to_numpy(), ~flips.table["is_flipped"].to_numpy()):
        _, record = clean(noisy, judge_name, seed=2, budget=0.25, models=StandInModels(len(noisy)), is_flipped=is_flipped)
        records.append(record)
    assert seen and set(seen) == {JudgeInputs}
    assert not any(field.name == "is_flipped" for field in dataclasses.fields(JudgeInputs))
    pd.testing.assert_frame_equal(records[0].table, records[1].table)


def test_the_oracle_gets_the_flags_it_is_given():
    noisy, flips = inject(scored_pairs(), "symmetric", 0.25, seed=2)
    seen = []
    judge = JUDGES["oracle"]

    def spy(inputs, options):
        seen.append(inputs)
        return judge.score_pairs(inputs, options)

    JUDGES["oracle"] = dataclasses.replace(judge, score_pairs=spy)
    try:
        clean(noisy, "oracle", seed=2, is_flipped=flips.table["is_flipped"].to_numpy())
    finally:
        JUDGES["oracle"] = judge
    assert isinstance(seen[0], OracleInputs)
    assert seen[0].is_flipped.tolist() == flips.table["is_flipped"].tolist()


# ---------------------------------------------------------------------------------------------
# Treatments, budgets and the record


@pytest.mark.parametrize("budget", [0.0, 0.15, 0.5, 1.0, {"threshold": -0.5}, "estimated"])
def test_remove_keeps_exactly_the_unflagged_pairs_in_order_and_duplicates_none(budget):
    noisy, _ = inject(scored_pairs(40), "symmetric", 0.3, seed=4)
    cleaned, record = clean(noisy, "score_margin", seed=4, budget=budget)
    flagged = flagged_ids(record)
    expected = [row for row in noisy.to_list() if row["pair_id"] not in flagged]
    assert cleaned.to_list() == expected
    assert len(set(cleaned["pair_id"])) == len(cleaned) == record.num_left == 40 - len(flagged)
    assert set(record.table.loc[record.table["flagged"], "action"]) <= {"remove"}
    assert set(record.table.loc[~record.table["flagged"], "action"]) <= {"keep"}


@pytest.mark.parametrize("budget", [0.0, 0.2, 0.6, "estimated"])
def test_flip_keeps_every_pair_and_swaps_exactly_the_flagged_ones(budget):
    noisy, _ = inject(scored_pairs(40), "symmetric", 0.3, seed=4)
    cleaned, record = clean(noisy, "score_margin", seed=4, treatment="flip", budget=budget)
    flagged = flagged_ids(record)
    assert cleaned["pair_id"] == noisy["pair_id"] and record.num_left == 40
    for before, after in zip(noisy.to_list(), cleaned.to_list(), strict=True):
        swapped = {**before, "chosen": before["rejected"], "rejected": before["chosen"],
                   "score_chosen": before["score_rejected"], "score_rejected": before["score_chosen"]}  # fmt: skip
        assert after == (swapped if before["pair_id"] in flagged else before)
    # flipping the pairs a perfect score gap flags restores every label the noise swapped
    _, flips = inject(scored_pairs(40), "symmetric", 0.3, seed=4)
    _, record = clean(noisy, "score_margin", seed=4, treatment="flip", budget={"threshold": 0.0})
    assert cleaning_quality(record, flips)["cleaning_noise_left"] == 0.0


def test_budgets_parse_from_their_study_file_forms_and_refuse_others():
    assert Budget.parse("estimated") == Budget("estimated")
    assert Budget.parse(0.2) == Budget.parse({"fraction": 0.2}) == Budget("fraction", 0.2)
    assert Budget.parse({"threshold": -1}) == Budget("threshold", -1.0)
    for budget in (Budget("realised_rate"), Budget("fraction", 0.3), Budget("threshold", 2.0)):
        assert Budget.parse(budget.to_plain()) == budget
    for bad in ("most", 1.5, -0.1, {"fraction": 2}, {"share": 0.2}, True, None):
        with pytest.raises(ValueError, match="budget"):
            Budget.parse(bad)


def test_bad_input_names_the_judge_option_treatment_or_column():
    noisy, _ = inject(scored_pairs(), "symmetric", 0.2, seed=0)
    with pytest.raises(ValueError, match="unknown judge 'llm'; the registered judges are"):
        clean(noisy, "llm", seed=0)
    with pytest.raises(ValueError, match="has no option 'temperature'"):
        clean(noisy, "small_loss", seed=0, options={"temperature": 1})
    with pytest.raises(ValueError, match="treatment 'drop'"):
        clean(noisy, "score_margin", seed=0, treatment="drop")
    with pytest.raises(ValueError, match="needs the column\\(s\\) score_chosen"):
        clean(noisy.remove_columns(["score_chosen"]), "score_margin", seed=0)
    with pytest.raises(ValueError, match="needs a model"):
        clean(noisy, "reference_margin", seed=0)
    with pytest.raises(ValueError, match="realised flip rate"):
        clean(noisy, "score_margin", seed=0, budget="realised_rate")


def test_the_record_reads_back_as_written(tmp_path):
    noisy, _ = inject(scored_pairs(), "symmetric", 0.2, seed=0)
    cleaned, record = clean(noisy, "score_margin", seed=0, treatment="flip", budget=0.1)
    record.write(tmp_path)
    read = CleaningRecord.read(tmp_path)
    pd.testing.assert_frame_equal(read.table, record.table)
    assert read.summary() == record.summary()
    assert apply_record(noisy, read).to_list() == cleaned.to_list()


# ---------------------------------------------------------------------------------------------
# Detection metrics, recomputed by hand from the record


@pytest.mark.parametrize("treatment", ["remove", "flip"])
def test_precision_recall_f1_auroc_and_noise_left_match_a_by_hand_count(treatment):
    rng = np.random.default_rng(11)
    noisy, flips = inject(scored_pairs(50), "symmetric", 0.3, seed=6)
    suspicion = rng.normal(size=50) + 1.5 * flips.table["is_flipped"].to_numpy()
    suspicion[:4] = suspicion[4]  # ties count one half in the AUROC

    @dataclasses.dataclass(frozen=True)
    class Fixed(JudgeOptions):
        pass

    register_judge("fixed_scores", options=Fixed, description="", source="")(
        lambda inputs, options: JudgeScores(suspicion, 0.3)
    )
    try:
        _, record = clean(noisy, "fixed_scores", seed=0, treatment=treatment, budget=0.34)
    finally:
        del JUDGES["fixed_scores"]
    flipped = dict(zip(flips.table["pair_id"], flips.table["is_flipped"], strict=True))
    rows = list(zip(record.table["pair_id"], record.table["flagged"], record.table["score"], strict=True))
    true_positive = sum(1 for pair_id, flag, _ in rows if flag and flipped[pair_id])
    flagged_count = sum(1 for _, flag, _ in rows if flag)
    flipped_count = sum(flipped.values())
    precision, recall = true_positive / flagged_count, true_positive / flipped_count
    positives = [score for pair_id, _, score in rows if flipped[pair_id]]
    negatives = [score for pair_id, _, score in rows if not flipped[pair_id]]
    auroc = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / (len(positives) * len(negatives))
    if treatment == "remove":
        kept = [pair_id for pair_id, flag, _ in rows if not flag]
        noise_left = sum(flipped[pair_id] for pair_id in kept) / len(kept)
    else:
        kept = [pair_id for pair_id, *_ in rows]
        noise_left = sum(flipped[pair_id] != flag for pair_id, flag, _ in rows) / len(rows)
    quality = cleaning_quality(record, flips)
    assert quality["cleaning_precision"] == pytest.approx(precision)
    assert quality["cleaning_recall"] == pytest.approx(recall)
    assert quality["cleaning_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert quality["cleaning_auroc"] == pytest.approx(auroc)
    assert quality["cleaning_noise_left"] == pytest.approx(noise_left)
    assert quality["cleaning_pairs_left"] == len(kept)
    trained = training_flips(flips, record)
    assert trained.table["pair_id"].tolist() == kept
    assert trained.table["is_flipped"].mean() == pytest.approx(noise_left)


def test_undefined_detection_metrics_are_left_out():
    noisy, flips = inject(scored_pairs(), "symmetric", 0.0, seed=0)
    _, record = clean(noisy, "score_margin", seed=0, budget=0.0)
    assert set(cleaning_quality(record, flips)) == {"cleaning_estimated_rate", "cleaning_pairs_left", "cleaning_noise_left"}


# ---------------------------------------------------------------------------------------------
# The judges' own noise-rate estimate


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.45])
def test_the_anchor_estimate_recovers_the_rate_of_symmetric_flips_of_a_confident_judge(rate):
    """Margins of clean pairs N(1.5, 1) (the judge's confident tenth is right), flips independent of them."""
    rng = np.random.default_rng(0)
    clean_margins = rng.normal(1.5, 1.0, 40_000)
    margins = np.where(rng.random(40_000) < rate, -clean_margins, clean_margins)
    assert anchor_flip_rate(margins) == pytest.approx(rate, abs=0.015)


def test_the_anchor_estimate_is_the_share_of_negative_margins_among_the_largest_by_hand():
    margins = np.array([5.0, -4.0, 0.1, -0.2, 3.0, -2.5, 1.0, 0.0, 2.0, -1.5])
    # the 4 largest |margin|: 5, -4, 3, -2.5 -> 2 of 4 negative
    assert anchor_flip_rate(margins, anchor_share=0.4) == 0.5
    # the 5 largest add 2.0: 2 of 5, and a zero margin counts one half
    assert anchor_flip_rate(margins, anchor_share=0.5) == pytest.approx(0.4)
    assert anchor_flip_rate(np.array([0.0, 0.0]), anchor_share=1.0) == 0.5
    assert anchor_flip_rate(np.ones(5)) == 0.0 and anchor_flip_rate(-np.ones(5)) == 0.5
    with pytest.raises(ValueError, match="finite margins"):
        anchor_flip_rate(np.array([np.nan, 1.0]))


# ---------------------------------------------------------------------------------------------
# The command line


def test_noisypref_judges_lists_every_judge_with_its_options(capsys):
    import json

    from noisypref.cli import main

    assert main(["judges", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert set(entries) == set(JUDGES)
    assert [name for name, entry in entries.items() if entry["reads_flip_record"]] == ["oracle"]
    assert entries["reward_model"]["options"]["folds"] == 4 and entries["reward_model"]["needs_model"]
    assert not entries["score_margin"]["needs_model"]
    assert main(["judges"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}  (" in listing for name in JUDGES) and "normalise (default \"mean\")" in listing
