"""Cleaning real data (issue 23): the ``reference_margin`` judge on a 64-pair slice of HH-RLHF harmless-base
with SmolLM2-135M-Instruct, through a run's own preparation, against log-probs computed by hand."""

from __future__ import annotations

import pytest
import torch
from test_real_models import HH_FILE, smollm2_missing_reason

from noisypref.benchmark.config.run_config import parse_run_config
from noisypref.benchmark.run.prepare import load_data_model_and_tokens
from noisypref.benchmark.study import parse_study, plan_runs
from noisypref.noise_injection import inject

HAND_CHECKED_PAIRS = 4


@pytest.mark.slow
@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"the HH-RLHF test file is not at {HH_FILE}")
@pytest.mark.skipif(smollm2_missing_reason() is not None, reason=str(smollm2_missing_reason()))
def test_reference_margin_cleans_a_64_pair_hh_slice_with_smollm2(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = parse_study({
        "name": "hh_cleaning",
        "datasets": [{"kind": "file", "source": str(HH_FILE), "heldout_fraction": 0.1, "max_pairs": 64}],
        "noise": [{"model": "symmetric", "rates": [0.25]}],
        "cleaning": [{"judge": "reference_margin", "budget": "realised_rate"}],
        "methods": [{"name": "dpo"}],
        "models": [{"name": "smollm2-135m-instruct", "dtype": "float32"}],
        "training": {"steps": 1, "batch_size": 4, "max_length": 256, "max_prompt_length": 128},
        "evaluation": {"gold_reward": False},
    })  # fmt: skip
    (run,) = plan_runs(study)
    config = parse_run_config(run.config)
    data, flips, record, policy, tokenizer, *_ = load_data_model_and_tokens(
        config, tmp_path / "run", tmp_path / "cache", torch.device("cpu")
    )
    assert record.num_pairs == 64 and record.num_flagged == round(0.25 * 64) == flips.num_flipped
    assert (tmp_path / "run" / "cleaning.csv").is_file()
    noisy, _ = inject(data.train_pairs, "symmetric", 0.25, seed=0)

    def response_logp(prompt: str, response: str) -> tuple[float, int, int]:
        """(log π_ref(response | prompt) per response token, prompt tokens, all tokens); the project's layout:
        [bos] prompt response eos, the response's tokens being its own and the eos."""
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prompt_ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            log_probs = policy(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        token_logps = log_probs.gather(1, ids[0, 1:, None])[:, 0]
        response_logps = token_logps[len(prompt_ids) - 1 :]
        return float(response_logps.mean()), len(prompt_ids), len(prompt_ids) + len(response_ids)

    checked = 0
    for row, score in zip(noisy.to_list(), record.table["score"], strict=True):
        chosen, prompt_length, chosen_length = response_logp(row["prompt"], row["chosen"])
        rejected, _, rejected_length = response_logp(row["prompt"], row["rejected"])
        if prompt_length > 128 or max(chosen_length, rejected_length) > 256:
            continue  # cut by max_prompt_length / max_length: not what this hand computation reads
        # the default per-token margin: suspicion = PerpCorrect's PPLDiff = mean logp(rejected) − mean logp(chosen)
        assert score == pytest.approx(rejected - chosen, rel=1e-3, abs=1e-3)
        checked += 1
        if checked == HAND_CHECKED_PAIRS:
            break
    assert checked == HAND_CHECKED_PAIRS
