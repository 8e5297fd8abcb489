"""The training engine: a plain loop that trains any ``noisypref.methods`` method on any causal LM.

Per optimizer step: take the step's pairs, split them into micro-batches (gradient accumulation) and
data-parallel shards, run chosen and rejected through the policy in one forward pass, hand the
per-pair log-probs (with the cached reference log-probs) to the method, back-propagate its
objective, clip, step AdamW at the scheduled learning rate. That is all; extension points are
arguments (the method object, callbacks), not subclasses.

- Batches: ``batch_size`` pairs per optimizer step in total (across micro-batches and processes).
  The pair order is a stream of per-epoch permutations drawn from ``seed``; step ``s`` takes the
  ``s``-th slice, so the order is a function of (seed, step) and a resumed run sees the same pairs.
  Batch-level methods (β-DPO, Dr.DPO, the γ candidate set) see one micro-batch at a time.
- Learning rate (``learning_rate_at``): linear warm-up over ``ceil(warmup_ratio · steps)`` steps to
  the peak, then a cosine decay towards zero over the remaining steps.
- Numerics: float32 on a CPU (deterministic for a seed and thread count), bf16 autocast on CUDA.
- Several processes (``torchrun`` or ``accelerate launch``; see ``noisypref.benchmark.engine.distributed``):
  each step's pairs are split across them; ``sharding: none`` averages gradients with
  ``DistributedDataParallel``, ``sharding: fsdp`` shards parameters, gradients and optimizer state
  (FSDP2). A single process otherwise. The γ margin estimator all-gathers its gaps itself.
- Metrics: every ``log_every`` steps (and the last), one JSON line per step in ``metrics_path``.
- Non-finite objective or gradient: under ``nan_policy="fail"`` the step raises ``NonFiniteLossError``
  naming the step, the method, which of the two, and the last finite metrics; under ``"skip"`` the
  step's update is dropped, the method's state (batch statistics, margin queue) restored, and the
  step counted in ``TrainingResult.skipped_steps``.
- Checkpoints (``checkpoint_every``): model, optimizer, the method's state (margin queue, β-DPO
  statistics) and the CPU and CUDA random generators (dropout), written atomically to
  ``checkpoint_dir/checkpoint.pt``; ``train`` resumes from it (the format, and what resuming drops:
  ``noisypref.benchmark.engine.checkpoint``).
- A run whose every step was skipped under ``nan_policy="skip"`` raises ``NothingTrainedError``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine import checkpoint, distributed
from noisypref.benchmark.engine.logps import SequenceLogps, forward_pairs, per_token_terms
from noisypref.benchmark.engine.models import default_device
from noisypref.benchmark.engine.reference import ReferenceLogps
from noisypref.benchmark.engine.tokenization import TokenizedPairs
from noisypref.benchmark.progress import phase
from noisypref.methods import MethodOutput, PreferenceMethod

logger = logging.getLogger(__name__)

StepCallback = Callable[[dict[str, float]], None]
# AdamW's fused CPU kernel: the same update as the per-parameter loop up to float round-off, about
# 5x cheaper on the testbed's 20 small tensors (1.8 -> 0.34 ms a step). CUDA keeps torch's default.
FUSED_ADAMW_ON_CPU = True


@dataclass
class TrainingResult:
    steps: int
    skipped_steps: int
    final_metrics: dict[str, float]
    wall_time_s: float
    pairs_per_second: float
    processes: int = 1  # of the launch, each with its share of every step's pairs
    sharding: str = "none"  # as trained (fsdp asked for in one process trains unsharded)
    # Sharded training: the trained policy's full weights, on rank 0's CPU ({} on the other ranks).
    full_state_dict: dict[str, torch.Tensor] | None = None


class NothingTrainedError(RuntimeError):
    """Every step of a run under ``nan_policy="skip"`` had a non-finite objective or gradient and was
    skipped: the policy is the reference model, and no metric of it says anything about the method."""

    def __init__(self, steps: int, method: str, start_step: int) -> None:
        since = f" since the checkpoint of step {start_step}" if start_step else ""
        super().__init__(
            f"every one of the {steps} training steps{since} of method {method!r} had a non-finite loss or "
            "gradient and was skipped (training.nan_policy = skip): nothing was trained"
        )


class NonFiniteLossError(RuntimeError):
    """The objective or its gradient became NaN or infinite; the message names the step, the method,
    which of the two, and the last finite metrics."""

    def __init__(
        self, step: int, method: str, last_finite_metrics: dict[str, float] | None, quantity: str = "loss"
    ) -> None:
        self.step = step
        self.method = method
        self.last_finite_metrics = last_finite_metrics
        self.quantity = quantity  # "loss" or "gradient"
        super().__init__(
            f"non-finite {quantity} at step {step} of method {method!r}; "
            f"last finite metrics: {json.dumps(last_finite_metrics)}"
        )


def learning_rate_at(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based).

    Steps 1..W (W = warmup_steps) ramp linearly, ``peak · s / (W + 1)``; from step W + 1 on the rate
    follows a cosine from the peak towards 0: ``peak · ½(1 + cos(π (s − W − 1) / (S − W)))``.
    """
    if step <= warmup_steps:
        return peak * step / (warmup_steps + 1)
    progress = (step - warmup_steps - 1) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class PairOrder:
    """Which pairs each optimizer step trains on: consecutive slices of per-epoch permutations."""

    def __init__(self, num_pairs: int, batch_size: int, seed: int) -> None:
        self.num_pairs = num_pairs
        self.batch_size = batch_size
        self.seed = seed
        self._permutations: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, epoch])
            self._permutations[epoch] = torch.from_numpy(rng.permutation(self.num_pairs))
        return self._permutations[epoch]

    def step_pairs(self, step: int) -> torch.Tensor:
        """Pair indices of optimizer step ``step`` (1-based)."""
        positions = torch.arange((step - 1) * self.batch_size, step * self.batch_size)
        epochs = positions // self.num_pairs
        pieces = [
            self.permutation(int(epoch))[positions[epochs == epoch] % self.num_pairs]
            for epoch in torch.unique(epochs)
        ]
        return torch.cat(pieces)


def train(
    policy: PreTrainedModel,
    method: PreferenceMethod,
    pairs: TokenizedPairs,
    config: TrainingSettings,
    *,
    reference: ReferenceLogps | None,
    pad_token_id: int,
    seed: int,
    metrics_path: Path | None = None,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[StepCallback] = (),
    device: str | None = None,
    gradient_checkpointing: bool = False,
) -> TrainingResult:
    """Train ``policy`` in place with ``method`` on ``pairs``; see the module docstring.

    ``reference`` holds the reference log-probs (``None`` for reference-free methods). Each
    callback receives the metrics record of every logged step. Returns the last logged metrics,
    the number of skipped steps and the throughput.
    """
    if method.requires_reference and reference is None:
        raise ValueError(f"method {method.name!r} needs reference log-probs; got reference=None")
    if config.checkpoint_every and checkpoint_dir is None:
        raise ValueError("training.checkpoint_every is set but no checkpoint_dir was given")
    distributed.init_from_environment()
    processes, process_index = distributed.world_size(), distributed.rank()
    run_device = _training_device(device)
    per_process = config.batch_size // config.gradient_accumulation
    if per_process % processes:
        raise ValueError(
            f"training.batch_size / gradient_accumulation = {per_process} pairs per micro-batch is not "
            f"divisible by the {processes} data-parallel processes"
        )
    if config.batch_size > len(pairs):  # a step would hold pairs several times over, and its memory grows with it
        raise ValueError(
            f"training.batch_size = {config.batch_size} is more than the {len(pairs)} training pairs: every "
            f"optimiser step takes batch_size distinct pairs; give a batch_size of at most {len(pairs)}"
        )
    sharding = distributed.sharding_mode(config.sharding)
    if sharding == "fsdp" and processes == 1:
        logger.warning("training.sharding = fsdp in a single process: nothing to shard, training unsharded")
        sharding = "none"
    torch.manual_seed(seed)
    if gradient_checkpointing:  # the model section's setting: activations recomputed in the backward pass
        policy.gradient_checkpointing_enable()
    policy.to(run_device)
    policy.train()
    method.train()
    logps_model: torch.nn.Module = SequenceLogps(policy)
    if sharding == "fsdp":
        distributed.shard_model(logps_model, policy, run_device)
    elif processes > 1:
        device_ids = [run_device.index] if run_device.type == "cuda" else None
        logps_model = torch.nn.parallel.DistributedDataParallel(logps_model, device_ids=device_ids)
    step_context = _StepContext(logps_model, run_device, processes, process_index)
    optimizer = torch.optim.AdamW(
        logps_model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=True if FUSED_ADAMW_ON_CPU and run_device.type == "cpu" and sharding == "none" else None,
    )
    order = PairOrder(len(pairs), config.batch_size, seed)
    # the step to go on from, and the metrics of the last step logged before it (None: a fresh start)
    start_step, last_record = checkpoint.resume(
        checkpoint_dir, metrics_path, logps_model, optimizer, method, sharding
    )

    skipped_steps = 0
    window_start, window_pairs = time.perf_counter(), 0
    started = time.perf_counter()
    with phase(
        f"training {method.name}", config.steps, "step", initial=start_step, items_per_unit=config.batch_size
    ) as progress:
        for step in range(start_step + 1, config.steps + 1):
            learning_rate = learning_rate_at(step, config.learning_rate, config.warmup_steps, config.steps)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate

            step_pairs = order.step_pairs(step)
            # A skipped step must leave no trace, in the method's batch statistics or margin queue either.
            method_state = copy.deepcopy(method.state_dict()) if config.nan_policy == "skip" else None
            outputs = accumulate_gradients(
                step_context, method, pairs, step_pairs, reference, pad_token_id, config
            )
            grad_norm = _clip_gradients(logps_model, config.max_grad_norm) if outputs is not None else None
            if outputs is None or not torch.isfinite(grad_norm):
                quantity = "loss" if outputs is None else "gradient"
                if config.nan_policy == "fail":
                    raise NonFiniteLossError(step, method.name, last_record, quantity)
                logger.warning("step %d: non-finite %s, update skipped (nan_policy=skip)", step, quantity)
                skipped_steps += 1
                optimizer.zero_grad(set_to_none=True)
                method.load_state_dict(method_state)
                progress.advance(1, skipped=skipped_steps)
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window_pairs += config.batch_size

            if step % config.log_every == 0 or step == config.steps:
                elapsed = time.perf_counter() - window_start
                last_record = step_metrics(step, outputs, learning_rate, grad_norm)
                last_record["pairs_per_second"] = window_pairs / max(elapsed, 1e-9)
                window_start, window_pairs = time.perf_counter(), 0
                if metrics_path is not None and process_index == 0:
                    with open(metrics_path, "a", encoding="utf-8") as metrics_file:
                        metrics_file.write(json.dumps(last_record) + "\n")
                for callback in callbacks:
                    callback(last_record)
            progress.advance(1, **({"loss": last_record["loss"]} if last_record else {}))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint.save(checkpoint_dir, step, logps_model, optimizer, method, sharding)

    if skipped_steps and skipped_steps == config.steps - start_step:
        raise NothingTrainedError(skipped_steps, method.name, start_step)
    if sharding == "fsdp":  # every process takes part; rank 0 gets the weights for evaluation
        full_state = distributed.full_state_dict(logps_model)
    policy.eval()
    method.eval()
    wall_time = time.perf_counter() - started
    trained_steps = config.steps - start_step - skipped_steps
    return TrainingResult(
        steps=config.steps,
        skipped_steps=skipped_steps,
        final_metrics=last_record or {},
        wall_time_s=wall_time,
        pairs_per_second=trained_steps * config.batch_size / max(wall_time, 1e-9),
        processes=processes,
        sharding=sharding,
        full_state_dict=checkpoint.policy_state(full_state) if sharding == "fsdp" else None,
    )


def accumulate_gradients(
    step_context: _StepContext,
    method: PreferenceMethod,
    pairs: TokenizedPairs,
    step_pairs: torch.Tensor,
    reference: ReferenceLogps | None,
    pad_token_id: int,
    config: TrainingSettings,
) -> list[MethodOutput] | None:
    """Forward and backward over the micro-batches of one step (``step_pairs``: all of its pairs,
    across processes); the gradient is the mean over its pairs.

    Returns the method's outputs, or ``None`` when an objective was not finite (on any process). The
    objectives are checked once, after the last backward pass: a check per micro-batch would make the
    host wait for each forward pass before queuing its backward pass. (So a step that is dropped for a
    non-finite objective has run all its micro-batches; with dropout, their random draws are spent.)
    Under data parallelism gradients are synchronised on the last micro-batch only; sharded
    gradients are reduced after every micro-batch (their unsharded sum would cost the memory
    sharding saves).
    """
    micro_batches = step_pairs.chunk(config.gradient_accumulation)
    outputs, finite = [], []
    for micro_index, micro_pairs in enumerate(micro_batches):
        is_last = micro_index == len(micro_batches) - 1
        # Micro-batch first, then this process's share: a batch-level method (the γ candidate set,
        # gathered across processes) sees the same micro-batch whatever the number of processes.
        process_pairs = micro_pairs.chunk(step_context.processes)[step_context.process_index]
        with step_context.gradient_sync(is_last):
            logps = forward_pairs(
                step_context.model,
                pairs,
                process_pairs,
                reference,
                pad_token_id,
                step_context.device,
                pack=step_context.pack,
                **per_token_terms(method),
            )
            output = method(logps)
            finite.append(torch.isfinite(output.objective.detach()))
            (output.objective / config.gradient_accumulation).backward()
        outputs.append(output)
    if not distributed.all_true(bool(torch.stack(finite).all()), step_context.device):
        return None
    return outputs


def step_metrics(
    step: int,
    outputs: list[MethodOutput],
    learning_rate: float,
    grad_norm: torch.Tensor,
) -> dict[str, float]:
    """Loss, reward gap, training accuracy, target margin (and γ) of the step, across processes."""
    reward_gap = distributed.gather(torch.cat([output.reward_gap for output in outputs]).float())
    target_margin = distributed.gather(torch.cat([output.target_margin for output in outputs]).float())
    objective = distributed.gather(torch.stack([output.objective.detach().float() for output in outputs]))
    record = {
        "step": step,
        "loss": objective.mean().item(),
        "reward_gap_mean": reward_gap.mean().item(),
        "reward_gap_std": reward_gap.std().item() if reward_gap.numel() > 1 else 0.0,
        "train_accuracy": (reward_gap > 0).float().mean().item(),
        "target_margin_mean": target_margin.mean().item(),
        "target_margin_std": target_margin.std().item() if target_margin.numel() > 1 else 0.0,
        "learning_rate": learning_rate,
        "grad_norm": float(grad_norm),
    }
    if all("gamma" in output.diagnostics for output in outputs):
        gamma = distributed.gather(torch.cat([output.diagnostics["gamma"] for output in outputs]).float())
        record["gamma_mean"] = gamma.mean().item()
        record["gamma_std"] = gamma.std().item() if gamma.numel() > 1 else 0.0
    return record


def _clip_gradients(model: torch.nn.Module, max_grad_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_grad_norm`` (0: only measure it); returns the norm
    before clipping, over every process's shard when the model is sharded."""
    parameters = [parameter for parameter in model.parameters() if parameter.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([parameter.grad for parameter in parameters])
    return distributed.full_tensor(norm).detach().cpu()


def _training_device(device: str | None) -> torch.device:
    """The device this process trains on: the given type, CUDA when present, on the current GPU."""
    device_type = device or default_device()
    if device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


class _StepContext:
    """How a step runs here: the (wrapped) model, its device, packing, gradient synchronisation."""

    def __init__(self, model: torch.nn.Module, device: torch.device, processes: int, process_index: int) -> None:
        self.model = model
        self.device = device
        self.processes = processes
        self.process_index = process_index
        self.data_parallel = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        self.pack = (model.module if self.data_parallel else model).supports_packing

    def gradient_sync(self, is_last: bool) -> contextlib.AbstractContextManager:
        if self.data_parallel and not is_last:
            return self.model.no_sync()
        return contextlib.nullcontext()
