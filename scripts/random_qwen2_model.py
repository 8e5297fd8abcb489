"""Write a random-initialised Qwen2-shaped causal LM that reads the testbed's word language.

    python scripts/random_qwen2_model.py OUT_DIR [--shape 0.5b|tiny] [--cache-dir DIR]

The model has the body of Qwen2-0.5B (24 layers, width 896, 14 query / 2 key-value heads, MLP 4864,
tied embeddings; about 358M parameters without Qwen2's 152k-token vocabulary) and the testbed's word
tokenizer (built with the default ``TestbedConfig`` into the cache), so a study can train it on
testbed pairs (configs/gpu_check.yaml). Random weights learn nothing useful: this checks the engine
on the GPU (bf16 autocast, packing, memory, speed), not the method. ``--shape tiny`` is for a dry run
on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from noisypref.benchmark.testbed import TestbedConfig, build_testbed

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the testbed is built")
    args = parser.parse_args()
    testbed = build_testbed(TestbedConfig(), args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(testbed.reference_model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[args.shape],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"{args.out_dir}: random Qwen2 ({args.shape}), {parameters:,} parameters")


if __name__ == "__main__":
    main()
