"""Every loss TRL's DPOTrainer also has, against TRL's own code, per pair, in float64, to 1e-10.

``DPOTrainer._compute_loss`` runs on a minimal stand-in for the trainer (the attributes it reads)
and a stand-in model that returns fixed per-token log-probs; the reference log-probs are passed
precomputed. noisypref gets the per-pair sums of the same per-token values. Where TRL and the
paper disagree the test says so and which one the noisypref method follows:

* ``ipo``: TRL divides each log-ratio by its completion length (its comment: confirmed by the IPO
  authors); the paper's eq. 17 does not. ``ipo`` follows the paper; ``length_normalize=True`` is TRL's.
* ``sigmoid`` ignores ``label_smoothing`` in TRL 1.16, so ``cdpo`` has no TRL counterpart.
* ``bco_pair``: the paper subtracts a running reward shift δ; TRL does not; neither does ``bco_pair``.
* ``sppo_hard``: the paper's soft win probability is replaced by 1/0 in both.
* ``sft``: TRL takes the token mean over the batch; ``sft``'s objective does too.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from noisypref.methods import PairLogps, build

trl = pytest.importorskip(
    "trl", minversion="1.16", reason="TRL is the optional `bench` extra: pip install trl"
)
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

TOLERANCE = 1e-10
PAIRS = 6
BETA = 0.3
CHOSEN_LENGTHS = [3, 7, 1, 5, 4, 9]
REJECTED_LENGTHS = [6, 2, 4, 5, 8, 1]


class Batch:
    """Per-token log-probs for PAIRS pairs: policy, reference and WPO's log Σ_v p_v² terms."""

    def __init__(self, seed: int = 0, scale: float = 0.8) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.width = max(CHOSEN_LENGTHS + REJECTED_LENGTHS)
        lengths = torch.tensor(CHOSEN_LENGTHS + REJECTED_LENGTHS)
        self.mask = (
            torch.arange(self.width)[None, :] < lengths[:, None]
        ).double()  # (2P, W), chosen rows first

        def per_token():
            return (
                -scale
                * torch.rand(2 * PAIRS, self.width, generator=generator, dtype=torch.float64)
                * self.mask
            )

        self.policy, self.reference = per_token(), per_token()
        self.log_sum_sq = (
            -torch.rand(2 * PAIRS, self.width, generator=generator, dtype=torch.float64) * self.mask
        )

    def rows(self, pairs: list[int]) -> list[int]:
        return pairs + [PAIRS + i for i in pairs]

    def trl_loss(
        self, pairs: list[int], loss_type, loss_weights=None, ld_alpha=None, use_weighting=False, **args
    ):
        rows = self.rows(pairs)
        mask = self.mask[rows]
        # input position 0 is the prompt; completion tokens follow, so shift_completion_mask = mask
        completion_mask = torch.cat([torch.zeros(len(rows), 1, dtype=torch.long), mask.long()], 1)
        policy = self.policy[rows]
        outputs = SimpleNamespace(
            log_probs=policy,
            log_sum_sq_probs=self.log_sum_sq[rows],
            entropy=torch.zeros_like(policy),
            mean_logits=torch.zeros_like(policy),
            is_top1=torch.zeros_like(policy, dtype=torch.bool),
        )
        reference = self.reference[rows]
        if (
            ld_alpha is not None
        ):  # precomputed reference log-probs are already desensitised, as TRL stores them
            reference = self._desensitised(reference, mask, ld_alpha)
        else:
            reference = reference.sum(1)
        inputs = {
            "input_ids": torch.ones_like(completion_mask),
            "attention_mask": torch.ones_like(completion_mask),
            "completion_mask": completion_mask,
            "ref_chosen_logps": reference[: len(pairs)],
            "ref_rejected_logps": reference[len(pairs) :],
        }
        loss_types = loss_type if isinstance(loss_type, list) else [loss_type]
        stand_in = SimpleNamespace(
            model=SimpleNamespace(training=True),
            accelerator=SimpleNamespace(
                device=torch.device("cpu"), gather_for_metrics=lambda t: t, gather=lambda t: t
            ),
            aux_loss_enabled=False,
            ld_alpha=ld_alpha,
            precompute_ref_logps=True,
            f_divergence_type="reverse_kl",
            loss_types=loss_types,
            loss_weights=loss_weights or [1.0] * len(loss_types),
            beta=BETA,
            label_smoothing=args.pop("label_smoothing", 0.0),
            use_weighting=use_weighting,
            args=SimpleNamespace(discopop_tau=args.pop("discopop_tau", 0.05)),
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
            _tp_size=1,
            _total_train_tokens=0,
        )
        assert not args
        # exo_pair builds its ε with torch.tensor: float64 by default here, so TRL runs in float64 throughout.
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return float(DPOTrainer._compute_loss(stand_in, lambda **kwargs: outputs, inputs, False))
        finally:
            torch.set_default_dtype(default_dtype)

    @staticmethod
    def _desensitised(per_token: torch.Tensor, mask: torch.Tensor, ld_alpha: float) -> torch.Tensor:
        count = len(per_token) // 2
        lengths = mask.sum(1)
        shared = torch.minimum(lengths[:count], lengths[count:]).repeat(2)
        shared_mask = torch.arange(per_token.shape[1])[None, :] < shared[:, None]
        shared_sum = (per_token * shared_mask).sum(1)
        return shared_sum + ld_alpha * (per_token.sum(1) - shared_sum)

    def pair_logps(self, pairs: list[int]) -> PairLogps:
        rows = self.rows(pairs)
        count = len(pairs)
        lengths = self.mask[rows].sum(1)
        shared = torch.minimum(lengths[:count], lengths[count:]).repeat(2)
        shared_mask = (torch.arange(self.width)[None, :] < shared[:, None]).double()
        policy, reference = self.policy[rows], self.reference[rows]
        weight_log = ((policy - self.log_sum_sq[rows]) * self.mask[rows]).sum(1) / lengths
        return PairLogps(
            policy_chosen=policy[:count].sum(1),
            policy_rejected=policy[count:].sum(1),
            chosen_length=lengths[:count],
            rejected_length=lengths[count:],
            reference_chosen=reference[:count].sum(1),
            reference_rejected=reference[count:].sum(1),
            policy_chosen_shared=(policy * shared_mask)[:count].sum(1),
            policy_rejected_shared=(policy * shared_mask)[count:].sum(1),
            reference_chosen_shared=(reference * shared_mask)[:count].sum(1),
            reference_rejected_shared=(reference * shared_mask)[count:].sum(1),
            chosen_weight_log=weight_log[:count],
            rejected_weight_log=weight_log[count:],
        )


# (TRL loss type, TRL arguments, noisypref method, its hyperparameters)
PER_PAIR = [
    ("sigmoid", {}, "dpo", {}),
    ("hinge", {}, "hinge", {}),
    ("ipo", {}, "ipo", {"length_normalize": True}),
    ("exo_pair", {"label_smoothing": 0.125}, "exo_pair", {"label_smoothing": 0.125}),
    ("nca_pair", {}, "nca_pair", {}),
    ("robust", {"label_smoothing": 0.2}, "robust_dpo", {"label_smoothing": 0.2}),
    ("bco_pair", {}, "bco_pair", {}),
    ("sppo_hard", {}, "sppo_hard", {}),
    ("apo_zero", {}, "apo_zero", {}),
    ("apo_down", {}, "apo_down", {}),
    ("discopop", {}, "discopop", {}),
    ("discopop", {"discopop_tau": 0.5}, "discopop", {"discopop_tau": 0.5}),
    ("sigmoid_norm", {}, "sigmoid_norm", {}),
    ("sft", {}, "sft", {}),
]


@pytest.mark.parametrize(("loss_type", "trl_args", "name", "hp"), PER_PAIR)
@pytest.mark.parametrize("scale", [0.8, 6.0])
def test_per_pair_loss_matches_trl(loss_type, trl_args, name, hp, scale):
    batch = Batch(scale=scale)
    method = build(name, **({"beta": BETA} if name != "sft" else {}), **hp)
    ours = method(batch.pair_logps(list(range(PAIRS)))).loss
    theirs = [batch.trl_loss([pair], loss_type, **dict(trl_args)) for pair in range(PAIRS)]
    assert ours.tolist() == pytest.approx(theirs, abs=TOLERANCE, rel=0)
    assert len(set(round(value, 6) for value in theirs)) > 1  # the pairs differ: not a constant


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_sorted_batch_losses_match_trl(name, label_smoothing):
    """aot sorts the batch: compared on the whole batch's objective."""
    batch = Batch(scale=3.0)
    pairs = list(range(PAIRS))
    ours = build(name, beta=BETA, label_smoothing=label_smoothing)(batch.pair_logps(pairs)).objective.item()
    theirs = batch.trl_loss(pairs, name, label_smoothing=label_smoothing)
    assert ours == pytest.approx(theirs, abs=TOLERANCE, rel=0)


def test_sft_objective_is_trl_token_mean_over_the_batch():
    batch = Batch(scale=3.0)
    pairs = list(range(PAIRS))
    assert build("sft")(batch.pair_logps(pairs)).objective.item() == pytest.approx(
        batch.trl_loss(pairs, "sft"), abs=TOLERANCE, rel=0
    )


def test_combined_terms_match_trl_loss_weights():
    """DPO + 0.5·SFT (TRL: loss_type [sigmoid, sft], loss_weights [1, 0.5]), on the whole batch."""
    batch = Batch(scale=2.0)
    pairs = list(range(PAIRS))
    method = build(
        "combined", terms=[{"method": "dpo", "weight": 1.0, "beta": BETA}, {"method": "sft", "weight": 0.5}]
    )
    ours = method(batch.pair_logps(pairs)).objective.item()
    theirs = batch.trl_loss(pairs, ["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    assert ours == pytest.approx(theirs, abs=TOLERANCE, rel=0)


@pytest.mark.parametrize(
    ("loss_type", "name"), [("sigmoid", "dpo"), ("ipo", "ipo"), ("nca_pair", "nca_pair")]
)
def test_wpo_weighting_matches_trl(loss_type, name):
    batch = Batch(scale=0.5)
    hp = {"length_normalize": True} if name == "ipo" else {}
    ours = build(name, beta=BETA, use_weighting=True, **hp)(batch.pair_logps(list(range(PAIRS)))).loss
    theirs = [batch.trl_loss([pair], loss_type, use_weighting=True) for pair in range(PAIRS)]
    assert ours.tolist() == pytest.approx(theirs, abs=TOLERANCE, rel=0)


@pytest.mark.parametrize(
    ("loss_type", "name"), [("sigmoid", "dpo"), ("ipo", "ipo"), ("apo_zero", "apo_zero")]
)
@pytest.mark.parametrize("ld_alpha", [0.0, 0.5])
def test_ld_alpha_matches_trl(loss_type, name, ld_alpha):
    batch = Batch(scale=3.0)
    hp = {"length_normalize": True} if name == "ipo" else {}
    ours = build(name, beta=BETA, ld_alpha=ld_alpha, **hp)(batch.pair_logps(list(range(PAIRS)))).loss
    theirs = [batch.trl_loss([pair], loss_type, ld_alpha=ld_alpha) for pair in range(PAIRS)]
    assert ours.tolist() == pytest.approx(theirs, abs=TOLERANCE, rel=0)


# --- the same options through the engine: a real model, TRL's own trainer on the same pairs ---------
#
# WPO and LD-DPO need per-token terms the engine computes itself (SequenceLogps: the shared-prefix sums
# and the WPO weight term; the reference cache: the reference's shared-prefix sums). TRL's DPOTrainer
# (sigmoid loss) on a tiny random Llama gives each pair's loss from its own padded forward pass and its
# fused LM head; the engine must give the same per-pair losses with packed rows and with padded rows
# (a model taken not to support packing), from the reference cache and from a live reference model.

ENGINE_TOLERANCE = 1e-5  # float32; packed rows and TRL's padded rows differ by round-off only


def engine_pair_losses(method, tokens, pad_token_id, *, pack: bool, live: bool, cache_dir) -> list[float]:
    from test_trl_equivalence import build_tiny_llama as tiny_llama

    from noisypref.benchmark.engine.logps import SequenceLogps, forward_pairs, per_token_terms
    from noisypref.benchmark.engine.reference import LiveReference, reference_logps

    terms = per_token_terms(method)
    reference_model = tiny_llama(tokens_tokenizer(), seed=1)
    if live:
        reference = LiveReference(reference_model, pad_token_id)
    else:
        reference = reference_logps(
            reference_model, tokens, model_identity="seed-1", cache_dir=cache_dir, pad_token_id=pad_token_id,
            shared_prefix=terms["shared_prefix"],
        )  # fmt: skip
    logps_model = SequenceLogps(tiny_llama(tokens_tokenizer(), seed=0))
    assert logps_model.supports_packing == pack
    with torch.no_grad():
        logps = forward_pairs(
            logps_model, tokens, torch.arange(len(tokens)), reference, pad_token_id, torch.device("cpu"),
            pack=pack, **terms,
        )  # fmt: skip
    return method(logps).loss.tolist()


def tokens_tokenizer():
    from noisypref.benchmark.testbed import build_word_tokenizer

    return build_word_tokenizer(num_topics=3, num_words=12)  # test_trl_equivalence's WORDS


@pytest.mark.parametrize(
    "options",
    [{"use_weighting": True}, {"ld_alpha": 0.5}, {"ld_alpha": 0.0}, {"ld_alpha": 0.5, "use_weighting": True}],
    ids=["wpo", "ld_alpha_0.5", "ld_alpha_0", "both"],
)
def test_engine_per_token_terms_give_trls_losses_packed_and_padded(options, tmp_path, monkeypatch, one_torch_thread):
    from test_trl_equivalence import assert_same_sequences, engine_tokens, random_pairs, trl_trainer

    tokenizer = tokens_tokenizer()
    pairs = random_pairs(8)
    trainer = trl_trainer(tokenizer, pairs, tmp_path / "trl", max_steps=1, **options)
    tokens = engine_tokens(tokenizer, pairs)
    assert_same_sequences(trainer, tokens, list(range(len(pairs))))
    with torch.no_grad():
        theirs = [
            float(trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[row]])))
            for row in range(len(pairs))
        ]
    plain_trainer = trl_trainer(tokenizer, pairs, tmp_path / "plain", max_steps=1)
    with torch.no_grad():
        plain = [
            float(plain_trainer.compute_loss(plain_trainer.model, plain_trainer.data_collator([example])))
            for example in plain_trainer.train_dataset
        ]
    assert max(abs(a - b) for a, b in zip(theirs, plain)) > 1e-3  # the options change TRL's losses

    method = build("dpo", beta=trainer.beta, **options)
    for pack in (True, False):
        with monkeypatch.context() as patch:
            if not pack:  # every SequenceLogps of this block lays sequences out one per padded row
                patch.setattr("noisypref.benchmark.engine.logps.packing_is_exact", lambda model: False)
            for live in (False, True):
                ours = engine_pair_losses(
                    method, tokens, tokenizer.pad_token_id, pack=pack, live=live, cache_dir=tmp_path / f"cache-{pack}"
                )
                assert ours == pytest.approx(theirs, abs=ENGINE_TOLERANCE, rel=0), (pack, live)


def test_the_reference_cache_keeps_shared_prefix_sums_in_a_file_of_their_own(tmp_path, one_torch_thread):
    from test_trl_equivalence import build_tiny_llama as tiny_llama
    from test_trl_equivalence import engine_tokens, random_pairs

    from noisypref.benchmark.engine.reference import reference_cache_path, reference_logps

    tokenizer = tokens_tokenizer()
    tokens = engine_tokens(tokenizer, random_pairs(6))
    options = dict(model_identity="seed-1", cache_dir=tmp_path, pad_token_id=tokenizer.pad_token_id)
    model = tiny_llama(tokenizer, seed=1)
    plain = reference_logps(model, tokens, **options)
    shared = reference_logps(model, tokens, **options, shared_prefix=True)
    plain_file = reference_cache_path(tmp_path, "seed-1", tokens)
    shared_file = reference_cache_path(tmp_path, "seed-1", tokens, shared_prefix=True)
    assert plain_file.is_file() and shared_file.is_file() and plain_file != shared_file
    assert plain.shared_a is None and "shared_a" not in torch.load(plain_file)
    assert torch.equal(shared.logp_a, plain.logp_a) and torch.equal(shared.logp_b, plain.logp_b)
    # by hand: one sequence at a time, the first min(|a|, |b|) response log-probs of each response
    for index in range(len(tokens)):
        count = min(len(tokens.response_a_ids[index]), len(tokens.response_b_ids[index]))
        for response, value in ((tokens.response_a_ids[index], shared.shared_a[index]),
                                (tokens.response_b_ids[index], shared.shared_b[index])):  # fmt: skip
            sequence = torch.tensor([tokens.prompt_ids[index] + response])
            with torch.no_grad():
                logits = model(sequence).logits[0, :-1].log_softmax(-1)
            prompt = len(tokens.prompt_ids[index])
            token_logps = logits[torch.arange(prompt - 1, sequence.shape[1] - 1), sequence[0, prompt:]]
            assert float(value) == pytest.approx(float(token_logps[:count].sum()), abs=1e-5)
    again = reference_logps(model, tokens, **options, shared_prefix=True)  # read back from the file
    assert torch.equal(again.shared_a, shared.shared_a) and torch.equal(again.shared_b, shared.shared_b)
