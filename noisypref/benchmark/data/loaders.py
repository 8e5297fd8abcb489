"""Loading preference pairs from a hub id or a local file into the schema of DESIGN §2.

Every dataset that leaves this module has `pair_id` (a unique string), `prompt`, `chosen`,
`rejected`, and, where the source has them, `score_chosen`, `score_rejected` and `source`.
Prompts and responses are either all plain strings or all conversational, as in TRL's preference
format: `prompt` is the list of messages before the final reply, `chosen` / `rejected` are lists
holding the reply's assistant message(s), every message `{"role": ..., "content": ...}`.

The layouts recognised (ShareGPT, prompt/chosen/rejected, transcripts that share the prompt) and the
pair ids are `noisypref.benchmark.data.layouts`; this module reads and writes the files and hub
datasets, and splits off the held-out pairs.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisypref.benchmark.data.hub import HubUnavailable, hub_lookup
from noisypref.benchmark.data.layouts import ParsedPreferences, SkippedRow, parse_preference_records
from noisypref.sampling import flip_count, keyed_uniforms, top_k_mask

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")
WRITABLE_SUFFIXES = (".jsonl", ".parquet")
SKIPPED_ROWS_LOGGED = 20

MESSAGE_FEATURE = {"role": datasets.Value("string"), "content": datasets.Value("string")}


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_preferences(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    layout: str | None = None,
    **hub_options: Any,
) -> datasets.Dataset:
    """Load preference pairs from a local json / jsonl / jsonl.gz / parquet file or a hub id.

    `split` chooses the hub split (needed when the hub dataset has several); a local file is one
    split, "train". `layout` forces one of LAYOUTS instead of detecting it. Other keyword options
    (`data_dir`, `name`, `revision`, ...) go to `datasets.load_dataset` for hub ids.
    Unparseable rows are skipped and logged with their index and reason; the load fails when a
    required column is missing or no row parses.
    """
    records, columns = _read_source(source, split, hub_options)
    try:
        parsed = parse_preference_records(records, columns, layout=layout)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    _report_skipped(parsed, str(source))
    if not parsed.rows:
        raise ValueError(
            f"no row of {source} could be parsed as a preference pair ({_skipped_summary(parsed.skipped)})"
        )
    logger.info("loaded %d preference pairs from %s (layout %s)", len(parsed.rows), source, parsed.layout)
    features = _schema_features(parsed.rows)
    rows = [{name: row.get(name) for name in features} for row in parsed.rows]
    return datasets.Dataset.from_list(rows, features=features)


def source_records(
    source: str | os.PathLike, split: str | None = None, **hub_options: Any
) -> tuple[str, list[dict[str, Any]]]:
    """The layout and the raw rows of a source that `load_preferences` keeps (unparseable rows left
    out), in the same order as its pairs: for writing noisy data in the source's own layout."""
    records, columns = _read_source(source, split, hub_options)
    parsed = parse_preference_records(records, columns)
    skipped = {row.index for row in parsed.skipped}
    return parsed.layout, [dict(record) for index, record in enumerate(records) if index not in skipped]


def swap_record_labels(record: Mapping[str, Any]) -> dict[str, Any]:
    """A raw row with its labels swapped: every key naming "chosen" (chosen, score_chosen,
    chosen-rating, chosen_model, ...) trades values with its "rejected" twin."""
    swapped = dict(record)
    for key in record:
        twin = key.replace("chosen", "rejected")
        if twin != key and twin in record:
            swapped[key], swapped[twin] = record[twin], record[key]
    return swapped


def write_records(records: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Raw rows as JSON lines or parquet, chosen by the file name's ending."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist([dict(record) for record in records]), path)
    elif path.name.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8", newline="\n") as file:
            file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    else:
        raise ValueError(
            f"cannot write {path}: the file name must end with one of {', '.join(WRITABLE_SUFFIXES)}"
        )


def _read_source(
    source: str | os.PathLike, split: str | None, hub_options: dict[str, Any]
) -> tuple[Sequence[Any], list[str]]:
    """The raw rows and column names of a local file or a hub dataset."""
    path = Path(source)
    if path.is_file():
        if hub_options:
            raise ValueError(
                f"options {', '.join(sorted(hub_options))} apply to hub datasets only, not to the local file {path}"
            )
        if split not in (None, "train"):
            raise ValueError(
                f"a local file holds one split, 'train'; split={split!r} is not available in {path}"
            )
        records = read_records(path)
        columns = sorted({key for record in records if isinstance(record, Mapping) for key in record})
    elif str(source).endswith(LOCAL_SUFFIXES):
        raise FileNotFoundError(f"no such file: {source}" + (" (it is a folder)" if path.is_dir() else ""))
    else:
        hub_dataset = _load_hub_dataset(str(source), split, hub_options)
        records, columns = hub_dataset, hub_dataset.column_names
    return records, columns


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local json (an array of objects, or JSON lines), jsonl, jsonl.gz or parquet file."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(LOCAL_SUFFIXES):
        raise ValueError(
            f"cannot read {path}: the file name must end with one of {', '.join(LOCAL_SUFFIXES)}"
        )
    try:
        if name.endswith(".parquet"):
            return pq.read_table(path).to_pylist()
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as file:
            content = file.read()
    except (OSError, EOFError, pa.ArrowException) as error:  # unreadable, a folder, corrupt gzip or parquet
        raise ValueError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {error.start} is {content[error.start : error.end]!r}); "
            "json and jsonl data files must be UTF-8"
        ) from None
    if name.endswith((".json", ".json.gz")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # possibly JSON lines under a .json name
        if isinstance(document, list):
            return document
        if document is not None:
            raise ValueError(
                f"{path} holds a JSON {type(document).__name__}; expected an array of row objects"
            )
    records = []
    # Split at newlines only: str.splitlines also splits at characters such as U+2028 that JSON
    # strings may hold unescaped.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from None
    return records



def split_heldout(
    dataset: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split off round(fraction * N) held-out pairs: `(training_pairs, heldout_pairs)`.

    The held-out pairs are those with the smallest keyed draws of (seed, pair_id), so the split
    depends on neither the row order nor the machine; both parts keep the dataset's row order.
    Split before injecting noise: the held-out pairs are clean and never trained on.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction {fraction!r} is not allowed; it must be a number in [0, 1)")
    if "pair_id" not in dataset.column_names:
        raise ValueError("the dataset has no pair_id column; load it with load_preferences")
    pair_ids = list(dataset["pair_id"])
    if len(set(pair_ids)) != len(pair_ids):
        raise ValueError("the dataset's pair_ids are not unique; cannot split it by pair")
    draws = keyed_uniforms(pair_ids, seed, "heldout")
    is_heldout = top_k_mask(flip_count(fraction, len(pair_ids)), -draws, np.zeros(len(pair_ids)), pair_ids)
    heldout_rows = [row for row, heldout in enumerate(is_heldout) if heldout]
    training_rows = [row for row, heldout in enumerate(is_heldout) if not heldout]
    return dataset.select(training_rows), dataset.select(heldout_rows)


def write_preferences(dataset: datasets.Dataset, path: str | Path) -> None:
    """Write a dataset as JSON lines (one object per row, keys in column order) or parquet,
    chosen by the file name's ending. Deterministic: the same dataset gives the same bytes."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        dataset.to_parquet(str(path))
    elif path.name.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8", newline="\n") as file:
            for row in dataset.with_format(None):
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ValueError(
            f"cannot write {path}: the file name must end with one of {', '.join(WRITABLE_SUFFIXES)}"
        )


def _schema_features(rows: Sequence[dict[str, Any]]) -> datasets.Features:
    text_or_messages = datasets.Value("string") if isinstance(rows[0]["chosen"], str) else [MESSAGE_FEATURE]
    prompt = datasets.Value("string") if isinstance(rows[0]["prompt"], str) else [MESSAGE_FEATURE]
    features = {
        "pair_id": datasets.Value("string"),
        "prompt": prompt,
        "chosen": text_or_messages,
        "rejected": text_or_messages,
    }
    columns = {key for row in rows for key in row}
    for optional, feature in (
        ("score_chosen", "float64"),
        ("score_rejected", "float64"),
        ("source", "string"),
    ):
        if optional in columns:
            features[optional] = datasets.Value(feature)
    return datasets.Features(features)


# ---------------------------------------------------------------------------------------------
# Hub and reporting


def _load_hub_dataset(hub_id: str, split: str | None, hub_options: dict[str, Any]) -> datasets.Dataset:
    try:
        with hub_lookup("hub dataset", hub_id):
            loaded = datasets.load_dataset(hub_id, split=split, **hub_options)
    except HubUnavailable:
        raise
    except (OSError, ValueError, TypeError, datasets.exceptions.DatasetsError) as error:
        raise ValueError(
            f"cannot load {hub_id!r}: it is not a local {' / '.join(LOCAL_SUFFIXES)} file, and loading it "
            f"as a hub dataset failed ({type(error).__name__}: {error})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise ValueError(f"{hub_id} has the splits {', '.join(loaded)}; choose one with split=...")
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, datasets.Dataset):
        raise ValueError(f"{hub_id} did not load as a datasets.Dataset (got {type(loaded).__name__})")
    return loaded


def _report_skipped(parsed: ParsedPreferences, source: str) -> None:
    if parsed.skipped and parsed.rows:
        logger.warning(
            "skipped %d row(s) of %s that could not be parsed: %s",
            len(parsed.skipped),
            source,
            _skipped_summary(parsed.skipped),
        )


def _skipped_summary(skipped: Sequence[SkippedRow]) -> str:
    if not skipped:
        return "the source has no rows"
    shown = "; ".join(f"row {row.index}: {row.reason}" for row in skipped[:SKIPPED_ROWS_LOGGED])
    more = len(skipped) - SKIPPED_ROWS_LOGGED
    return shown + (f"; and {more} more" if more > 0 else "")
