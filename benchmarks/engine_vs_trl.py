"""Training throughput of noisypref's engine against TRL's DPOTrainer, side by side in one process.

Both train plain DPO (β 0.1, AdamW lr 1e-3, warm-up 10 % + cosine, clipping 1.0, float32) on the
default testbed's reference policy and training pairs, 64 pairs per step, on one torch thread.
The sequences are token for token the same: TRL gets the prompt as "<bos> topic_k" and each response
with a leading space, so it tokenises [bos] + prompt + response + [eos] like the engine.

Differences that are the point of the comparison: the engine reads the reference log-probs from its
cache (computed once per model and dataset, shared by every run; the one-off cost is printed too),
TRL's default runs the reference model at every step; the engine applies the LM head to response
positions only and pads each batch to its own longest row.

Reported: steady-state pairs/s (steps after the first ``--warmup-steps``, timed by callbacks) and
end-to-end pairs/s of the whole ``train`` call. Needs the optional ``trl`` package (``pip install trl``).

    PYTHONPATH=. python benchmarks/engine_vs_trl.py --steps 60
    PYTHONPATH=. python benchmarks/engine_vs_trl.py --smoke       # seconds: a small testbed, 3 steps of 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch

from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.engine.train import train
from noisypref.benchmark.testbed import TestbedConfig, build_testbed
from noisypref.methods import build

BETA = 0.1
# --smoke: a testbed that builds in seconds (the default's words and topics, little training)
SMOKE_TESTBED = {"sft_steps": 10, "num_train_pairs": 64, "num_heldout_pairs": 16, "num_eval_prompts": 8}


def engine_throughput(testbed, args, cache_dir: Path) -> dict[str, float]:
    policy = testbed.load_reference_model()
    tokens = tokenize_pairs(testbed.train_pairs, testbed.tokenizer, max_length=512, max_prompt_length=256)
    started = time.perf_counter()
    reference = reference_logps(
        policy,
        tokens,
        model_identity="benchmark",
        cache_dir=None,
        pad_token_id=testbed.tokenizer.pad_token_id,
    )
    reference_seconds = time.perf_counter() - started
    step_times: dict[int, float] = {}
    config = TrainingSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=1e-3, log_every=1)
    started = time.perf_counter()
    train(
        policy,
        build("dpo", beta=BETA),
        tokens,
        config,
        reference=reference,
        pad_token_id=testbed.tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        callbacks=[lambda record: step_times.setdefault(int(record["step"]), clocks())],
    )
    total_seconds = time.perf_counter() - started
    return summarise(step_times, total_seconds, args) | {"reference_logps_seconds": reference_seconds}


def trl_throughput(testbed, args, *, precompute_reference: bool) -> dict[str, float]:
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: dict[int, float] = {}

        def on_step_end(self, train_args, state, control, **kwargs):
            self.times[state.global_step] = clocks()

    pairs = testbed.train_pairs.map(
        lambda row: {
            "prompt": f"{testbed.tokenizer.bos_token} {row['prompt']}",
            "chosen": f" {row['chosen']}",
            "rejected": f" {row['rejected']}",
        }
    ).select_columns(["prompt", "chosen", "rejected"])
    step_times = StepTimes()
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-3,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=BETA,
            max_length=512,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
            precompute_ref_log_probs=precompute_reference,
            # TRL 1.16 turns gradient checkpointing on by default; the engine runs without it.
            gradient_checkpointing=False,
        )
        trainer = DPOTrainer(
            model=testbed.load_reference_model(),
            ref_model=testbed.load_reference_model(),
            args=config,
            train_dataset=pairs,
            processing_class=testbed.tokenizer,
            callbacks=[step_times],
        )
        trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the table
        first = trainer.train_dataset[0]
        expected = [
            testbed.tokenizer.bos_token_id,
            *testbed.tokenizer(testbed.train_pairs[0]["prompt"])["input_ids"],
        ]
        if first["prompt_ids"] != expected:
            raise RuntimeError(f"TRL tokenised the prompt as {first['prompt_ids']}, expected {expected}")
        started = time.perf_counter()
        trainer.train()
        total_seconds = time.perf_counter() - started
    return summarise(step_times.times, total_seconds, args)


def clocks() -> tuple[float, float]:
    """Wall time and this process's CPU time: on a loaded machine the CPU time is the steadier measure."""
    return time.perf_counter(), time.process_time()


def summarise(step_times: dict[int, tuple[float, float]], total_seconds: float, args) -> dict[str, float]:
    first, last = args.warmup_steps, args.steps
    pairs = (last - first) * args.batch_size
    return {
        "steady_pairs_per_second": pairs / (step_times[last][0] - step_times[first][0]),
        "steady_pairs_per_cpu_second": pairs / (step_times[last][1] - step_times[first][1]),
        "end_to_end_pairs_per_second": args.steps * args.batch_size / total_seconds,
        "train_seconds": total_seconds,
    }


def compare(testbed, args) -> None:
    engine = engine_throughput(testbed, args, Path(args.cache_dir))
    trl = trl_throughput(testbed, args, precompute_reference=False)
    trl_precomputed = trl_throughput(testbed, args, precompute_reference=True)
    rows = [
        ("steady-state pairs/s (wall)", "steady", engine, trl, "steady_pairs_per_second"),
        ("steady-state pairs/CPU-s", "steady_cpu", engine, trl, "steady_pairs_per_cpu_second"),
        ("end-to-end pairs/s (wall)", "end_to_end", engine, trl, "end_to_end_pairs_per_second"),
        ("vs TRL precomputed ref, pairs/CPU-s", "steady_cpu_trl_precomputed_reference", engine, trl_precomputed,
         "steady_pairs_per_cpu_second"),
    ]  # fmt: skip
    figures: dict[str, float] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "engine_reference_logps_seconds_once": engine["reference_logps_seconds"],
    }
    print(f"{'':38s}{'noisypref':>10s}{'TRL':>10s}{'ratio':>8s}")
    for label, key, ours, theirs, measure in rows:
        figures[f"{key}_engine"] = ours[measure]
        figures[f"{key}_trl"] = theirs[measure]
        figures[f"{key}_ratio"] = ours[measure] / theirs[measure]
        print(
            f"{label:38s}{ours[measure]:10.0f}{theirs[measure]:10.0f}{ours[measure] / theirs[measure]:8.2f}"
        )
    print(
        f"(engine's one-off reference log-probs of {len(testbed.train_pairs)} pairs: "
        f"{engine['reference_logps_seconds']:.2f} s; load average {figures['load_average_1min']:.1f} "
        f"on {os.cpu_count()} cores)"
    )
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--warmup-steps", type=int, default=10, help="steps left out of the steady-state timing"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", default="runs/.cache", help="where the testbed is built (once)")
    parser.add_argument(
        "--smoke", action="store_true", help="seconds, for CI: a small testbed in a scratch folder, 3 steps of 8"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    with ExitStack() as scratch:
        testbed_config = TestbedConfig()
        if args.smoke:
            args.steps, args.warmup_steps, args.batch_size = 3, 1, 8
            args.cache_dir = scratch.enter_context(tempfile.TemporaryDirectory())
            testbed_config = TestbedConfig.from_dict(SMOKE_TESTBED)
        compare(build_testbed(testbed_config, args.cache_dir), args)


if __name__ == "__main__":
    main()
