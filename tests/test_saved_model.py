"""A study's trained models (training.save_model) load with AutoModelForCausalLM.from_pretrained (issue 18),
and are the models the run evaluated: their held-out accuracy, computed here by hand, is result.json's."""

from __future__ import annotations

import json

import torch
from test_study import TINY_TESTBED
from transformers import AutoModelForCausalLM, AutoTokenizer

from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.study import StudyFolder, parse_study, plan_runs, run_study
from noisypref.benchmark.testbed import TestbedConfig, build_testbed

BETA = 0.1  # DPO's default beta


def response_logp(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """log p(response | prompt), summed over the response tokens, from the model's logits."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    return float(token_logps[len(prompt_ids) - 1 :].sum())


def test_a_saved_model_loads_with_from_pretrained_and_is_the_model_evaluated(tmp_path):
    study = parse_study(
        {
            "name": "saved",
            "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
            "noise": [{"model": "symmetric", "rates": [0.2]}],
            "methods": [{"name": "dpo"}],
            "training": {"steps": 4, "batch_size": 8, "max_length": 16, "max_prompt_length": 4,
                         "learning_rate": 0.01, "save_model": True},
            "evaluation": {"gold_reward": False, "noise_detection": False},
        }
    )  # fmt: skip
    cache = tmp_path / "cache"
    assert run_study(study, tmp_path / "out", progress=False, cache_dir=cache, collect=False).all_succeeded
    run_dir = StudyFolder(tmp_path / "out").run_dir(plan_runs(study)[0].run_id)
    policy = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    testbed = build_testbed(TestbedConfig(**TINY_TESTBED), cache)
    reference = AutoModelForCausalLM.from_pretrained(testbed.reference_model_dir).eval()
    trained = dict(policy.named_parameters())
    assert any(not torch.equal(trained[name], value) for name, value in reference.named_parameters())

    pairs = tokenize_pairs(testbed.heldout_pairs, tokenizer, max_length=16, max_prompt_length=4)
    wins = 0.0
    for index in range(len(pairs)):
        chosen, rejected = pairs.chosen_and_rejected(index)
        prompt = pairs.prompt_ids[index]
        gap = BETA * (
            (response_logp(policy, prompt, chosen) - response_logp(reference, prompt, chosen))
            - (response_logp(policy, prompt, rejected) - response_logp(reference, prompt, rejected))
        )
        wins += 1.0 if gap > 0 else 0.5 if gap == 0 else 0.0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["metrics"]["heldout_accuracy"] == wins / len(pairs)
