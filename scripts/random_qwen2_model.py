"""Write a random-initialised Qwen2-shaped causal LM that reads the testbed's word language.

    python scripts/random_qwen2_model.py OUT_DIR [--shape 0.5b|tiny]
    python scripts/random_qwen2_model.py --smoke           # tiny shape, into a scratch folder

The model has the body of Qwen2-0.5B (24 layers, width 896, 14 query / 2 key-value heads, MLP 4864,
tied embeddings; about 358M parameters without Qwen2's 152k-token vocabulary) and the word tokenizer
of the default testbed (``build_word_tokenizer`` of its topics and words: the testbed itself is not
built), so a study can train it on testbed pairs (configs/gpu_check.yaml). Random weights learn nothing
useful: this checks the engine on the GPU (bf16 autocast, packing, memory, speed), not the method.
``--shape tiny`` is for a dry run on the CPU. The last line printed is JSON: folder, shape, parameters.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from noisypref.benchmark.testbed import TestbedConfig, build_word_tokenizer

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}  # fmt: skip


def build(out_dir: Path, shape: str) -> dict:
    testbed = TestbedConfig()
    tokenizer = build_word_tokenizer(testbed.num_topics, testbed.num_words)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return {"model_dir": str(out_dir), "shape": shape, "parameters": parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, into a scratch folder")
    args = parser.parse_args()
    if args.out_dir is None and not args.smoke:
        parser.error("OUT_DIR is required (or --smoke)")
    with tempfile.TemporaryDirectory() as scratch:
        summary = build(args.out_dir or Path(scratch) / "model", "tiny" if args.smoke else args.shape)
    print(f"{summary['model_dir']}: random Qwen2 ({summary['shape']}), {summary['parameters']:,} parameters")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
