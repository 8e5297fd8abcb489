"""The settings sections of a run, each defined once with its defaults and checks.

A study file's sections, a run config's sections and the engine's arguments are these classes:
`TrainingSettings`, `EvaluationSettings` (its chat benchmarks: `config.benchmarks`), `ModelSettings`
(with `LoraSettings`), `NoiseSettings`, `MethodSettings` and `TrackingSettings`; `DatasetSettings` is in
`config.dataset`. Building one checks it (`noisypref.settings.Section`); a field added after 0.1
carries ``since`` and stays out of run ids while at its default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noisypref import methods as method_registry
from noisypref.benchmark.config.benchmarks import Benchmarks, benchmarks_check
from noisypref.benchmark.config.references import (
    CLEAN_ONLY,
    GIVEN_REFERENCES,
    NO_REFERENCE,
    REALISED_FLIP_RATE,
    reference_kind,
    symbol_problem,
    symbolic_hyperparameters,
    with_symbols_replaced,
)
from noisypref.checks import Invalid, boolean, choice, integer, number, optional, text
from noisypref.noise_injection import NOISE_MODELS
from noisypref.settings import Section, from_known_keys, nested_section, setting

TESTBED = "testbed"  # the dataset kind, and the model name meaning "the testbed's reference policy"
NAN_POLICIES = ("fail", "skip")
SHARDING_MODES = ("none", "fsdp")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")
REFERENCE_MODES = ("cached", "live")
MAX_SEED = 2**32 - 1  # seeds reach torch.manual_seed after arithmetic (generation), which must not overflow
LORA_ALL_LINEAR = "all-linear"

seed_check = integer(minimum=0, maximum=MAX_SEED)


# ---------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass(frozen=True)
class TrainingSettings(Section):
    """Optimisation settings (the ``training`` section); the engine's `train` takes them as they are."""

    section = "training"

    steps: int = setting(200, integer(minimum=1))
    batch_size: int = setting(64, integer(minimum=1))
    gradient_accumulation: int = setting(1, integer(minimum=1))
    learning_rate: float = setting(1e-3, number(minimum=0, exclusive_minimum=True))
    weight_decay: float = setting(0.0, number(minimum=0))
    warmup_ratio: float = setting(0.1, number(minimum=0, maximum=1, exclusive_maximum=True))
    max_grad_norm: float = setting(1.0, number(minimum=0))  # 0 disables clipping
    max_length: int = setting(512, integer(minimum=2))
    max_prompt_length: int = setting(256, integer(minimum=1))
    log_every: int = setting(10, integer(minimum=1))
    nan_policy: str = setting("fail", choice(NAN_POLICIES))
    # none: each process of a multi-process launch holds the whole model; fsdp: parameters,
    # gradients and optimizer state sharded across them (noisypref.benchmark.engine.distributed)
    sharding: str = setting("none", choice(SHARDING_MODES), since="0.1.1")
    # every N optimizer steps the run folder keeps checkpoint/checkpoint.pt; a rerun resumes from it
    checkpoint_every: int = setting(0, integer(minimum=0), since="0.2")
    # keep checkpoint/ once the run has succeeded (by default it is removed then: it can be several
    # times the model's size, and a finished run never resumes)
    keep_checkpoint: bool = setting(False, boolean(), since="0.2")
    # keep the trained policy (safetensors + tokenizer) in the run folder's model/
    save_model: bool = setting(False, boolean(), since="0.2")
    # the seed of the training randomness (pair order, LoRA initialisation, the method's draws);
    # null: the run's seed, which also draws the noise
    seed: int | None = setting(None, optional(seed_check), since="0.2")

    def problems(self) -> list[tuple[str, Any, str]]:
        problems = []
        if self.max_prompt_length >= self.max_length:
            expected = f"an integer < max_length = {self.max_length} (room for the response)"
            problems.append(("max_prompt_length", self.max_prompt_length, expected))
        if self.batch_size % self.gradient_accumulation:
            expected = (
                f"a multiple of gradient_accumulation = {self.gradient_accumulation} "
                "(batch_size counts the pairs of one optimiser step, split into gradient_accumulation micro-batches)"
            )
            problems.append(("batch_size", self.batch_size, expected))
        return problems

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.steps)


@dataclass(frozen=True)
class EvaluationSettings(Section):
    """What to measure after training (the ``evaluation`` section). Sampling settings apply to the
    gold-reward metrics; the KL estimate samples ``kl_samples`` responses per prompt at temperature 1."""

    section = "evaluation"

    heldout_accuracy: bool = setting(True, boolean())
    noise_detection: bool = setting(True, boolean())
    gold_reward: bool = setting(True, boolean())
    num_eval_prompts: int = setting(256, integer(minimum=1))
    samples_per_prompt: int = setting(1, integer(minimum=1))
    temperature: float = setting(1.0, number(minimum=0))  # 0: greedy
    max_new_tokens: int = setting(16, integer(minimum=1))
    kl_samples: int = setting(1, integer(minimum=0))
    benchmarks: Benchmarks = setting(Benchmarks(), benchmarks_check)  # chat benchmarks (config.benchmarks)
    # at most this many held-out pairs are evaluated (the first of the held-out split); null: all
    max_heldout_pairs: int | None = setting(None, optional(integer(minimum=1)), since="0.2")


# ---------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class LoraSettings(Section):
    """The ``model.lora`` section: low-rank adapters (Hu et al. 2021) trained instead of the full model."""

    section = "lora"

    r: int = setting(16, integer(minimum=1))
    alpha: float = setting(32.0, number(minimum=0, exclusive_minimum=True))
    dropout: float = setting(0.05, number(minimum=0, maximum=1, exclusive_maximum=True))
    target_modules: str | tuple[str, ...] = setting(LORA_ALL_LINEAR, lambda value: _target_modules(value))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _target_modules(value: Any) -> str | tuple[str, ...]:
    if value == LORA_ALL_LINEAR:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(name, str) and name for name in value):
        return tuple(value)
    raise Invalid(f"{LORA_ALL_LINEAR!r} or a non-empty list of module names (e.g. [q_proj, v_proj])")


@dataclass(frozen=True)
class ModelSettings(Section):
    """The model trained (the ``model`` section); the reference model is its starting point."""

    section = "model"

    name: str = setting(
        TESTBED,
        text(described_as=f"{TESTBED!r} (the testbed's reference policy), a hub model id or a local folder"),
    )
    dtype: str = setting("auto", choice(DTYPES))
    attn_implementation: str = setting("sdpa", choice(ATTENTION_IMPLEMENTATIONS))
    gradient_checkpointing: bool = setting(False, boolean())
    lora: LoraSettings | None = setting(  # None: full fine-tuning
        None, nested_section(LoraSettings, "null (full fine-tuning) or a mapping of LoRA settings r, alpha, dropout, target_modules")
    )
    # cached: reference log-probs computed once and cached; live: the reference model kept in memory
    reference: str = setting("cached", choice(REFERENCE_MODES))


# ---------------------------------------------------------------------------------------------
# Noise and method


def _noise_model_check(value: Any) -> str:
    return choice(sorted(NOISE_MODELS))(value)


@dataclass(frozen=True)
class NoiseSettings(Section):
    """The label noise of one run: a registered noise model, its target flip rate and options."""

    section = "noise"

    model: str = setting("symmetric", _noise_model_check)
    rate: float = setting(0.0, number(minimum=0, maximum=1))
    options: dict[str, Any] = setting({}, lambda value: _mapping(value, "options of the noise model"))

    def problems(self) -> list[tuple[str, Any, str]]:
        try:
            options = NOISE_MODELS[self.model].make_options(dict(self.options))
        except (ValueError, TypeError) as error:
            return [("options", self.options, f"valid options of noise model {self.model!r} ({error})")]
        object.__setattr__(self, "options", dataclasses.asdict(options))
        return []


def method_config(name: str, hyperparameters: Mapping[str, Any]) -> Any:
    """The method's hyperparameter dataclass (its own checks run); ``ValueError``/``TypeError`` if invalid.
    Validates without building the method (no margin estimator, no state).

    A hyperparameter given as the symbol ``realised_flip_rate`` (`config.references`) is checked for its
    place and stands as its default here: its value is known once a run has injected its noise
    (`resolve_hyperparameters`)."""
    config_class = method_registry.method_class(name).config_class
    symbols = symbolic_hyperparameters(hyperparameters)
    for hyperparameter in symbols:
        problem = symbol_problem(name, hyperparameter)
        if problem is not None:
            raise ValueError(f"{hyperparameter} = {REALISED_FLIP_RATE!r} is invalid: {problem}")
    defaults = method_registry.hyperparameter_defaults(name)
    stand_ins = {key: defaults[key] for key in symbols if key in defaults}
    return from_known_keys(config_class, with_symbols_replaced(hyperparameters, stand_ins), f"method {name!r}")


def resolve_hyperparameters(name: str, hyperparameters: Mapping[str, Any], realised_flip_rate: float) -> dict[str, Any]:
    """``hyperparameters`` with each ``realised_flip_rate`` symbol replaced by the run's realised flip rate,
    checked by the method; ``ValueError`` naming the hyperparameter, the resolved value and the method's
    bound when the method refuses it (rDPO: ε < 0.5)."""
    symbols = symbolic_hyperparameters(hyperparameters)
    resolved = with_symbols_replaced(hyperparameters, {key: float(realised_flip_rate) for key in symbols})
    try:
        method_config(name, resolved)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"method {name!r}: {', '.join(symbols)} = {REALISED_FLIP_RATE!r} resolved to {realised_flip_rate:.6g}, "
            f"the flip rate this run's noise realised, which the method refuses ({error})"
        ) from None
    return resolved


def reference_check(value: Any) -> str:
    if value not in GIVEN_REFERENCES:
        raise Invalid(
            f"one of {', '.join(map(repr, GIVEN_REFERENCES))} (a known-rate reference is made by giving a "
            f"hyperparameter the value {REALISED_FLIP_RATE!r})"
        )
    return value


@dataclass(frozen=True)
class MethodSettings(Section):
    """The method of one run: a registered method, its label and every hyperparameter."""

    section = "method"

    label: str = setting("dpo", text())
    name: str = setting("dpo", lambda value: choice(method_registry.available_methods())(value))
    hyperparameters: dict[str, Any] = setting({}, lambda value: _mapping(value, "hyperparameters"))
    # clean_only: the oracle reference, trained without its run's flipped pairs (config.references)
    reference: str = setting(NO_REFERENCE, reference_check, since="0.2")

    def problems(self) -> list[tuple[str, Any, str]]:
        try:
            method_config(self.name, self.hyperparameters)
        except (ValueError, TypeError) as error:
            return [("hyperparameters", self.hyperparameters, f"valid hyperparameters of {self.name!r} ({error})")]
        symbols = symbolic_hyperparameters(self.hyperparameters)
        if self.reference == CLEAN_ONLY and symbols:
            expected = (
                f"{NO_REFERENCE!r} with {', '.join(symbols)} = {REALISED_FLIP_RATE!r}: a clean_only run trains "
                "on no flipped pair, so an assumed flip rate has nothing to assume"
            )
            return [("reference", self.reference, expected)]
        return []

    @property
    def reference_kind(self) -> str:
        """none (a competitor), clean_only or known_rate (`config.references`)."""
        return reference_kind(self.reference, self.hyperparameters)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise Invalid(f"a mapping of {what}")
    return json.loads(json.dumps(dict(value)))


def match_default_type(value: Any, default: Any) -> Any:
    """An integer given where the default is a float becomes a float (tau: 3 and tau: 3.0 are one run)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# Tracking

TRACKERS = ("tensorboard", "wandb", "trackio")


def _trackers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name in TRACKERS for name in value):
        raise Invalid(f"a list of trackers out of {', '.join(TRACKERS)} (e.g. [tensorboard, wandb])")
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class TrackingSettings(Section):
    """Where each run's training curve, final metrics and resolved config also go (the ``tracking``
    section, or ``noisypref run --track``): one tracker run per noisypref run, grouped by study, named
    by the run's label. How runs are watched, not what they compute: no part of a run or its id."""

    section = "tracking"

    trackers: tuple[str, ...] = setting((), lambda value: _trackers(list(value) if isinstance(value, tuple) else value))
    project: str = setting("noisypref", text())  # the W&B / Trackio project
    tensorboard_dir: str | None = setting(None, optional(text()))  # default: OUT/tensorboard
