"""Any registered noisypref method inside TRL's ``DPOTrainer`` (TRL >= 1.16; ``noisypref[trl]``).

A TRL script switches from ``loss_type="sigmoid"`` to γ-DPO by changing the trainer and naming a method::

    from trl import DPOConfig
    from noisypref.integrations.trl import NoisyPrefDPOTrainer

    trainer = NoisyPrefDPOTrainer(
        model=model, args=DPOConfig(output_dir="out", beta=0.1), train_dataset=pairs,
        processing_class=tokenizer,
        method="gamma_dpo", method_hyperparameters={"gamma0": 1.0, "tau": 10.0},
    )

TRL keeps doing everything but the loss: tokenisation, padding, the reference model (live, precomputed with
``precompute_ref_log_probs``, or the PEFT policy with its adapter off), the forward pass through its fused
LM head, the optimiser and schedule, logging, checkpoints and distributed launches. ``_compute_loss`` turns
TRL's per-token log-probs into noisypref's per-pair ``PairLogps`` and returns the method's objective.

Which setting lives where (one place each):

* ``DPOConfig.beta`` is the method's β (every method that has one); ``DPOConfig.seed`` seeds the method's
  samplers (the γ margin queue draws the same candidates on every rank).
* ``DPOConfig.ld_alpha`` (LD-DPO) is applied as TRL applies it, to the policy's and the reference's
  summed log-probs (shared prefix + ld_alpha · tail) before the method sees them, for every method.
* ``DPOConfig.use_weighting`` (WPO) gives each pair's loss TRL's weight, through the method's own
  ``use_weighting`` (a method without that option is refused).
* The other hyperparameters of the method (γ0, τ, queue size, length normalisation, label smoothing, …)
  are ``method_hyperparameters``. TRL's ``loss_type`` must stay ``["sigmoid"]`` (its default; the method
  replaces it), and ``loss_weights``, ``label_smoothing`` and ``f_divergence_type`` at their defaults:
  a combination of losses is noisypref's ``combined`` method.

Margin estimator state: the γ candidate set is all-gathered across the data-parallel ranks (so every rank
solves the same problem), only training batches enter the queue (``evaluate`` leaves it untouched), and the
queue is saved in every checkpoint (``noisypref_method.pt``) and restored by
``train(resume_from_checkpoint=...)``.

Metrics go through TRL's own: the token metrics TRL logs (entropy, num_tokens, logits/*, mean_token_accuracy),
``rewards/*`` and ``logps/*`` with TRL's names (the rewards are the method's implicit rewards), and
``margins/target_mean`` plus, for γ methods, ``gamma/mean``, ``gamma/std``, ``gamma/min``, ``gamma/max`` and
``gamma/candidates`` (the size of the candidate set).

Defaults that differ from noisypref's own engine (match them explicitly to compare the two; docs/trl.md):
TRL pads where the engine packs (round-off only), tokenises ``prompt + response`` text (the engine tokenises
them apart), disables dropout (``disable_dropout``), keeps the reference live unless
``precompute_ref_log_probs``, schedules the learning rate linearly (the engine: warm-up then cosine), uses
bf16 where it can, gradient checkpointing and ``max_grad_norm`` 1.0, and draws batches at random from its
own sampler.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import DPOConfig, DPOTrainer

from noisypref.methods import MethodOutput, PairLogps, PreferenceMethod, build, method_class

logger = logging.getLogger(__name__)

METHOD_STATE_FILE = "noisypref_method.pt"
# Batch keys that are not model inputs (TRL's own list in DPOTrainer._compute_loss).
NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
# TRL options whose job the noisypref method takes over: (option, the value it must keep, what to do instead).
REPLACED_OPTIONS = (
    ("loss_type", ["sigmoid"], "the noisypref method replaces TRL's loss; remove loss_type"),
    ("loss_weights", None, "combine losses with noisypref's 'combined' method"),
    ("label_smoothing", 0.0, "set the method's own label_smoothing in method_hyperparameters"),
    ("f_divergence_type", "reverse_kl", "noisypref's methods are written for the reverse KL"),
)
# Method hyperparameters that DPOConfig holds for the method (their one place in a TRL script).
FROM_DPO_CONFIG = ("beta", "ld_alpha", "use_weighting")


class NoisyPrefDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` whose loss is a noisypref method (see the module docstring).

    ``method``: a registered method's name (``noisypref methods`` lists them) built with
    ``method_hyperparameters`` plus β, seed and WPO weighting from ``args``; or a built ``PreferenceMethod``
    (a plugin's, or one with a margin estimator of your own), whose β and ``use_weighting`` must then agree
    with ``args``. Every other argument is ``DPOTrainer``'s; ``args`` is required.
    """

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: DPOConfig | None = None,
        *trainer_args: Any,
        method: str | PreferenceMethod = "dpo",
        method_hyperparameters: Mapping[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError(
                "NoisyPrefDPOTrainer needs args = DPOConfig(...): its beta, seed, ld_alpha and use_weighting "
                "configure the noisypref method"
            )
        self.method = preference_method(method, method_hyperparameters, args)
        super().__init__(model, ref_model, args, *trainer_args, **trainer_kwargs)

    # --- the loss ---------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        self.method.train(mode == "train")  # only training batches enter the γ margin queue
        model_kwargs = {key: value for key, value in inputs.items() if key not in NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_completion_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        seq_len = shift_completion_mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]
        logps = completion_logps(per_token_logps, shift_completion_mask, self.ld_alpha)
        pair_logps = self._pair_logps(inputs, logps, per_token_logps, outputs, shift_completion_mask)
        output = self.method(pair_logps)
        loss = output.objective
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item()
            )
        self._log_token_metrics(mode, outputs, inputs, shift_completion_mask)
        self._log_method_metrics(mode, output, pair_logps)
        if return_outputs:
            with torch.no_grad():  # TRL's fused head builds no logits: recompute them, as TRL does
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _pair_logps(
        self,
        inputs: dict[str, torch.Tensor],
        logps: torch.Tensor,
        per_token_logps: torch.Tensor,
        outputs: Any,
        shift_completion_mask: torch.Tensor,
    ) -> PairLogps:
        """The batch's per-pair log-probs (TRL's batch is [chosen..., rejected...])."""
        policy_chosen, policy_rejected = logps.chunk(2, dim=0)
        lengths = shift_completion_mask.sum(dim=1).to(logps.dtype)
        chosen_length, rejected_length = lengths.chunk(2, dim=0)
        reference_chosen = reference_rejected = None
        if self.method.requires_reference:
            if self.precompute_ref_logps:
                reference_chosen, reference_rejected = (
                    inputs["ref_chosen_logps"],
                    inputs["ref_rejected_logps"],
                )
            else:  # TRL's own reference pass (ref model, or the PEFT policy with its adapter off)
                reference_model = self.ref_model if self.ref_model is not None else self.model
                reference_chosen, reference_rejected = self.compute_ref_log_probs(reference_model, inputs)
        chosen_weight_log = rejected_weight_log = None
        if self.use_weighting:
            # WPO (Zhou et al. 2024, eq. 2), as TRL computes it: the per-token log-prob aligned by
            # log Σ_v π(v)², averaged over the completion, without gradient.
            with torch.no_grad():
                log_sum_sq_probs = outputs.log_sum_sq_probs[:, -shift_completion_mask.size(1) :]
                aligned = (per_token_logps - log_sum_sq_probs) * shift_completion_mask
                weight_log = aligned.sum(dim=1) / shift_completion_mask.sum(dim=1).clamp_min(1)
            chosen_weight_log, rejected_weight_log = weight_log.chunk(2, dim=0)
        return PairLogps(
            policy_chosen=policy_chosen,
            policy_rejected=policy_rejected,
            chosen_length=chosen_length,
            rejected_length=rejected_length,
            reference_chosen=reference_chosen,
            reference_rejected=reference_rejected,
            chosen_weight_log=chosen_weight_log,
            rejected_weight_log=rejected_weight_log,
        )

    # --- metrics, through TRL's own ----------------------------------------------------------------
    def _log_token_metrics(
        self, mode: str, outputs: Any, inputs: dict[str, torch.Tensor], shift_completion_mask: torch.Tensor
    ) -> None:
        """The token metrics TRL's DPOTrainer logs, computed as it computes them."""
        gather = self.accelerator.gather_for_metrics
        seq_len = shift_completion_mask.size(1)
        mask = shift_completion_mask
        entropy_sum = gather((outputs.entropy[:, -seq_len:].detach() * mask).sum()).sum()
        total_tokens = gather(mask.sum()).sum()
        self._metrics[mode]["entropy"].append(
            (entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0
        )
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        chosen_mask, rejected_mask = mask.bool().chunk(2, dim=0)
        chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].chunk(2, dim=0)
        for name, logits, side_mask in (
            ("chosen", chosen_logits, chosen_mask),
            ("rejected", rejected_logits, rejected_mask),
        ):
            total = gather(logits[side_mask].sum()).sum().item()
            tokens = gather(side_mask.sum()).sum().item()
            self._metrics[mode][f"logits/{name}"].append(total / tokens if tokens > 0 else 0.0)
        chosen_is_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        correct = gather((chosen_is_top1 & chosen_mask).sum()).sum()
        chosen_tokens = gather(chosen_mask.sum()).sum()
        self._metrics[mode]["mean_token_accuracy"].append(
            (correct / chosen_tokens).item() if chosen_tokens > 0 else 0.0
        )

    def _log_method_metrics(self, mode: str, output: MethodOutput, logps: PairLogps) -> None:
        """TRL's reward and log-prob metrics (the method's implicit rewards), the target margin and γ."""
        gather = self.accelerator.gather
        metrics = self._metrics[mode]
        chosen_reward, rejected_reward = gather(output.chosen_reward), gather(output.rejected_reward)
        metrics["rewards/chosen"].append(chosen_reward.mean().item())
        metrics["rewards/rejected"].append(rejected_reward.mean().item())
        metrics["rewards/accuracies"].append((chosen_reward > rejected_reward).float().mean().item())
        metrics["rewards/margins"].append(gather(output.reward_gap).mean().item())
        metrics["logps/chosen"].append(gather(logps.policy_chosen.detach()).mean().item())
        metrics["logps/rejected"].append(gather(logps.policy_rejected.detach()).mean().item())
        metrics["margins/target_mean"].append(gather(output.target_margin.float()).mean().item())
        if "gamma" in output.diagnostics:
            gamma = gather(output.diagnostics["gamma"].float())
            metrics["gamma/mean"].append(gamma.mean().item())
            metrics["gamma/std"].append(gamma.std().item() if gamma.numel() > 1 else 0.0)
            metrics["gamma/min"].append(gamma.min().item())
            metrics["gamma/max"].append(gamma.max().item())
            metrics["gamma/candidates"].append(float(self.method.margin_estimator.last_candidate_count))
        if "wpo_weight" in output.diagnostics:
            metrics["wpo_weight/mean"].append(gather(output.diagnostics["wpo_weight"].float()).mean().item())

    # --- the method's state in TRL's checkpoints ----------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            torch.save(self.method.state_dict(), os.path.join(folder, METHOD_STATE_FILE))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str):
            path = os.path.join(checkpoint, METHOD_STATE_FILE)
            if os.path.isfile(path):
                self.method.load_state_dict(torch.load(path, weights_only=False))
                logger.info("noisypref method state restored from %s", path)
            else:
                logger.warning(
                    "%s has no %s: the method's state (margin queue) starts afresh",
                    checkpoint,
                    METHOD_STATE_FILE,
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)


def completion_logps(
    per_token_logps: torch.Tensor, shift_completion_mask: torch.Tensor, ld_alpha: float | None
) -> torch.Tensor:
    """Per-sequence completion log-probs as TRL's DPOTrainer sums them (zero outside the completion).

    With ``ld_alpha`` (LD-DPO, Liu et al. 2024, eq. 6): the first ``min(|yw|, |yl|)`` completion tokens of a
    pair count fully, the rest times ``ld_alpha``; the batch is [chosen..., rejected...].
    """
    if ld_alpha is None:
        return per_token_logps.sum(dim=1)
    position = shift_completion_mask.cumsum(dim=1)
    chosen_lengths, rejected_lengths = shift_completion_mask.sum(dim=1).long().chunk(2, dim=0)
    shared_lengths = torch.minimum(chosen_lengths, rejected_lengths).repeat(2)[:, None]
    shared = (per_token_logps * ((position > 0) & (position <= shared_lengths))).sum(dim=1)
    tail = (per_token_logps * (position > shared_lengths)).sum(dim=1)
    return shared + ld_alpha * tail


def preference_method(
    method: str | PreferenceMethod, hyperparameters: Mapping[str, Any] | None, args: DPOConfig
) -> PreferenceMethod:
    """The method a ``NoisyPrefDPOTrainer`` trains with; ``ValueError`` for a setting in the wrong place."""
    for option, kept, instead in REPLACED_OPTIONS:
        if getattr(args, option) != kept:
            raise ValueError(
                f"DPOConfig.{option} = {getattr(args, option)!r} is not used with a noisypref method "
                f"({instead}); "
                f"leave it at {kept!r}"
            )
    if isinstance(method, PreferenceMethod):
        if hyperparameters:
            raise ValueError("method_hyperparameters go with a method name; this method is already built")
        _check_agrees_with(method, args)
        return method
    if not isinstance(method, str):
        raise ValueError(
            f"method = {method!r} is invalid: expected a registered method's name or a PreferenceMethod"
        )
    hyperparameters = dict(hyperparameters or {})
    misplaced = sorted(set(hyperparameters) & set(FROM_DPO_CONFIG))
    if misplaced:
        raise ValueError(
            f"method_hyperparameters {', '.join(map(repr, misplaced))}: set DPOConfig."
            f"{misplaced[0]} instead (one place for what TRL and the method share)"
        )
    fields = {field.name for field in dataclasses.fields(method_class(method).config_class)}
    if "beta" in fields:
        hyperparameters["beta"] = args.beta
    if args.use_weighting:
        if "use_weighting" not in fields:
            raise ValueError(f"DPOConfig.use_weighting = True: method {method!r} has no WPO weighting option")
        hyperparameters["use_weighting"] = True
    return build(method, seed=args.seed, **hyperparameters)


def _check_agrees_with(method: PreferenceMethod, args: DPOConfig) -> None:
    config = method.config
    if hasattr(config, "beta") and config.beta != args.beta:
        raise ValueError(
            f"the method's beta = {config.beta} differs from DPOConfig.beta = {args.beta}; make them equal"
        )
    if getattr(config, "ld_alpha", None) is not None:
        raise ValueError(
            "the method sets ld_alpha; set DPOConfig.ld_alpha instead (TRL applies it to the log-probs)"
        )
    if bool(getattr(config, "use_weighting", False)) != bool(args.use_weighting):
        raise ValueError(
            f"the method's use_weighting = {getattr(config, 'use_weighting', False)} differs from "
            f"DPOConfig.use_weighting = {args.use_weighting}; make them equal"
        )
