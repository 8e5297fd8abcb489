"""Write a random-initialised SmolLM2-135M-shaped Llama with a byte-level BPE tokenizer trained on a pairs file.

    python scripts/random_text_model.py OUT_DIR --pairs FILE [--shape smollm2-135m|tiny] [--vocabulary N]
    python scripts/random_text_model.py --smoke            # tiny shape, 64 pairs, into a scratch folder

For a GPU check of real text without the hub or a carried checkpoint: the model has the body of
SmolLM2-135M (30 layers, width 576, 9 query / 3 key-value heads, MLP 1536, tied embeddings, RoPE θ 1e5)
and a byte-level BPE tokenizer of ``--vocabulary`` tokens trained in seconds on the prompts and responses
of ``FILE`` (a preference file noisypref reads: JSON lines, optionally gzipped, with ``chosen`` and
``rejected`` transcripts such as HH-RLHF's, or ``prompt``/``chosen``/``rejected``). Random weights learn
nothing useful; the check is the engine on real text lengths (packing, the chunked head, bf16 autocast).
The last line printed is JSON: the folder, the parameter count and the vocabulary size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from device_data import hh_slice  # scripts/device_data.py (scripts/ is this script's path)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parent.parent
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct's config.json, its vocabulary aside
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100_000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048),
}  # fmt: skip


def texts(pairs_file: Path, limit: int | None) -> Iterator[str]:
    opener = gzip.open if pairs_file.suffix == ".gz" else open
    with opener(pairs_file, "rt", encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if limit is not None and index >= limit:
                return
            row = json.loads(line)
            yield from (row[key] for key in ("prompt", "chosen", "rejected") if isinstance(row.get(key), str))


def train_tokenizer(pairs_file: Path, vocabulary: int, limit: int | None) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts(pairs_file, limit), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def build(out_dir: Path, pairs_file: Path, shape: str, vocabulary: int, limit: int | None = None) -> dict:
    tokenizer = train_tokenizer(pairs_file, vocabulary, limit)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return {"model_dir": str(out_dir), "shape": shape, "parameters": parameters, "vocabulary": len(tokenizer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--pairs", type=Path, help="pairs file whose text trains the tokenizer (default: the "
                        "HH-RLHF slice of scripts/device_data.py)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--vocabulary", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, 64 pairs, a scratch folder")
    args = parser.parse_args()
    if args.out_dir is None and not args.smoke:
        parser.error("OUT_DIR is required (or --smoke)")
    args.pairs = args.pairs or hh_slice()
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            summary = build(args.out_dir or Path(scratch) / "model", args.pairs, "tiny", 512, limit=64)
        else:
            summary = build(args.out_dir, args.pairs, args.shape, args.vocabulary)
    print(f"{summary['model_dir']}: random Llama ({summary['shape']}), {summary['parameters']:,} parameters, "
          f"BPE vocabulary {summary['vocabulary']} trained on {args.pairs.name}")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
