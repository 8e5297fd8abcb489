"""Training throughput of noisypref's engine against TRL's DPOTrainer on long-tailed synthetic pairs.

Same model, same data, same hardware, one process, side by side, plain DPO (β 0.1):

- noisypref: ``train`` with packed, padding-free batches and cached reference log-probs (computed
  once before training; the one-off cost is the "setup" column);
- TRL 1.16 ``DPOTrainer``, reference model live (a second copy of the model runs every step);
- TRL ``DPOTrainer`` with ``precompute_ref_log_probs=True``.

Every system sees the same pairs at every step: TRL reads the pairs in the engine's order through a
sequential sampler. Both run AdamW (lr 1e-5, warm-up 10 % + cosine, clipping 1.0; each its own
default implementation: ``torch.optim.AdamW`` in the engine, TRL's ``adamw_torch_fused``), no
gradient checkpointing unless ``--gradient-checkpointing`` (TRL's default turns it on; it is
switched off here), SDPA attention; float32 on the CPU, float32 weights with bf16 autocast on CUDA
(the engine's recipe, and TRL's ``bf16=True``). A system that runs out of GPU memory is reported as such.

Data: pairs of random words, one token per word, lengths drawn per prompt and per response from
clipped lognormals (printed with the results). On CUDA (random-initialised Qwen2-shaped 0.5B and
1.5B, published shapes): prompt median 128, σ 1.0, clipped 16-1,024; responses median 300, σ 0.8,
clipped 50-1,500 tokens. On the CPU (the testbed model, default ``TestbedConfig`` shape, random
initialisation: throughput does not depend on the weights) the same distributions scaled down 8x.

Reported per system, on the steps after ``--warmup-steps``, medians over steps: pairs/s; non-padding
tokens/s; model FLOP/s = (6 · P · T [policy forward + backward] + 2 · P · T [live reference forward,
TRL only]) / step time, P = all parameters (tied embeddings once), T = non-padding tokens of the
step, attention-score FLOPs left out; on CUDA its share of the card's bf16 matmul peak (measured
here with a large ``torch.matmul`` loop); peak memory (CUDA: ``torch.cuda.max_memory_allocated``
per system; CPU: peak RSS of the whole process so far, which only grows); the padding share of the
batches (positions that hold no token); and the γ overhead: the engine's median step of ``gamma_dpo``
against ``dpo`` on the same batches, and the margin solve alone.

Needs the optional ``trl`` package (``pip install trl``). The last line printed is JSON. The CUDA
path was written on a machine without a GPU: its first run there is also its first test.

    PYTHONPATH=. python benchmarks/throughput.py                      # CPU: testbed model, 1.5-3 min
    PYTHONPATH=. python benchmarks/throughput.py --device cuda        # Qwen2 0.5B and 1.5B
    PYTHONPATH=. python benchmarks/throughput.py --smoke              # seconds: the testbed model, 3 steps
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np
import torch
from engine_vs_trl import BETA, clocks
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine.batches import pair_batch
from noisypref.benchmark.engine.reference import ReferenceLogps, reference_logps
from noisypref.benchmark.engine.tokenization import TokenizedPairs, tokenize_pairs
from noisypref.benchmark.engine.train import PairOrder, train
from noisypref.benchmark.testbed import TestbedConfig, build_word_tokenizer
from noisypref.benchmark.testbed.language import topic_names, word_names
from noisypref.benchmark.testbed.policy import init_tiny_model
from noisypref.methods import build

LEARNING_RATE = 1e-5
SEED = 0
TRL_LIVE = "TRL DPOTrainer, live ref"
TRL_PRECOMPUTED = "TRL DPOTrainer, precomputed ref"


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts round(exp(N(log median, σ²))) clipped to [low, high]."""

    median: float
    sigma: float
    low: int
    high: int

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        lengths = np.rint(rng.lognormal(math.log(self.median), self.sigma, count))
        return np.clip(lengths, self.low, self.high).astype(int)

    def scaled(self, factor: float) -> LengthDistribution:
        return LengthDistribution(
            self.median * factor, self.sigma, max(1, round(self.low * factor)), round(self.high * factor)
        )


GPU_PROMPT_LENGTHS = LengthDistribution(median=128, sigma=1.0, low=16, high=1024)
GPU_RESPONSE_LENGTHS = LengthDistribution(median=300, sigma=0.8, low=50, high=1500)
CPU_LENGTH_SCALE = 1 / 8


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmark model and its word tokenizer (one token per word)."""

    name: str
    tokenizer: Callable[[], PreTrainedTokenizerBase]
    model: Callable[[PreTrainedTokenizerBase], PreTrainedModel]
    words: Callable[[], list[str]]


def testbed_spec() -> ModelSpec:
    config = TestbedConfig()
    return ModelSpec(
        name="testbed",
        tokenizer=lambda: build_word_tokenizer(config.num_topics, config.num_words),
        model=lambda tokenizer: init_tiny_model(config, tokenizer),
        words=lambda: word_names(config.num_words),
    )


def qwen2_spec(name: str, **shape: int) -> ModelSpec:
    """A random-initialised Qwen2 of the published shape (rope θ 1e6, tied embeddings, 151,936 tokens)."""
    vocabulary = 151_936
    # build_word_tokenizer adds 4 special tokens and one per topic: the vocabulary comes out exact.
    num_topics, num_words = 1, vocabulary - 5

    def model(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            max_position_embeddings=32_768,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **shape,
        )
        torch.manual_seed(SEED)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")

    return ModelSpec(
        name=name,
        tokenizer=lambda: build_word_tokenizer(num_topics, num_words),
        model=model,
        words=lambda: word_names(num_words),
    )


MODELS = {
    "testbed": testbed_spec,
    "qwen2-0.5b": lambda: qwen2_spec(
        "qwen2-0.5b", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2,
    ),
    "qwen2-1.5b": lambda: qwen2_spec(
        "qwen2-1.5b", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2,
    ),
}  # fmt: skip


@dataclass
class StepLog:
    """Clock readings ``(wall, cpu)`` at the end of every optimizer step, by step number (1-based)."""

    clocks: dict[int, tuple[float, float]] = field(default_factory=dict)

    def record(self, step: int, device: torch.device) -> None:
        synchronize(device)
        self.clocks[step] = clocks()

    def durations(self, first: int, last: int) -> list[tuple[int, float, float]]:
        """``(step, wall seconds, cpu seconds)`` of the steps first..last (each needs the one before)."""
        return [
            (
                step,
                self.clocks[step][0] - self.clocks[step - 1][0],
                self.clocks[step][1] - self.clocks[step - 1][1],
            )
            for step in range(first, last + 1)
        ]


class TimedMarginEstimator:
    """Delegates to a ``MarginEstimator`` and records the wall time of each margin solve."""

    def __init__(self, estimator, device: torch.device) -> None:
        self.estimator = estimator
        self.device = device
        self.seconds: list[float] = []

    def __call__(self, reward_gap: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        started = time.perf_counter()
        gamma = self.estimator(reward_gap)
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - started)
        return gamma

    def __getattr__(self, name: str):
        return getattr(self.estimator, name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_pairs(
    words: list[str], count: int, prompt_lengths: LengthDistribution, response_lengths: LengthDistribution
) -> datasets.Dataset:
    """``count`` pairs of random words: prompt "topic_0 w.. w..", two responses of independent lengths."""
    rng = np.random.default_rng(SEED)
    topic = topic_names(1)[0]

    def text(length: int) -> str:
        return " ".join(words[index] for index in rng.integers(len(words), size=length))

    prompts = [f"{topic} {text(length - 1)}".strip() for length in prompt_lengths.sample(rng, count)]
    chosen = [text(length) for length in response_lengths.sample(rng, count)]
    rejected = [text(length) for length in response_lengths.sample(rng, count)]
    return datasets.Dataset.from_dict(
        {"pair_id": [f"pair-{index:05d}" for index in range(count)], "prompt": prompts, "chosen": chosen,
         "rejected": rejected}
    )  # fmt: skip


@dataclass
class Workload:
    """The data of one model's benchmark and the engine's batch order, which TRL is made to follow."""

    pairs: datasets.Dataset
    tokens: TokenizedPairs
    order: list[list[int]]  # pair indices of steps 1..steps
    step_tokens: dict[int, int]  # non-padding tokens of each step (prompt counted with both responses)
    engine_padding_share: float  # padding positions of the engine's packed batches, all steps
    max_length: int
    max_prompt_length: int


def workload(spec: ModelSpec, tokenizer, args, prompt_lengths, response_lengths) -> Workload:
    pairs = synthetic_pairs(spec.words(), args.steps * args.pairs, prompt_lengths, response_lengths)
    max_prompt_length = prompt_lengths.high + 1  # + bos
    max_length = max_prompt_length + response_lengths.high + 1  # + eos: nothing is truncated
    tokens = tokenize_pairs(pairs, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    pair_order = PairOrder(len(tokens), args.pairs, SEED)
    order = [pair_order.step_pairs(step).tolist() for step in range(1, args.steps + 1)]
    step_tokens, padding, positions = {}, 0, 0
    for step, indices in enumerate(order, start=1):
        step_tokens[step] = sum(
            2 * len(tokens.prompt_ids[index])
            + len(tokens.response_a_ids[index])
            + len(tokens.response_b_ids[index])
            for index in indices
        )
        batch = pair_batch(tokens, indices, tokenizer.pad_token_id, pack=True)
        padding += int((batch.sequence_index < 0).sum())
        positions += batch.sequence_index.numel()
    return Workload(pairs, tokens, order, step_tokens, padding / positions, max_length, max_prompt_length)


@dataclass
class SystemResult:
    system: str
    pairs_per_second: float
    pairs_per_cpu_second: float
    tokens_per_second: float
    model_flops_per_second: float
    peak_memory_mib: float
    padding_share: float
    setup_seconds: float
    median_step_seconds: float
    margin_solve_seconds: float | None = None


def summarise(
    name: str,
    log: StepLog,
    work: Workload,
    args,
    parameters: int,
    *,
    flops_per_token_parameter: int,
    peak_memory_mib: float,
    padding_share: float,
    setup_seconds: float,
) -> SystemResult:
    steps = log.durations(args.warmup_steps + 1, args.steps)
    wall = statistics.median(seconds for _, seconds, _ in steps)
    cpu = statistics.median(cpu_seconds for _, _, cpu_seconds in steps)
    tokens_per_second = statistics.median(work.step_tokens[step] / seconds for step, seconds, _ in steps)
    return SystemResult(
        system=name,
        pairs_per_second=args.pairs / wall,
        pairs_per_cpu_second=args.pairs / cpu,
        tokens_per_second=tokens_per_second,
        model_flops_per_second=flops_per_token_parameter * parameters * tokens_per_second,
        peak_memory_mib=peak_memory_mib,
        padding_share=padding_share,
        setup_seconds=setup_seconds,
        median_step_seconds=wall,
    )


def parameter_count(model: PreTrainedModel) -> int:
    return sum(parameter.numel() for parameter in model.parameters())  # shared (tied) tensors once


@contextlib.contextmanager
def memory_scope(device: torch.device) -> Iterator[Callable[[], float]]:
    """Frees what the previous system left and yields a function giving the peak memory in MiB."""
    gc.collect()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # TRL's trainers each set accelerate's global state (mixed precision)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device) / 2**20
    else:
        yield lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_model(spec: ModelSpec, tokenizer, device: torch.device) -> PreTrainedModel:
    with torch.device(device):  # initialise on the device: a 1.5B random init on the CPU is slow
        return spec.model(tokenizer)


def engine_reference(spec, tokenizer, work: Workload, device) -> tuple[ReferenceLogps, float]:
    """The engine's cached reference log-probs (of the initial policy) and the seconds they took."""
    model = build_model(spec, tokenizer, device).eval()
    synchronize(device)
    started = time.perf_counter()
    reference = reference_logps(
        model, work.tokens, model_identity=spec.name, cache_dir=None, pad_token_id=tokenizer.pad_token_id
    )
    synchronize(device)
    return reference, time.perf_counter() - started


def engine_run(
    spec, tokenizer, work: Workload, reference: ReferenceLogps, reference_seconds: float, args, device,
    method_name: str,
) -> SystemResult:  # fmt: skip
    with memory_scope(device) as peak_memory:
        policy = build_model(spec, tokenizer, device)
        parameters = parameter_count(policy)
        method = build(method_name, beta=BETA)
        solver = None
        if method.margin_estimator is not None:
            solver = method.margin_estimator = TimedMarginEstimator(method.margin_estimator, device)
        log = StepLog()
        config = TrainingSettings(
            steps=args.steps,
            batch_size=args.pairs,
            learning_rate=LEARNING_RATE,
            max_length=work.max_length,
            max_prompt_length=work.max_prompt_length,
            log_every=1,
        )
        synchronize(device)
        log.clocks[0] = clocks()
        train(
            policy,
            method,
            work.tokens,
            config,
            reference=reference,
            pad_token_id=tokenizer.pad_token_id,
            seed=SEED,
            device=device.type,
            callbacks=[lambda record: log.record(int(record["step"]), device)],
            gradient_checkpointing=args.gradient_checkpointing,
        )
        result = summarise(
            f"noisypref {method_name}",
            log,
            work,
            args,
            parameters,
            flops_per_token_parameter=6,
            peak_memory_mib=peak_memory(),
            padding_share=work.engine_padding_share,
            setup_seconds=reference_seconds,
        )
        if solver is not None:
            result.margin_solve_seconds = statistics.median(solver.seconds[args.warmup_steps :])
        del policy
    return result


def trl_run(spec, tokenizer, work: Workload, args, device, *, precompute_reference: bool) -> SystemResult:
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    log = StepLog()

    class StepClock(TrainerCallback):
        def on_step_end(self, train_args, state, control, **kwargs):
            log.record(state.global_step, device)

    class CountingCollator(DataCollatorForPreference):
        """TRL's collator, counting the padding positions of the batches it builds."""

        padding = positions = 0

        def torch_call(self, examples):
            batch = super().torch_call(examples)
            CountingCollator.padding += int((batch["attention_mask"] == 0).sum())
            CountingCollator.positions += batch["attention_mask"].numel()
            return batch

    # TRL gets "<bos> prompt" and " response" so that it tokenises [bos] + prompt + response + [eos]
    # like the engine; the sequential sampler then walks the pairs in the engine's order.
    ordered = work.pairs.select([index for step in work.order for index in step]).map(
        lambda row: {
            "prompt": f"{tokenizer.bos_token} {row['prompt']}",
            "chosen": f" {row['chosen']}",
            "rejected": f" {row['rejected']}",
        }
    )
    with memory_scope(device) as peak_memory, tempfile.TemporaryDirectory() as output_dir:
        started = time.perf_counter()
        policy = build_model(spec, tokenizer, device)
        parameters = parameter_count(policy)
        config = DPOConfig(
            output_dir=output_dir,
            max_steps=args.steps,
            per_device_train_batch_size=args.pairs,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=BETA,
            loss_type=["sigmoid"],
            max_length=work.max_length,
            gradient_checkpointing=args.gradient_checkpointing,
            train_sampling_strategy="sequential",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=device.type == "cpu",
            bf16=device.type == "cuda",
            seed=SEED,
            dataloader_num_workers=0,
            disable_tqdm=True,
            precompute_ref_log_probs=precompute_reference,
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=None if precompute_reference else build_model(spec, tokenizer, device),
            args=config,
            data_collator=CountingCollator(pad_token_id=tokenizer.pad_token_id, max_length=work.max_length),
            train_dataset=ordered.select_columns(["prompt", "chosen", "rejected"]),
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the table
        check_same_tokens(trainer.train_dataset, work, tokenizer)
        CountingCollator.padding = CountingCollator.positions = 0  # the precompute pass collated too
        synchronize(device)
        setup_seconds = time.perf_counter() - started
        log.clocks[0] = clocks()
        trainer.train()
        result = summarise(
            TRL_PRECOMPUTED if precompute_reference else TRL_LIVE,
            log,
            work,
            args,
            parameters,
            flops_per_token_parameter=6 if precompute_reference else 8,
            peak_memory_mib=peak_memory(),
            padding_share=CountingCollator.padding / CountingCollator.positions,
            setup_seconds=setup_seconds,
        )
        del trainer, policy
    return result


def check_same_tokens(trl_dataset: datasets.Dataset, work: Workload, tokenizer) -> None:
    """TRL's first sequence must be the engine's, token for token (else the comparison is void)."""
    index = work.order[0][0]
    chosen, rejected = work.tokens.chosen_and_rejected(index)
    first = trl_dataset[0]
    expected = (work.tokens.prompt_ids[index], chosen, rejected)
    got = (first["prompt_ids"], first["chosen_ids"], first["rejected_ids"])
    if got != expected:
        raise RuntimeError(f"TRL tokenised pair {index} as {got}, the engine as {expected}")


def bf16_matmul_peak(device: torch.device, size: int = 8192, repeats: int = 50) -> float:
    """FLOP/s of a loop of [size × size] @ [size × size] bf16 products on ``device``."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            name = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name
            )
    return f"{name or platform.machine()}, {os.cpu_count()} cores"


def margins_implementation() -> str:
    from noisypref.methods import margins

    path = getattr(margins, "__file__", None)
    return path if path else "stand-in (noisypref/methods/margins/ absent)"


def benchmark_model(spec: ModelSpec, args, device, prompt_lengths, response_lengths) -> dict:
    tokenizer = spec.tokenizer()
    work = workload(spec, tokenizer, args, prompt_lengths, response_lengths)
    reference, reference_seconds = engine_reference(spec, tokenizer, work, device)
    runs = {
        "noisypref dpo": lambda: engine_run(
            spec, tokenizer, work, reference, reference_seconds, args, device, "dpo"
        ),
        TRL_LIVE: lambda: trl_run(spec, tokenizer, work, args, device, precompute_reference=False),
        TRL_PRECOMPUTED: lambda: trl_run(spec, tokenizer, work, args, device, precompute_reference=True),
        "noisypref gamma_dpo": lambda: engine_run(
            spec, tokenizer, work, reference, reference_seconds, args, device, "gamma_dpo"
        ),
    }
    results: list[SystemResult | None] = []
    out_of_memory = []
    for name, run in runs.items():
        try:
            results.append(run())
        except torch.cuda.OutOfMemoryError as error:
            logging.warning("%s: out of memory: %s", name, str(error).splitlines()[0])
            results.append(None)
            out_of_memory.append(name)
    dpo, gamma = results[0], results[3]
    with torch.device("meta"):
        parameters = parameter_count(spec.model(tokenizer))
    return {
        "model": spec.name,
        "parameters": parameters,
        "mean_tokens_per_pair": statistics.mean(work.step_tokens.values()) / args.pairs,
        "systems": [asdict(result) for result in results[:3] if result is not None],
        "out_of_memory": out_of_memory,
        "gamma": None
        if dpo is None or gamma is None
        else {
            "dpo_step_seconds": dpo.median_step_seconds,
            "gamma_dpo_step_seconds": gamma.median_step_seconds,
            "step_overhead_share": gamma.median_step_seconds / dpo.median_step_seconds - 1,
            "margin_solve_seconds": gamma.margin_solve_seconds,
            "margin_solve_share_of_dpo_step": gamma.margin_solve_seconds / dpo.median_step_seconds,
        },
    }


def print_model_table(report: dict, device: torch.device, peak_flops: float | None) -> None:
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    memory = "peak MiB" if device.type == "cuda" else "peak RSS MiB*"
    print(
        f"\n{report['model']} ({report['parameters'] / 1e6:.3g} M parameters): "
        f"{report['mean_tokens_per_pair']:.0f} tokens per pair on average (prompt counted twice)"
    )
    header = f"{'system':34s}{'pairs/s':>9s}{'pairs/CPU-s':>12s}{'tokens/s':>10s}{unit:>9s}"
    header += f"{'% peak':>8s}" if peak_flops else ""
    print(header + f"{memory:>14s}{'padding':>9s}{'setup s':>9s}")
    for name in report["out_of_memory"]:
        print(f"{name:34s}out of memory (try --gradient-checkpointing or fewer --pairs)")
    for result in report["systems"]:
        line = (
            f"{result['system']:34s}{result['pairs_per_second']:9.1f}{result['pairs_per_cpu_second']:12.1f}"
            f"{result['tokens_per_second']:10.0f}{result['model_flops_per_second'] / scale:9.2f}"
        )
        if peak_flops:
            line += f"{100 * result['model_flops_per_second'] / peak_flops:7.1f}%"
        print(line + f"{result['peak_memory_mib']:14.0f}{100 * result['padding_share']:8.1f}%"
                     f"{result['setup_seconds']:9.1f}")  # fmt: skip
    gamma = report["gamma"]
    if gamma:
        print(
            f"γ overhead: gamma_dpo step {1e3 * gamma['gamma_dpo_step_seconds']:.1f} ms vs dpo "
            f"{1e3 * gamma['dpo_step_seconds']:.1f} ms ({100 * gamma['step_overhead_share']:+.1f} %, "
            f"noise included); margin solve alone {1e3 * gamma['margin_solve_seconds']:.2f} ms = "
            f"{100 * gamma['margin_solve_share_of_dpo_step']:.2f} % of a dpo step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), help="default: testbed on cpu, Qwen2 on cuda"
    )
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per system")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 32 cpu, 8 cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="for every system (off by default, as in DESIGN §7)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds, for CI: the testbed model, 3 steps of 4 pairs, none left out"
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup_steps, args.pairs = 3, 0, 4
        args.models = args.models or ["testbed"]
    if args.pairs is None:
        args.pairs = 32 if args.device == "cpu" else 8
    if not 0 <= args.warmup_steps < args.steps - 1:
        parser.error("--warmup-steps must leave at least two timed steps")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = args.models or (["testbed"] if device.type == "cpu" else ["qwen2-0.5b", "qwen2-1.5b"])
    prompt_lengths, response_lengths = GPU_PROMPT_LENGTHS, GPU_RESPONSE_LENGTHS
    if device.type == "cpu":
        prompt_lengths = prompt_lengths.scaled(CPU_LENGTH_SCALE)
        response_lengths = response_lengths.scaled(CPU_LENGTH_SCALE)

    peak_flops = bf16_matmul_peak(device) if device.type == "cuda" else None
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    figures = {
        "device": device.type,
        "hardware": hardware_name(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_before": os.getloadavg()[0],
        "bf16_matmul_peak_flops": peak_flops,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "pairs_per_step": args.pairs,
        "gradient_checkpointing": args.gradient_checkpointing,
        "prompt_lengths": asdict(prompt_lengths),
        "response_lengths": asdict(response_lengths),
        "flops_formula": "6·P·T policy forward+backward (+ 2·P·T live reference forward), "
        "P all parameters, T non-padding tokens; attention scores excluded",
        "margins_implementation": margins_implementation(),
        "ddp_scaling": f"not measured ({visible} CUDA device(s) visible; this script runs one process)",
        "models": [
            benchmark_model(MODELS[name](), args, device, prompt_lengths, response_lengths) for name in models
        ],
        "load_average_1min_after": os.getloadavg()[0],
    }

    print(f"\nThroughput, {figures['hardware']} ({args.device}, {figures['torch_threads']} torch thread(s)); "
          f"load average {figures['load_average_1min_before']:.1f} before, {figures['load_average_1min_after']:.1f} "
          f"after")  # fmt: skip
    if peak_flops:
        print(f"measured bf16 matmul peak: {peak_flops / 1e12:.0f} TFLOP/s (8192² torch.matmul loop)")
    for name, lengths in (("prompt", prompt_lengths), ("responses", response_lengths)):
        print(f"{name}: lognormal tokens, median {lengths.median:g}, σ {lengths.sigma:g}, "
              f"clipped {lengths.low}-{lengths.high}")  # fmt: skip
    print(
        f"{args.pairs} pairs per step (the same pairs for every system), {args.steps} steps, medians over steps "
        f"{args.warmup_steps + 1}-{args.steps}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
    )
    for report in figures["models"]:
        print_model_table(report, device, peak_flops)
    print(f"\nmodel FLOP/s: {figures['flops_formula']}")
    if device.type == "cpu":
        print("* peak RSS of the whole process up to the end of that system's run (it only grows)")
    print(f"margins: {figures['margins_implementation']}")
    print(f"DDP scaling: {figures['ddp_scaling']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
