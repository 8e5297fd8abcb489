"""noisypref methods inside TRL's DPOTrainer (noisypref.integrations.trl), against two independent
implementations, step by step on the same model, data and batches:

(a) ``method="dpo"`` against TRL's own ``loss_type="sigmoid"`` (also with WPO weighting, LD-DPO and
    precomputed reference log-probs): the same per-step losses to float32 round-off;
(b) ``method="gamma_dpo"`` against noisypref's own engine (its packing, its reference cache, its loop):
    the same per-step losses over several steps;

and on 2 gloo ranks every rank solves the same γ candidate set; a resumed run restores the margin queue;
evaluation leaves the queue alone; settings in the wrong place are refused.

The TRL side matches the engine's defaults explicitly (docs/trl.md lists them): sequential batches in the
engine's order, AdamW without fusing, cosine schedule without warm-up, no weight decay, clipping at 1.0,
float32 (no bf16), no gradient checkpointing, one micro-batch per step, the reference a live model.
"""

from __future__ import annotations

import math
import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

trl = pytest.importorskip("trl", minversion="1.16", reason="TRL is the optional `trl` extra: pip install trl")
from transformers import PrinterCallback, TrainerCallback  # noqa: E402

from noisypref.benchmark.config.sections import TrainingSettings  # noqa: E402
from noisypref.benchmark.engine.reference import reference_logps  # noqa: E402
from noisypref.benchmark.engine.train import PairOrder, train  # noqa: E402
from noisypref.benchmark.testbed import build_word_tokenizer  # noqa: E402
from noisypref.integrations.trl import NoisyPrefDPOTrainer, preference_method  # noqa: E402
from noisypref.methods import available_methods, build  # noqa: E402
from noisypref.methods.margins import MarginEstimator  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_trl_equivalence import assert_same_sequences, engine_tokens, random_pairs  # noqa: E402
from test_trl_equivalence import build_tiny_llama as tiny_llama  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = 12
BETA = 0.5
PAIRS_PER_STEP = 8
STEPS = 4
LEARNING_RATE = 2e-2
SEED = 7  # DPOConfig.seed: the γ margin queue's sampler on the TRL side
GAMMA = {"gamma0": 2.0, "tau": 0.05}  # a small τ: margins far from uniform, so γ changes the loss
# (a): the same float32 arithmetic in another order (TRL: β·(Δchosen − Δrejected); noisypref: β·Δchosen −
# β·Δrejected); (b): packed rows and another reference pass, then Adam amplifies round-off in the near-zero
# gradients. Measured maxima (2026-12, CPU): (a) 6e-8, (b) 3e-7.
SAME_CODE_TOLERANCE = 1e-6
ENGINE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(num_topics=3, num_words=WORDS)


def recording(trainer_class):
    """``trainer_class`` that keeps the loss of every training micro-batch (one per step here)."""

    class Recording(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                self.losses.append(float(loss.detach()))
            return loss

    Recording.losses = None
    return Recording


def text_pairs(tokenizer, pairs):
    """TRL gets "<bos> prompt" and " response": it then tokenises like the engine (test_trl_equivalence)."""
    return pairs.map(
        lambda row: {
            "prompt": f"{tokenizer.bos_token} {row['prompt']}",
            "chosen": f" {row['chosen']}",
            "rejected": f" {row['rejected']}",
        }
    ).select_columns(["prompt", "chosen", "rejected"])


def dpo_config(output_dir, **overrides) -> trl.DPOConfig:
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=PAIRS_PER_STEP,
        beta=BETA,
        seed=SEED,
        max_steps=STEPS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        optim="adamw_torch",
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        logging_steps=1,
    )
    return trl.DPOConfig(**{**settings, **overrides})


def make_trainer(trainer_class, tokenizer, pairs, args, **method):
    trainer = recording(trainer_class)(
        model=tiny_llama(tokenizer, seed=0).train(),
        ref_model=tiny_llama(tokenizer, seed=1),
        args=args,
        train_dataset=text_pairs(tokenizer, pairs),
        processing_class=tokenizer,
        **method,
    )
    trainer.losses = []
    trainer.remove_callback(PrinterCallback)
    return trainer


def max_difference(first: list[float], second: list[float]) -> float:
    assert len(first) == len(second)
    return max(abs(a - b) for a, b in zip(first, second))


@pytest.mark.parametrize(
    "options",
    [{}, {"use_weighting": True}, {"ld_alpha": 0.5}, {"precompute_ref_log_probs": True}],
    ids=["plain", "wpo", "ld_dpo", "precomputed_reference"],
)
def test_dpo_through_the_integration_equals_trl_sigmoid_step_by_step(tokenizer, tmp_path, options):
    pairs = random_pairs(PAIRS_PER_STEP * STEPS)
    theirs = make_trainer(
        trl.DPOTrainer, tokenizer, pairs, dpo_config(tmp_path / "trl", loss_type="sigmoid", **options)
    )
    ours = make_trainer(
        NoisyPrefDPOTrainer, tokenizer, pairs, dpo_config(tmp_path / "noisypref", **options), method="dpo"
    )
    theirs.train()
    ours.train()

    assert len(ours.losses) == STEPS
    difference = max_difference(ours.losses, theirs.losses)
    per_step = [abs(a - b) for a, b in zip(ours.losses, theirs.losses)]
    print(f"(a) dpo vs TRL sigmoid {options}: per-step losses {ours.losses}; |difference| per step {per_step}")
    assert difference <= SAME_CODE_TOLERANCE
    assert max(ours.losses) - min(ours.losses) > 100 * SAME_CODE_TOLERANCE  # the steps move the loss
    # TRL's own metrics come through, under TRL's names, with the same values
    for name in ("rewards/margins", "rewards/accuracies", "logps/chosen", "entropy", "mean_token_accuracy"):
        ours_logged = [record[name] for record in ours.state.log_history if name in record]
        theirs_logged = [record[name] for record in theirs.state.log_history if name in record]
        assert ours_logged == pytest.approx(theirs_logged, abs=1e-4), name


@pytest.mark.parametrize(("name", "base"), [("gamma_dpo", "dpo"), ("gamma_simpo", "simpo")])
def test_gamma_methods_through_the_integration_equal_the_engine_step_by_step(tokenizer, tmp_path, name, base):
    pairs = random_pairs(PAIRS_PER_STEP * STEPS)
    order = PairOrder(len(pairs), PAIRS_PER_STEP, seed=0)
    engine_order = [int(index) for step in range(1, STEPS + 1) for index in order.step_pairs(step)]
    trainer = make_trainer(
        NoisyPrefDPOTrainer,
        tokenizer,
        pairs.select(engine_order),
        dpo_config(tmp_path),
        method=name,
        method_hyperparameters=GAMMA,
    )
    tokens = engine_tokens(tokenizer, pairs)
    assert_same_sequences(trainer, tokens, engine_order)
    trainer.train()

    reference = reference_logps(
        tiny_llama(tokenizer, seed=1), tokens, model_identity="seed-1", cache_dir=None,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    engine_records: list[dict] = []
    train(
        tiny_llama(tokenizer, seed=0),
        build(name, beta=BETA, seed=SEED, **GAMMA),
        tokens,
        TrainingSettings(
            steps=STEPS,
            batch_size=PAIRS_PER_STEP,
            learning_rate=LEARNING_RATE,
            warmup_ratio=0.0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_length=64,
            max_prompt_length=16,
            log_every=1,
        ),  # fmt: skip
        reference=reference if name == "gamma_dpo" else None,  # γ-SimPO is reference-free
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        callbacks=[engine_records.append],
    )
    engine_losses = [record["loss"] for record in engine_records]
    difference = max_difference(trainer.losses, engine_losses)
    per_step = [abs(a - b) for a, b in zip(trainer.losses, engine_losses)]
    print(f"(b) {name} vs engine: per-step losses {trainer.losses}; |difference| per step {per_step}")
    assert difference <= ENGINE_TOLERANCE

    # γ did something: the margins spread, and the base method on the same batches has other losses
    logged = [record for record in trainer.state.log_history if "gamma/std" in record]
    assert [record["gamma/std"] for record in logged] == pytest.approx(
        [record["gamma_std"] for record in engine_records], abs=1e-3
    )
    assert max(record["gamma/std"] for record in logged) > 0.1
    base_method = {"gamma": GAMMA["gamma0"]} if base == "simpo" else {}  # SimPO's constant margin: γ0
    without_gamma = make_trainer(
        NoisyPrefDPOTrainer, tokenizer, pairs.select(engine_order), dpo_config(tmp_path / base),
        method=base, method_hyperparameters=base_method,
    )  # fmt: skip
    without_gamma.train()
    assert max_difference(without_gamma.losses, trainer.losses) > 100 * ENGINE_TOLERANCE

    # evaluation neither feeds the queue nor draws from the training sampler
    state = trainer.method.state_dict()["margin_estimator"]
    trainer.evaluate(eval_dataset=text_pairs(tokenizer, pairs.select(range(PAIRS_PER_STEP))))
    after = trainer.method.state_dict()["margin_estimator"]
    assert state["queue"].numel() == STEPS * PAIRS_PER_STEP
    assert torch.equal(after["queue"], state["queue"]) and torch.equal(
        after["generator_state"], state["generator_state"]
    )
    assert trainer.method.training is False


class StopAfterStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True  # after the step's checkpoint


def test_a_resumed_run_restores_the_margin_queue(tokenizer, tmp_path):
    pairs = random_pairs(PAIRS_PER_STEP * STEPS)
    saving = dict(save_strategy="steps", save_steps=2)
    straight = make_trainer(
        NoisyPrefDPOTrainer, tokenizer, pairs, dpo_config(tmp_path / "straight"),
        method="gamma_dpo", method_hyperparameters=GAMMA,
    )  # fmt: skip
    straight.train()
    interrupted = make_trainer(
        NoisyPrefDPOTrainer, tokenizer, pairs, dpo_config(tmp_path / "resumed", **saving),
        method="gamma_dpo", method_hyperparameters=GAMMA,
    )  # fmt: skip
    interrupted.add_callback(StopAfterStep(2))
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert (checkpoint / "noisypref_method.pt").is_file()
    resumed = make_trainer(
        NoisyPrefDPOTrainer, tokenizer, pairs, dpo_config(tmp_path / "resumed", **saving),
        method="gamma_dpo", method_hyperparameters=GAMMA,
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed.losses == pytest.approx(straight.losses[2:], abs=SAME_CODE_TOLERANCE)
    final = resumed.method.state_dict()["margin_estimator"]
    straight_final = straight.method.state_dict()["margin_estimator"]
    assert final["queue"].numel() == STEPS * PAIRS_PER_STEP
    torch.testing.assert_close(final["queue"], straight_final["queue"], rtol=0, atol=SAME_CODE_TOLERANCE)
    assert torch.equal(final["generator_state"], straight_final["generator_state"])


# --- two data-parallel ranks ---------------------------------------------------------------------


class RecordingEstimator(MarginEstimator):
    """A MarginEstimator that keeps the gaps it was given and the margins it returned, per training call."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, batch_gaps):
        margins = super().__call__(batch_gaps)
        if self.training:
            self.calls.append((batch_gaps.detach().double().clone(), margins.detach().double().clone()))
        return margins


DISTRIBUTED_ESTIMATOR = {"gamma0": 2.0, "tau": 0.05, "queue_size": 12, "candidates": 10, "seed": SEED}


def rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )  # fmt: skip
    torch.set_num_threads(1)
    tokenizer = build_word_tokenizer(num_topics=3, num_words=WORDS)
    estimator = RecordingEstimator(**DISTRIBUTED_ESTIMATOR)
    method = build("gamma_dpo", beta=BETA, margin_estimator=estimator, **GAMMA)
    args = dpo_config(
        Path(out_dir) / "trainer", per_device_train_batch_size=PAIRS_PER_STEP // 2, ddp_backend="gloo"
    )
    trainer = make_trainer(
        NoisyPrefDPOTrainer, tokenizer, random_pairs(PAIRS_PER_STEP * STEPS), args, method=method
    )
    assert trainer.args.world_size == world_size
    trainer.train()
    torch.save({"calls": estimator.calls, "state": estimator.state_dict()}, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_rank_gets_the_same_margins_on_two_gloo_ranks(tmp_path):
    mp.spawn(rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert len(ranks[0]["calls"]) == len(ranks[1]["calls"]) == STEPS

    # One process fed both ranks' gaps, step by step (rank 0's first), gives each rank's margins: every
    # rank solved the same candidate set (the gathered batch plus the same queue draws).
    single = MarginEstimator(**DISTRIBUTED_ESTIMATOR)
    spread = []
    for (gaps0, margins0), (gaps1, margins1) in zip(ranks[0]["calls"], ranks[1]["calls"]):
        assert not torch.equal(gaps0, gaps1)  # the ranks train on different pairs
        expected = single(torch.cat([gaps0, gaps1]).float()).double()  # the trainer's gaps are float32
        torch.testing.assert_close(torch.cat([margins0, margins1]), expected, rtol=0, atol=0)
        spread.append(float(expected.std()))
    assert max(spread) > 0.1  # margins that differ between pairs: the comparison means something
    assert torch.equal(ranks[0]["state"]["queue"], ranks[1]["state"]["queue"])
    assert torch.equal(ranks[0]["state"]["queue"], single.state_dict()["queue"])
    assert torch.equal(ranks[0]["state"]["generator_state"], ranks[1]["state"]["generator_state"])


# --- settings in the wrong place ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "method", "hyperparameters", "message"),
    [
        ({"loss_type": "ipo"}, "dpo", None, "DPOConfig.loss_type"),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, "dpo", None, "DPOConfig.loss_type"),
        ({"label_smoothing": 0.1}, "robust_dpo", None, "DPOConfig.label_smoothing"),
        ({}, "gamma_dpo", {"beta": 0.3}, "set DPOConfig.beta instead"),
        ({}, "gamma_dpo", {"ld_alpha": 0.5}, "set DPOConfig.ld_alpha instead"),
        ({"use_weighting": True}, "simpo", None, "method 'simpo' has no WPO weighting option"),
        ({}, "no_such_method", None, "unknown method 'no_such_method'"),
        ({}, "gamma_dpo", {"tau": -1.0}, "tau = -1.0 is invalid"),
    ],
)
def test_settings_in_the_wrong_place_are_refused(tmp_path, config, method, hyperparameters, message):
    with pytest.raises(ValueError, match=message):
        preference_method(method, hyperparameters, dpo_config(tmp_path, **config))


def test_dpo_config_supplies_beta_seed_and_weighting(tmp_path):
    method = preference_method("gamma_simpo", {"gamma0": 0.8}, dpo_config(tmp_path, beta=2.5, seed=11))
    assert (method.config.beta, method.config.gamma0, method.margin_estimator.seed) == (2.5, 0.8, 11)
    weighted = preference_method("ipo", {"length_normalize": True}, dpo_config(tmp_path, use_weighting=True))
    assert weighted.config.use_weighting and weighted.config.length_normalize
    built = build("dpo", beta=0.2)
    with pytest.raises(ValueError, match="beta = 0.2 differs from DPOConfig.beta = 0.5"):
        preference_method(built, None, dpo_config(tmp_path))
    assert preference_method(built, None, dpo_config(tmp_path, beta=0.2)) is built


# --- docs/trl.md runs as written -------------------------------------------------------------------

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = REPOSITORY.parent / "shared"
DOC = REPOSITORY / "docs" / "trl.md"


def example_blocks(text: str) -> list[tuple[str, str]]:
    """The (language, code) of every bash and python block of the doc's complete example, in order."""
    section = text.split("## A complete example", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(bash|python)\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason=f"the public test data folder {SHARED}/data is absent")
def test_the_trl_doc_runs_as_written(tmp_path):
    blocks = example_blocks(DOC.read_text(encoding="utf-8"))
    assert [language for language, _ in blocks] == ["bash", "python", "python"]
    work = tmp_path / "work"  # the doc runs from a folder beside shared/, as the repository root is
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outputs = []
    for index, (language, code) in enumerate(blocks):
        if language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", code]
        else:
            script = work / f"block{index}.py"
            script.write_text(code, encoding="utf-8")
            command = [sys.executable, str(script)]
        completed = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, f"block {index} ({language}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        outputs.append(completed.stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"docs/trl.md: {cpu_seconds:.1f} CPU-seconds; load {os.getloadavg()[0]:.1f}")
    assert (work / "noisy" / "flips.csv").is_file() and (work / "tiny-model" / "config.json").is_file()
    summary = re.search(r"γ mean ([0-9.]+) \(spread ([0-9.]+)\) over (\d+) candidates", outputs[-1])
    assert summary, outputs[-1][-2000:]
    assert float(summary.group(2)) > 0 and int(summary.group(3)) > 8  # margins spread over queued gaps too


def test_every_registered_method_trains_through_the_integration(tokenizer, tmp_path):
    """Two steps of every method (defaults; β from DPOConfig): finite losses, γ statistics for γ methods."""
    pairs = random_pairs(2 * PAIRS_PER_STEP)
    for name in available_methods():
        trainer = make_trainer(
            NoisyPrefDPOTrainer, tokenizer, pairs, dpo_config(tmp_path / name, max_steps=2), method=name
        )
        trainer.train()
        assert len(trainer.losses) == 2 and all(math.isfinite(loss) for loss in trainer.losses), name
        logged = [record for record in trainer.state.log_history if "loss" in record]
        has_gamma = trainer.method.margin_estimator is not None
        assert all(("gamma/mean" in record) == has_gamma for record in logged), name
        assert all(math.isfinite(record["rewards/margins"]) for record in logged), name
