"""The engine's DPO against TRL's DPOTrainer (sigmoid loss): a second, independent implementation.

TRL tokenises the text itself, pads instead of packing, takes log-probs through its own fused LM
head and steps through the Hugging Face Trainer; the engine packs sequences, uses ``SequenceLogps``,
the cached reference log-probs and its own loop. On the same pairs, with the same tiny random
Llama, the two must give the same loss (to 1e-3), on one batch and over the first training steps.
Needs the optional ``trl`` package (the ``bench`` extra); skipped without it.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import tiny_llama_config_of
from transformers import AutoModelForCausalLM, PrinterCallback

from noisypref.benchmark.config.sections import TrainingSettings
from noisypref.benchmark.engine.batches import pair_batch
from noisypref.benchmark.engine.logps import SequenceLogps
from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.engine.tokenization import tokenize_pairs
from noisypref.benchmark.engine.train import PairOrder, train
from noisypref.benchmark.testbed import build_word_tokenizer
from noisypref.methods import PairLogps, build

trl = pytest.importorskip(
    "trl", minversion="1.16", reason="TRL is the optional `bench` extra: pip install trl"
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = 12
BETA = 0.1
PAIRS_PER_STEP = 8
STEPS = 3
LEARNING_RATE = 1e-2
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(num_topics=3, num_words=WORDS)


def build_tiny_llama(tokenizer, seed: int):
    """The tests' random two-layer Llama on the tokenizer's ids (a plain function: test_trl_integration
    imports it)."""
    config = tiny_llama_config_of(
        tokenizer=tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    """``tiny_llama(seed)``: ``build_tiny_llama`` on the module's tokenizer."""
    return lambda seed: build_tiny_llama(tokenizer, seed)


def random_pairs(count: int) -> datasets.Dataset:
    """Pairs of random words with varied lengths (so TRL pads and the engine packs)."""
    generator = torch.Generator().manual_seed(0)

    def words(prefix: str, vocabulary: int, low: int, high: int) -> str:
        length = int(torch.randint(low, high, (1,), generator=generator))
        return " ".join(
            f"{prefix}{int(index)}" for index in torch.randint(vocabulary, (length,), generator=generator)
        )

    return datasets.Dataset.from_dict(
        {
            "pair_id": [f"pair-{index:02d}" for index in range(count)],
            "prompt": [words("topic_", 3, 1, 5) for _ in range(count)],
            "chosen": [words("w", WORDS, 1, 12) for _ in range(count)],
            "rejected": [words("w", WORDS, 1, 12) for _ in range(count)],
        }
    )


def trl_trainer(tokenizer, pairs: datasets.Dataset, output_dir, **config):
    """TRL's DPOTrainer on ``pairs`` in order, policy seed 0, reference model seed 1 (live).

    TRL gets "<bos> prompt" and " response", so that it tokenises [bos] + prompt + response + [eos]
    like the engine (checked).
    """
    text = pairs.map(
        lambda row: {
            "prompt": f"{tokenizer.bos_token} {row['prompt']}",
            "chosen": f" {row['chosen']}",
            "rejected": f" {row['rejected']}",
        }
    ).select_columns(["prompt", "chosen", "rejected"])
    args = trl.DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=PAIRS_PER_STEP,
        beta=BETA,
        loss_type=["sigmoid"],
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        optim="adamw_torch",
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **config,
    )
    trainer = trl.DPOTrainer(
        model=build_tiny_llama(tokenizer, seed=0).train(),
        ref_model=build_tiny_llama(tokenizer, seed=1),
        args=args,
        train_dataset=text,
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def engine_tokens(tokenizer, pairs: datasets.Dataset):
    return tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=16)


def assert_same_sequences(trainer, tokens, order: list[int]) -> None:
    for row, index in enumerate(order):
        chosen, rejected = tokens.chosen_and_rejected(index)
        example = trainer.train_dataset[row]
        assert example["prompt_ids"] == tokens.prompt_ids[index]
        assert example["chosen_ids"] == chosen
        assert example["rejected_ids"] == rejected


def test_loss_on_one_batch_matches_trl_sigmoid_dpo(tokenizer, tiny_llama, tmp_path) -> None:
    pairs = random_pairs(PAIRS_PER_STEP)
    trainer = trl_trainer(tokenizer, pairs, tmp_path, max_steps=1, learning_rate=LEARNING_RATE)
    tokens = engine_tokens(tokenizer, pairs)
    assert_same_sequences(trainer, tokens, list(range(len(pairs))))

    batch = trainer.data_collator([trainer.train_dataset[row] for row in range(len(pairs))])
    assert (batch["attention_mask"] == 0).any()  # TRL really pads this batch
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))

    policy = tiny_llama(seed=0)
    reference = reference_logps(
        tiny_llama(seed=1),
        tokens,
        model_identity="seed-1",
        cache_dir=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    indices = torch.arange(len(pairs))
    logps_model = SequenceLogps(policy)
    assert logps_model.supports_packing
    packed = pair_batch(tokens, indices.tolist(), tokenizer.pad_token_id, pack=True)
    assert packed.input_ids.shape[0] < 2 * len(pairs)  # and the engine really packs it
    with torch.no_grad():
        policy_chosen, policy_rejected = logps_model(packed).chunk(2)
    reference_chosen, reference_rejected = reference.chosen_and_rejected(tokens, indices)
    chosen_length, rejected_length = packed.response_lengths.float().chunk(2)
    engine_loss = float(
        build("dpo", beta=BETA)(
            PairLogps(
                policy_chosen=policy_chosen,
                policy_rejected=policy_rejected,
                chosen_length=chosen_length,
                rejected_length=rejected_length,
                reference_chosen=reference_chosen,
                reference_rejected=reference_rejected,
            )
        ).objective
    )

    assert abs(engine_loss - 0.6931) > 1e-3  # policy and reference differ: not the trivial log 2
    assert engine_loss == pytest.approx(trl_loss, abs=TOLERANCE)


def test_first_training_steps_match_trl(tokenizer, tiny_llama, tmp_path) -> None:
    """Both train 3 steps (AdamW, lr 1e-2 with cosine decay, clipping 1.0) on the same batches."""
    pairs = random_pairs(PAIRS_PER_STEP * STEPS)
    order = PairOrder(len(pairs), PAIRS_PER_STEP, seed=0)
    engine_order = [int(index) for step in range(1, STEPS + 1) for index in order.step_pairs(step)]

    trainer = trl_trainer(
        tokenizer,
        pairs.select(engine_order),
        tmp_path,
        max_steps=STEPS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
    )
    tokens = engine_tokens(tokenizer, pairs)
    assert_same_sequences(trainer, tokens, engine_order)
    trainer.train()
    trl_losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]

    reference = reference_logps(
        tiny_llama(seed=1),
        tokens,
        model_identity="seed-1",
        cache_dir=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    engine_losses: list[float] = []
    train(
        tiny_llama(seed=0),
        build("dpo", beta=BETA),
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
        ),
        reference=reference,
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        device="cpu",
        callbacks=[lambda record: engine_losses.append(record["loss"])],
    )

    assert len(trl_losses) == len(engine_losses) == STEPS
    assert engine_losses == pytest.approx(trl_losses, abs=TOLERANCE)
    # The steps changed the loss by far more than the tolerance: the agreement is not trivial.
    assert max(engine_losses) - min(engine_losses) > 10 * TOLERANCE
