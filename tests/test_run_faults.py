"""Faults during a run: NaN or infinite losses and gradients, running out of GPU memory, a crash while
writing a checkpoint, a full or read-only disk. Each ends the run (or the study) with a message saying
what happened and what to do, and leaves nothing half-written that a resumed study would trust.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
import yaml
from cli_helpers import cli
from transformers import AutoModelForCausalLM

import noisypref.benchmark.run.execute as run_module
import noisypref.benchmark.run.prepare as prepare_module
from noisypref.benchmark.config.run_config import default_run_config, parse_run_config
from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.engine.train import NonFiniteLossError, train
from noisypref.benchmark.run.execute import out_of_memory_reason
from noisypref.benchmark.storage import write_json_atomic
from noisypref.benchmark.study import StudyFolder, parse_study, run_study
from noisypref.benchmark.testbed import build_word_tokenizer
from noisypref.cli import main
from noisypref.methods import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------------------------------------
# NaN and infinity in the training loop


class FaultAtStep:
    """Wraps a method: at training call `step`, `fault` turns the step's inputs or output non-finite."""

    def __init__(self, method, step: int, fault: str) -> None:
        self.method, self.step, self.fault, self.calls = method, step, fault, 0
        self.state_before_fault = None

    def __getattr__(self, name):
        return getattr(self.method, name)

    def __call__(self, logps):
        self.calls += self.method.training
        at_fault = self.method.training and self.calls == self.step
        if at_fault:
            self.state_before_fault = copy.deepcopy(self.method.state_dict())
        if at_fault and self.fault == "nan input":
            logps = dataclasses.replace(logps, policy_chosen=logps.policy_chosen * float("nan"))
        output = self.method(logps)
        if at_fault and self.fault == "inf loss":
            output = dataclasses.replace(output, objective=output.objective * float("inf"))
        if at_fault and self.fault == "nan gradient":
            # sqrt at 0: value 0, derivative infinite; times 0 the loss is unchanged and its gradient NaN.
            at_zero = logps.policy_chosen - logps.policy_chosen.detach()
            output = dataclasses.replace(output, objective=output.objective + 0.0 * at_zero.sqrt().sum())
        return output


@pytest.fixture(scope="module")
def tiny_training(tiny_llama_config):
    """A tiny random policy (``tiny_policy()``, seed 0), its token ids and reference log-probs."""
    tokenizer = build_word_tokenizer(num_topics=2, num_words=8)

    def tiny_policy():
        torch.manual_seed(0)
        config = tiny_llama_config(len(tokenizer), max_position_embeddings=64)
        return AutoModelForCausalLM.from_config(config).eval()

    generator = torch.Generator().manual_seed(0)
    words = [f"w{index}" for index in range(8)]

    def response() -> str:
        return " ".join(
            words[int(i)]
            for i in torch.randint(
                8, (int(torch.randint(1, 5, (1,), generator=generator)),), generator=generator
            )
        )

    pairs = datasets.Dataset.from_dict(
        {
            "pair_id": [f"pair-{index}" for index in range(32)],
            "prompt": [f"topic_{index % 2}" for index in range(32)],
            "chosen": [response() + " w0" for _ in range(32)],
            "rejected": [response() + " w1" for _ in range(32)],
        }
    )
    tokens = tokenize_pairs(pairs, tokenizer, max_length=32, max_prompt_length=8)
    reference = reference_logps(tiny_policy(), tokens, model_identity="tiny", cache_dir=None, pad_token_id=0)
    return tiny_policy, tokens, reference


def train_with(tiny_training, method, tmp_path: Path, **settings):
    tiny_policy, tokens, reference = tiny_training
    config = TrainingSettings(
        **{"steps": 8, "batch_size": 8, "learning_rate": 1e-2, "log_every": 1, **settings}
    )
    policy = tiny_policy()
    tmp_path.mkdir(parents=True, exist_ok=True)
    metrics_path = tmp_path / "metrics.jsonl"
    result = train(
        policy, method, tokens, config, reference=reference, pad_token_id=0, seed=0,
        metrics_path=metrics_path, device="cpu",
    )  # fmt: skip
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    return policy, result, records


@pytest.mark.parametrize("fault, quantity", [("inf loss", "loss"), ("nan gradient", "gradient")])
def test_a_non_finite_loss_or_gradient_stops_training_at_its_step(tiny_training, tmp_path, fault, quantity):
    method = FaultAtStep(build("ipo", beta=0.5), step=4, fault=fault)
    with pytest.raises(NonFiniteLossError) as raised:
        train_with(tiny_training, method, tmp_path)
    error = raised.value
    assert (error.step, error.method, error.quantity) == (4, "ipo", quantity)
    assert error.last_finite_metrics["step"] == 3 and all(
        value == value for value in error.last_finite_metrics.values()
    )
    assert str(error).startswith(f"non-finite {quantity} at step 4 of method 'ipo'; last finite metrics: {{")
    assert [
        record["step"] for record in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    ] == [1, 2, 3]


def test_nan_policy_skip_drops_the_step_and_counts_it(tiny_training, tmp_path):
    # β-DPO keeps running statistics of its batches: one NaN batch must not poison the later steps.
    method = FaultAtStep(build("beta_dpo", beta=0.5), step=3, fault="nan input")
    policy, result, records = train_with(tiny_training, method, tmp_path, nan_policy="skip")
    assert result.skipped_steps == 1
    assert [record["step"] for record in records] == [1, 2, 4, 5, 6, 7, 8]
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in records)
    assert all(torch.isfinite(parameter).all() for parameter in policy.parameters())

    method = FaultAtStep(build("dpo", beta=0.5), step=2, fault="nan gradient")
    policy, result, records = train_with(tiny_training, method, tmp_path / "gradient", nan_policy="skip")
    assert result.skipped_steps == 1 and [record["step"] for record in records] == [1, 3, 4, 5, 6, 7, 8]
    assert all(torch.isfinite(parameter).all() for parameter in policy.parameters())


def test_a_skipped_step_leaves_the_methods_state_as_it_was(tiny_training, tmp_path):
    # The last step's batch is finite, so β-DPO updates its running statistics from it; its loss is
    # then made infinite: the skipped step must not keep that update.
    method = FaultAtStep(build("beta_dpo", beta=0.5), step=8, fault="inf loss")
    _, result, _ = train_with(tiny_training, method, tmp_path, nan_policy="skip")
    assert result.skipped_steps == 1
    before, after = method.state_before_fault, method.method.state_dict()
    assert (after["running_mean"], after["running_std"]) == (before["running_mean"], before["running_std"])
    assert torch.equal(after["generator"], before["generator"])


def test_a_nan_batch_in_a_batch_level_method_is_reported_as_a_non_finite_loss(tiny_training, tmp_path):
    method = FaultAtStep(build("beta_dpo", beta=0.5), step=5, fault="nan input")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 5 of method 'beta_dpo'"):
        train_with(tiny_training, method, tmp_path)


# ---------------------------------------------------------------------------------------------
# A run that fails: the study records the step, the method and the last metrics; out of memory

TINY_TESTBED = {
    "sft_steps": 20, "num_train_pairs": 64, "num_heldout_pairs": 32, "num_eval_prompts": 16,
    "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
}  # fmt: skip


def tiny_study(**training):
    return parse_study(
        {
            "name": "faults",
            "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
            "noise": [{"model": "symmetric", "rates": [0.2]}],
            "methods": [{"name": "dpo"}],
            "training": {
                "steps": 6,
                "batch_size": 16,
                "log_every": 1,
                "max_length": 64,
                "max_prompt_length": 32,
                **training,
            },  # fmt: skip
            "evaluation": {"num_eval_prompts": 16, "max_new_tokens": 8},
        }
    )


@pytest.fixture(scope="module")
def testbed_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("testbed_cache")


def only_run(out: Path) -> Path:
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


def test_a_run_whose_loss_becomes_nan_is_failed_with_step_method_and_last_metrics(
    testbed_cache, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        prepare_module,
        "build",
        lambda name, **options: FaultAtStep(build(name, **options), step=3, fault="nan input"),
    )
    summary = run_study(tiny_study(), tmp_path / "out", cache_dir=testbed_cache, progress=False)
    assert (summary.succeeded, summary.failed) == (0, 1)
    run_dir = only_run(tmp_path / "out")
    failure = json.loads((run_dir / "failure.json").read_text())
    assert failure["reason"].startswith("NonFiniteLossError: non-finite loss at step 3 of method 'dpo'; ")
    last_metrics = json.loads(failure["reason"].split("last finite metrics: ")[1])
    assert last_metrics["step"] == 2 and last_metrics["loss"] > 0
    assert not (run_dir / "result.json").exists()
    assert main(["status", str(tmp_path / "out")]) == 0
    assert "non-finite loss at step 3 of method 'dpo'" in capsys.readouterr().out

    summary = run_study(
        tiny_study(nan_policy="skip"), tmp_path / "skip", cache_dir=testbed_cache, progress=False
    )
    assert summary.all_succeeded
    result = json.loads((only_run(tmp_path / "skip") / "result.json").read_text())
    assert result["training"]["skipped_steps"] == 1


def test_out_of_gpu_memory_fails_the_run_with_settings_that_need_less_memory(
    testbed_cache, tmp_path, monkeypatch
):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore details")

    monkeypatch.setattr(run_module, "train", out_of_memory)
    summary = run_study(tiny_study(), tmp_path / "out", cache_dir=testbed_cache, progress=False)
    assert summary.failed == 1
    reason = json.loads((only_run(tmp_path / "out") / "failure.json").read_text())["reason"]
    assert reason == (
        "out of GPU memory with 16 pairs per micro-batch of up to 64 tokens (CUDA out of memory. Tried to "
        "allocate 2.00 GiB.). Settings that need less memory: training.gradient_accumulation: 2 (8 pairs per "
        "micro-batch instead of 16; batch_size 16 and the updates stay the same); "
        "model.gradient_checkpointing: true (activations recomputed in the backward pass)"
    )


def test_out_of_memory_suggestions_follow_the_settings():
    def reason(training: dict, model: dict) -> str:
        defaults = default_run_config()
        config = parse_run_config(
            default_run_config(
                training={**defaults["training"], **training}, model={**defaults["model"], **model}
            )
        )
        return out_of_memory_reason(config, torch.cuda.OutOfMemoryError("CUDA out of memory."))

    # 48 pairs in 2 micro-batches of 24: 4 micro-batches of 12 is the first that halves the micro-batch.
    text = reason({"batch_size": 48, "gradient_accumulation": 2}, {"dtype": "float32"})
    assert "training.gradient_accumulation: 4 (12 pairs per micro-batch instead of 24;" in text
    assert "model.dtype: bfloat16" in text
    assert "training.max_length: 256, max_prompt_length: 128 (now 512, 256; longer pairs are cut)" in text
    text = reason(
        {"batch_size": 1, "max_length": 64, "max_prompt_length": 32}, {"gradient_checkpointing": True}
    )
    assert "gradient_accumulation" not in text and "gradient_checkpointing" not in text
    assert text.endswith("Settings that need less memory: a smaller model, or a GPU with more memory")


# ---------------------------------------------------------------------------------------------
# Checkpoints and a full disk


def failing_after_half(path_matches, calls: list | None = None):
    """A Path.write_text that writes half the text, then fails as a full disk does, for matching paths."""
    write_text = Path.write_text

    def write(self, text, *args, **kwargs):
        if not path_matches(self):
            return write_text(self, text, *args, **kwargs)
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    return write


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    policy, method = torch.nn.Linear(3, 2), build("dpo")
    optimizer = torch.optim.AdamW(policy.parameters())
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, 1, policy, optimizer, method)
    saved_weight = policy.weight.detach().clone()
    torch.nn.init.zeros_(policy.weight)
    save = torch.save

    def save_half_then_fail(value, target):
        save(value, target)
        with open(target, "r+b") as file:
            file.truncate(os.path.getsize(target) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, 2, policy, optimizer, method)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [CHECKPOINT_FILE]  # no temporary file left beside it
    assert load_checkpoint(path, policy, optimizer, method) == 1
    assert torch.equal(policy.weight, saved_weight)


STUDY = {
    "name": "disk",
    "noise": [{"model": "symmetric", "rates": [0, 0.2]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
}
RUNS = 4


def fake_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """A fake run writing its files as the engine does: result.json last, atomically."""
    run_dir = Path(run_dir)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    result = {
        "run_id": run_dir.name,
        "status": "succeeded",
        "metrics": {"heldout_accuracy": 0.75 - run_config["noise"]["rate"]},
        "config": run_config,
        "realised_flip_rate": run_config["noise"]["rate"],
        "wall_time_s": 0.0,
    }
    write_json_atomic(run_dir / "result.json", result)
    return result


def finished(out: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*/result.json")}


def test_a_full_disk_stops_the_study_and_leaves_no_half_written_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:fake_execute")
    study_file, out = tmp_path / "study.yaml", tmp_path / "out"
    study_file.write_text(yaml.safe_dump(STUDY))
    results_written = []

    def third_result(path: Path) -> bool:
        if not path.name.startswith(".result.json.tmp"):
            return False
        results_written.append(path)
        return len(results_written) == 3

    monkeypatch.setattr(Path, "write_text", failing_after_half(third_result))
    status, _, err = cli(capsys, "run", study_file, "--out", out, "--workers", "1")
    full_run = results_written[2].parent
    assert status == 2
    assert f"run {full_run.name} stopped: cannot write {results_written[2]}: No space left on device." in err
    assert "run the same command again to resume" in err
    assert not (full_run / "result.json").exists() and not (full_run / "failure.json").exists()
    assert not list(out.rglob("*.tmp*"))  # the half-written temporary file is gone
    kept = finished(out)
    assert len(kept) == 2
    assert main(["status", str(out)]) == 0
    assert "2 done, 0 running, 0 failed, 2 pending" in capsys.readouterr().out

    monkeypatch.undo()  # space freed
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:fake_execute")
    status, out_text, err = cli(capsys, "run", study_file, "--out", out, "--workers", "1")
    assert status == 0, err
    assert "2 succeeded, 0 failed, 2 skipped as already done" in out_text
    assert {run_id: finished(out)[run_id] for run_id in kept} == kept and len(finished(out)) == RUNS


def test_a_full_disk_when_writing_results_parquet_keeps_the_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:fake_execute")
    study_file, out = tmp_path / "study.yaml", tmp_path / "out"
    study_file.write_text(yaml.safe_dump(STUDY))

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a table")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    status, _, err = cli(capsys, "run", study_file, "--out", out, "--workers", "1")
    assert status == 2
    assert f"cannot write {out / 'results.parquet'}" in err and f"noisypref collect {out}" in err
    assert len(finished(out)) == RUNS and not (out / "results.parquet").exists()
    assert not list(out.glob(".results.*"))


def test_an_output_folder_that_cannot_be_written_fails_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:fake_execute")
    study_file, out = tmp_path / "study.yaml", tmp_path / "read-only" / "out"
    study_file.write_text(yaml.safe_dump(STUDY))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out))

    monkeypatch.setattr("noisypref.cli.tempfile.TemporaryFile", read_only)
    status, _, err = cli(capsys, "run", study_file, "--out", out, "--workers", "1")
    assert status == 2
    assert f"the output folder (--out) {out} cannot be written: Read-only file system" in err
    assert not (out / "runs").exists()
    monkeypatch.undo()

    # The study API checks too: a folder where a file is.
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"a_file/out cannot be written \(.*: Not a directory\)"):
        run_study(parse_study(STUDY), tmp_path / "a_file" / "out", executor=fake_execute, progress=False)
    assert StudyFolder(tmp_path / "a_file" / "out").is_done("x") is False
