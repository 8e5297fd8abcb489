"""AlpacaEval 2's files: the 805-prompt evaluation set, model outputs and annotations.

They follow the ``alpaca_eval`` package's formats exactly, so they can go to its CLI unchanged:

* model outputs (``model_outputs.json``): a list of ``{instruction, output, generator, dataset}`` in
  the order of the evaluation set;
* annotations (``annotations.json``): a list of ``{instruction, output_1, generator_1, output_2,
  generator_2, dataset, annotator, preference}``, ``output_1`` the baseline, ``preference`` in
  [1, 2] (1: the baseline wins, 2: the model wins, 1.5: a tie).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from noisypref.benchmark.config.benchmarks import ALPACA_EVAL_HUB_DATASET
from noisypref.benchmark.data.hub import hub_lookup
from noisypref.benchmark.storage import write_json_atomic

HUB_CONFIG = "alpaca_eval_gpt4_baseline"
# The hub dataset is built by a loading script that maps each config to a json file at the repository
# root; datasets >= 4 no longer runs loading scripts, so the file is read directly.
HUB_CONFIG_FILE = f"hf://datasets/{ALPACA_EVAL_HUB_DATASET}/{HUB_CONFIG}.json"
NUM_PROMPTS = 805


def read_json_records(path: Path, lines: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON array file (or a JSON-lines file), either gzip-compressed or not; malformed
    JSON raises ``ValueError`` naming the file, the line and the column."""
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise ValueError(
            f"{path}: cannot be read as UTF-8 JSON text ({error}); expected a .json array or .jsonl lines, "
            "plain or gzip-compressed"
        ) from None
    if lines:
        records = [
            _parse_json(line, path, number)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
    else:
        records = _parse_json(text, path)
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{path}: expected a JSON array of objects (one record per instruction)")
    return records


def _parse_json(text: str, path: Path, line_number: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = line_number or error.lineno
        raise ValueError(f"{path}: not valid JSON at line {line}, column {error.colno}: {error.msg}") from None


def load_eval_set(source: str | os.PathLike = ALPACA_EVAL_HUB_DATASET) -> list[dict[str, Any]]:
    """The evaluation set as records ``{instruction, output, generator, dataset}`` (``output`` is the
    baseline's reference answer), in the benchmark's order.

    ``source`` is the hub dataset id (config ``alpaca_eval_gpt4_baseline``) or a local json / jsonl
    file in the same layout, e.g. the package's ``results/gpt4_1106_preview/model_outputs.json``.
    """
    path = Path(source)
    if path.is_file():
        records = read_json_records(path, lines=path.suffix != ".json")
    elif str(source) == ALPACA_EVAL_HUB_DATASET:
        import datasets

        with hub_lookup("hub dataset", ALPACA_EVAL_HUB_DATASET):
            records = datasets.load_dataset("json", data_files=HUB_CONFIG_FILE, split="train").to_list()
    else:
        raise FileNotFoundError(f"{source} is neither a file nor the hub dataset {ALPACA_EVAL_HUB_DATASET!r}")
    missing = [key for key in ("instruction", "dataset") if records and key not in records[0]]
    if missing:
        raise ValueError(
            f"{source}: records lack {missing}; expected AlpacaEval's instruction/dataset layout"
        )
    return records


def model_output_records(
    eval_set: Sequence[dict[str, Any]], outputs: Sequence[str], generator: str
) -> list[dict[str, str]]:
    if len(outputs) != len(eval_set):
        raise ValueError(f"{len(outputs)} outputs for {len(eval_set)} instructions")
    return [
        {
            "instruction": row["instruction"],
            "output": output,
            "generator": generator,
            "dataset": row["dataset"],
        }
        for row, output in zip(eval_set, outputs, strict=True)
    ]


def write_model_outputs(
    path: str | os.PathLike, eval_set: Sequence[dict[str, Any]], outputs: Sequence[str], generator: str
) -> Path:
    """Write ``model_outputs.json`` in AlpacaEval's format, same order as ``eval_set``."""
    path = Path(path)
    write_json_atomic(path, model_output_records(eval_set, outputs, generator))
    return path


def load_annotations(source: str | os.PathLike | Sequence[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, (str, os.PathLike)):
        lines = Path(source).name.endswith((".jsonl", ".jsonl.gz"))
        return pd.DataFrame(read_json_records(Path(source), lines=lines))
    return pd.DataFrame(list(source))
