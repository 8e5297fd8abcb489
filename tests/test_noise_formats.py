"""`noisypref noise --format {trl,same}` (issue 18): TRL's preference format or the input's own layout,
checked with TRL's own dataset functions and against the input rows swapped by hand."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from noisypref.benchmark.data.loaders import load_preferences
from noisypref.cli import main

trl_data_utils = pytest.importorskip("trl.data_utils", reason="trl (the bench extra) is not installed")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHAREGPT = SHARED / "dpo_mix_sample" / "dpo_en_demo.json"  # LLaMA-Factory's ShareGPT DPO demo
HH = SHARED / "hh_rlhf" / "harmless-base-test.jsonl.gz"
ROWS = 40

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _tokenizer_with_chat_template() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", chat_template=CHAT_TEMPLATE)


def _sharegpt_slice(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = json.loads(SHAREGPT.read_text())[:ROWS]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    return path, rows


def _hh_slice(tmp_path: Path) -> tuple[Path, list[dict]]:
    with gzip.open(HH, "rt", encoding="utf-8") as file:
        rows = [json.loads(next(file)) for _ in range(ROWS)]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, rows


def _noise(data: Path, out: Path, *extra: str) -> tuple[list[dict], list[bool]]:
    argv = ["noise", "--data", str(data), "--model", "symmetric", "--rate", "0.25", "--seed", "3", "--out", str(out)]
    assert main([*argv, *extra]) == 0
    rows = [json.loads(line) for line in (out / "noisy.jsonl").read_text().splitlines()]
    flipped = pd.read_csv(out / "flips.csv")["is_flipped"].astype(bool).tolist()
    assert sum(flipped) == ROWS // 4  # exact symmetric flips: 0.25 of 40
    return rows, flipped


@pytest.mark.skipif(not SHAREGPT.is_file(), reason=f"{SHAREGPT} is missing")
def test_trl_format_is_conversational_for_trl_and_carries_the_flips(tmp_path, capsys):
    source, originals = _sharegpt_slice(tmp_path)
    rows, flipped = _noise(source, tmp_path / "trl")  # --format trl is the default
    assert "(TRL's preference format)" in capsys.readouterr().out
    tokenizer = _tokenizer_with_chat_template()
    for row, original, is_flipped in zip(rows, originals, flipped, strict=True):
        example = {key: row[key] for key in ("prompt", "chosen", "rejected")}
        assert trl_data_utils.is_conversational(example)
        text = trl_data_utils.maybe_apply_chat_template(example, tokenizer)
        expected_chosen = original["rejected" if is_flipped else "chosen"]["value"]
        assert text["chosen"].strip() == f"{expected_chosen} <|end|>".strip()
        turns = ([("system", original["system"])] if original.get("system") else []) + [
            ({"human": "user", "gpt": "assistant", "system": "system"}[turn["from"]], turn["value"]) for turn in original["conversations"]
        ]
        assert text["prompt"] == "".join(f"<|{role}|> {content} <|end|> " for role, content in turns) + "<|assistant|> "


@pytest.mark.skipif(not SHAREGPT.is_file(), reason=f"{SHAREGPT} is missing")
def test_same_format_keeps_sharegpt_with_the_flipped_rows_swapped(tmp_path, capsys):
    source, originals = _sharegpt_slice(tmp_path)
    rows, flipped = _noise(source, tmp_path / "same", "--format", "same")
    assert "(the input's layout, sharegpt)" in capsys.readouterr().out
    for row, original, is_flipped in zip(rows, originals, flipped, strict=True):
        expected = dict(original, chosen=original["rejected"], rejected=original["chosen"]) if is_flipped else original
        assert row == expected
    # the same pairs as the trl output, read back through the loader
    trl_rows, _ = _noise(source, tmp_path / "trl")
    reread = load_preferences(tmp_path / "same" / "noisy.jsonl").to_list()
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in reread] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in trl_rows
    ]


@pytest.mark.skipif(not HH.is_file(), reason=f"{HH} is missing")
def test_same_format_keeps_hh_transcripts_which_trl_reads_as_implicit_prompts(tmp_path):
    source, originals = _hh_slice(tmp_path)
    rows, flipped = _noise(source, tmp_path / "same", "--format", "same", "--file-type", "jsonl")
    for row, original, is_flipped in zip(rows, originals, flipped, strict=True):
        assert set(row) == {"chosen", "rejected"}
        assert row["chosen"] == original["rejected" if is_flipped else "chosen"]
        assert not trl_data_utils.is_conversational(row)
        extracted = trl_data_utils.maybe_extract_prompt(row)  # TRL's implicit-prompt handling
        assert extracted["prompt"] + extracted["chosen"] == row["chosen"]
        assert extracted["prompt"] + extracted["rejected"] == row["rejected"]


def test_format_parquet_keeps_its_0_1_meaning(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": f"b{i}"}) + "\n" for i in range(8)))
    argv = ["noise", "--data", str(path), "--model", "symmetric", "--rate", "0.5", "--format", "parquet"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    table = pd.read_parquet(tmp_path / "out" / "noisy.parquet")
    assert list(table.columns[:4]) == ["pair_id", "prompt", "chosen", "rejected"]
