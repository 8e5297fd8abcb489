"""One run across two processes on the CPU (gloo): data parallelism and FSDP sharding give the training
of one process, sharded checkpoints resume exactly, and `noisypref run` under torchrun spreads each
run over the launch's processes with rank 0 alone writing files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine import distributed
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.engine.train import train
from noisypref.benchmark.testbed import build_word_tokenizer
from noisypref.methods import build

sys.path.insert(0, str(Path(__file__).parent))
from test_study import TINY_TESTBED as STUDY_TINY_TESTBED  # noqa: E402
from test_train import build_tiny_llama as tiny_llama  # noqa: E402
from test_train import random_pairs  # noqa: E402

SETTINGS = dict(steps=6, batch_size=8, gradient_accumulation=2, learning_rate=5e-2, log_every=1)


class Interrupted(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_launch(rank: int, world_size: int, port: int) -> None:
    """What torchrun gives each process, then the engine's own join."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )  # fmt: skip
    torch.set_num_threads(1)
    distributed.init_from_environment()


def train_once(tmp: Path, name: str, sharding: str, **options) -> tuple[dict, list[dict]]:
    """γ-DPO (a batch-level method: its candidate set spans the processes) on a tiny Llama."""
    from noisypref.benchmark.engine.reference import reference_logps

    tokenizer = build_word_tokenizer(num_topics=3, num_words=10)
    tokens = tokenize_pairs(random_pairs(48), tokenizer, max_length=64, max_prompt_length=32)
    model = tiny_llama(tokenizer)
    reference = reference_logps(model, tokens, model_identity="tiny", cache_dir=None, pad_token_id=0)
    settings = {**SETTINGS, **options.pop("config", {}), "sharding": sharding}
    metrics_path = tmp / f"{name}-rank{distributed.rank()}.jsonl"  # a resumed run appends to its file
    result = train(
        model,
        build("gamma_dpo", beta=0.5, tau=1.0, seed=3),
        tokens,
        TrainingSettings(**settings),
        reference=reference,
        pad_token_id=0,
        seed=1,
        metrics_path=metrics_path,
        device="cpu",
        **options,
    )
    weights = result.full_state_dict if result.full_state_dict is not None else model.state_dict()
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    return {name: value.detach().clone() for name, value in weights.items()}, records


def rank_main(rank: int, world_size: int, port: int, out_dir: str, sharding: str) -> None:
    join_launch(rank, world_size, port)
    out = Path(out_dir)
    results = {}
    results["straight"] = train_once(out, "straight", sharding)
    if sharding == "fsdp":

        def stop_at_step_5(record: dict) -> None:
            if record["step"] == 5:
                raise Interrupted

        checkpoints = out / "checkpoints"
        options = dict(config=dict(checkpoint_every=3), checkpoint_dir=checkpoints)
        try:
            train_once(out, "resumed", sharding, callbacks=[stop_at_step_5], **options)
        except Interrupted:
            pass
        results["resumed"] = train_once(out, "resumed", sharding, **options)
    torch.save(results, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def without_timing(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "pairs_per_second"} for record in records]


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_processes_train_like_one(tmp_path, sharding, one_torch_thread) -> None:
    single_weights, single_records = train_once(tmp_path, "single", "none")
    assert single_records[0]["loss"] - single_records[-1]["loss"] > 0.05  # it learns: the comparison means something

    mp.spawn(rank_main, args=(2, free_port(), str(tmp_path), sharding), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    weights, records = ranks[0]["straight"]
    assert records and not ranks[1]["straight"][1]  # rank 0 writes the metrics, rank 1 nothing
    if sharding == "fsdp":
        assert ranks[1]["straight"][0] == {}  # the gathered weights land on rank 0 only
    assert weights.keys() == single_weights.keys()
    # Float sums in another order, then Adam: an element whose gradient is ~0 moves by up to the learning
    # rate (5e-2) in either direction, so single elements may differ by ~1e-4. Training on the wrong
    # pairs or averaging wrongly moves every element by ~1e-2 (relative difference ~0.1 or more).
    difference = sum(float((weights[name] - value).norm() ** 2) for name, value in single_weights.items())
    size = sum(float(value.norm() ** 2) for value in single_weights.values())
    assert (difference / size) ** 0.5 < 1e-4
    for name, value in single_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-3, msg=name)
    assert [record["step"] for record in records] == list(range(1, 7))
    for two, one in zip(records, single_records, strict=True):
        for key in ("loss", "reward_gap_mean", "target_margin_mean", "gamma_mean", "grad_norm", "learning_rate"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (two["step"], key)

    if sharding == "fsdp":  # interrupted after step 5, resumed from the step-3 checkpoint of full state dicts
        resumed_weights, resumed_records = ranks[0]["resumed"]
        for name, value in weights.items():
            torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=1e-6, msg=name)
        assert [record["step"] for record in resumed_records] == list(range(1, 7))
        for resumed, straight in zip(without_timing(resumed_records), without_timing(records), strict=True):
            assert resumed == pytest.approx(straight, rel=1e-6, abs=1e-7), resumed["step"]


def reference_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from noisypref.benchmark.engine.reference import reference_logps

    join_launch(rank, world_size, port)
    tokenizer = build_word_tokenizer(num_topics=3, num_words=10)
    tokens = tokenize_pairs(random_pairs(21), tokenizer, max_length=64, max_prompt_length=32)
    options = dict(model_identity="tiny", cache_dir=Path(out_dir) / "cache", pad_token_id=0, batch_size=4)
    computed = reference_logps(tiny_llama(tokenizer), tokens, **options)  # each rank its share
    loaded = reference_logps(tiny_llama(tokenizer), tokens, **options)  # the file rank 0 wrote
    # LD-DPO's shared-prefix sums too (a cache file of their own), each rank its share
    shared_options = {**options, "cache_dir": Path(out_dir) / "cache-shared", "shared_prefix": True}
    shared = reference_logps(tiny_llama(tokenizer), tokens, **shared_options)
    torch.save({"computed": computed, "loaded": loaded, "shared": shared}, Path(out_dir) / f"reference{rank}.pt")
    torch.distributed.destroy_process_group()


def test_reference_log_probs_are_shared_out_and_cached_once(tmp_path, one_torch_thread) -> None:
    from noisypref.benchmark.engine.reference import reference_logps

    mp.spawn(reference_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    tokenizer = build_word_tokenizer(num_topics=3, num_words=10)
    tokens = tokenize_pairs(random_pairs(21), tokenizer, max_length=64, max_prompt_length=32)
    expected = reference_logps(tiny_llama(tokenizer), tokens, model_identity="tiny", cache_dir=None, pad_token_id=0)
    assert len(list((tmp_path / "cache" / "reference_logps").glob("*.pt"))) == 1
    for rank in range(2):
        result = torch.load(tmp_path / f"reference{rank}.pt", weights_only=False)
        for name in ("computed", "loaded"):
            torch.testing.assert_close(result[name].logp_a, expected.logp_a, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(result[name].logp_b, expected.logp_b, atol=1e-5, rtol=1e-5)
        expected_shared = reference_logps(
            tiny_llama(tokenizer), tokens, model_identity="tiny", cache_dir=None, pad_token_id=0, shared_prefix=True
        )
        for name in ("logp_a", "logp_b", "shared_a", "shared_b"):
            torch.testing.assert_close(
                getattr(result["shared"], name), getattr(expected_shared, name), atol=1e-5, rtol=1e-5
            )
    assert len(list((tmp_path / "cache-shared" / "reference_logps").glob("*.pt"))) == 1


def agreement_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    join_launch(rank, world_size, port)

    def load() -> int:
        if rank == 1:
            raise FileNotFoundError("no such file: data.jsonl (on rank 1 only)")
        return 7

    try:
        outcome = repr(distributed.agreed(load, "preparing the run"))
    except Exception as error:  # noqa: BLE001
        outcome = f"{type(error).__name__}: {error}"
    Path(out_dir, f"agreement{rank}.txt").write_text(outcome)
    torch.distributed.destroy_process_group()


def test_a_failure_on_one_process_fails_the_others_instead_of_leaving_them_waiting(tmp_path) -> None:
    mp.spawn(agreement_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "agreement1.txt").read_text() == "FileNotFoundError: no such file: data.jsonl (on rank 1 only)"
    assert (tmp_path / "agreement0.txt").read_text() == (
        "RuntimeError: another process of the launch failed preparing the run (its log says why); this one stops too"
    )


def test_an_unknown_sharding_mode_is_refused_naming_the_modes() -> None:
    with pytest.raises(ValueError, match=r"training\.sharding = 'zero3'.*'none', 'fsdp'"):
        TrainingSettings(sharding="zero3")


TINY_TESTBED = {**STUDY_TINY_TESTBED, "num_layers": 2}  # two layer units to shard


FULL_MODEL = {"name": "testbed"}  # full fine-tuning, cached reference log-probs
LORA_MODEL = {  # LoRA adapters; the reference is the policy with its adapters off
    "name": "testbed", "reference": "live",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
}  # fmt: skip


def write_study(path: Path, sharding: str, model: dict = FULL_MODEL) -> Path:
    study = {
        "name": "tiny_launch",
        "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": [{"name": "dpo"}, {"name": "gamma_dpo", "hyperparameters": {"tau": 1.0}}],
        "models": [model],
        "training": {
            "steps": 4, "batch_size": 8, "learning_rate": 0.05, "max_length": 16, "max_prompt_length": 4,
            "log_every": 1, "sharding": sharding,
        },
        "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    return path


def noisypref_command(*arguments: str, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "noisypref", *arguments]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*launcher, "-m", "noisypref", *arguments]


def run_command(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", [FULL_MODEL, LORA_MODEL], ids=["full", "lora-live-reference"])
def test_noisypref_run_under_torchrun_spreads_each_run_over_the_processes(tmp_path, model) -> None:
    study = write_study(tmp_path / "study.yaml", "fsdp", model)
    # Separate caches: the launch builds its testbed on rank 0 and its reference log-probs on both ranks.
    single = run_command(
        noisypref_command("run", str(study), "--out", "one", "--workers", "1", "--cache-dir", "cache1"), tmp_path
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launched = run_command(
        noisypref_command("run", str(study), "--out", "two", "--no-report", "--cache-dir", "cache2", processes=2),
        tmp_path,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stderr.count("sharded 2 layer units and the root across 2 processes") == 4  # 2 runs x 2 ranks
    assert "training unsharded" in single.stderr  # fsdp in one process: nothing to shard

    one = pd.read_parquet(tmp_path / "one" / "results.parquet").set_index("run_id").sort_index()
    two = pd.read_parquet(tmp_path / "two" / "results.parquet").set_index("run_id").sort_index()
    assert list(two.index) == list(one.index) and set(two["status"]) == {"succeeded"}
    for column in ("final_loss", "heldout_accuracy", "noise_detection_auroc", "train_accuracy", "gold_win_rate"):
        assert two[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=1e-4, abs=1e-6), column
    for run_id in two.index:
        run_dir = tmp_path / "two" / "runs" / run_id
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]  # written once, by rank 0
        result = json.loads((run_dir / "result.json").read_text())
        assert result["training"]["processes"] == 2 and result["training"]["sharding"] == "fsdp"


def test_options_that_choose_processes_are_refused_under_a_launch(tmp_path) -> None:
    study = write_study(tmp_path / "study.yaml", "none")
    refused = run_command(noisypref_command("run", str(study), "--workers", "2", processes=2), tmp_path)
    assert refused.returncode != 0
    assert "--workers: this command was started by a launcher as one of 2 processes" in refused.stderr


def test_an_accelerate_fsdp_launch_shards_and_a_deepspeed_launch_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.sharding_mode("none") == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert distributed.sharding_mode("none") == "none" and distributed.sharding_mode("fsdp") == "fsdp"
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match=r"does not run DeepSpeed.*configs/accelerate/fsdp\.yaml"):
        distributed.init_from_environment()


def failing_check_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from noisypref.benchmark.config import run_config
    from noisypref.benchmark.run import prepare as run_module
    from noisypref.benchmark.study import load_study, plan_runs

    join_launch(rank, world_size, port)
    config = run_config.parse_run_config(plan_runs(load_study(Path(out_dir) / "study.yaml"))[0].config)

    def check_runnable(benchmarks) -> None:  # what it raises without an API key (rank 0 alone checks)
        raise RuntimeError("evaluation.benchmarks.alpaca_eval.judge needs an API key")

    run_module.check_runnable = check_runnable
    try:
        run_module.prepare_run(config, Path(out_dir) / f"run{rank}", Path(out_dir) / "cache", torch.device("cpu"))
        outcome = "prepared"
    except Exception as error:  # noqa: BLE001
        outcome = f"{type(error).__name__}: {error}"
    Path(out_dir, f"outcome{rank}.txt").write_text(outcome)
    torch.distributed.destroy_process_group()


def test_a_run_that_fails_on_rank_0_before_loading_fails_on_every_process(tmp_path) -> None:
    """A benchmark check that fails on rank 0 fails the run on the other rank too, at once."""
    write_study(tmp_path / "study.yaml", "fsdp")
    for rank in range(2):
        (tmp_path / f"run{rank}").mkdir()
    mp.spawn(failing_check_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "outcome0.txt").read_text() == "RuntimeError: evaluation.benchmarks.alpaca_eval.judge needs an API key"
    assert (tmp_path / "outcome1.txt").read_text() == (
        "RuntimeError: rank 0 failed in a step the other processes wait for (its log says why)"
    )
    assert not list((tmp_path / "cache").glob("reference-*"))  # rank 1 built nothing in rank 0's place
