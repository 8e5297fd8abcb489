"""Loading preference pairs from a hub id or a local file into the schema of DESIGN §2.

Every dataset that leaves this module has `pair_id` (a unique string), `prompt`, `chosen`,
`rejected`, and, where the source has them, `score_chosen`, `score_rejected` and `source`.
Prompts and responses are either all plain strings or all conversational, as in TRL's preference
format: `prompt` is the list of messages before the final reply, `chosen` / `rejected` are lists
holding the reply's assistant message(s), every message `{"role": ..., "content": ...}`.

Recognised layouts (detected from the column names, or named with `layout=`):

- `sharegpt`: `conversations` (a list of `{"from", "value"}` turns) plus one `chosen` and one
  `rejected` turn object; an optional `system` string becomes a leading system message.
- `prompt_chosen_rejected`: plain `prompt` / `chosen` / `rejected` strings; TRL's explicit-prompt
  conversational format; UltraFeedback binarized and the princeton-nlp `*-ultrafeedback-armorm`
  sets, whose `chosen` / `rejected` are whole conversations that repeat the prompt turns (the
  shared leading messages become the prompt). Scores come from `score_chosen` / `score_rejected`,
  or, for the armorm sets, from `all_rm_scores` at the positions of the two responses in
  `all_generated_responses`.
- `shared_prefix`: only `chosen` / `rejected`, each a full transcript sharing the prompt. HH-RLHF
  strings are split at the last "\\n\\nAssistant:": the prompt keeps the shared history up to and
  including that marker, the responses are the text after it (leading space kept), so the data
  stays plain text. Where the two transcripts disagree before their last marker (a response that
  itself contains "\\n\\nAssistant:"), the prompt is cut at the last marker inside their common
  prefix. Message lists (TRL's implicit-prompt format) are split after their common leading messages.

`pair_id` is taken from a `pair_id` column when the source has one; otherwise it is a content
hash of the normalised prompt and the unordered pair of responses (so relabelling a pair keeps its
id), with "#2", "#3", ... appended to exact duplicates in order of appearance.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisypref.benchmark.data.hub import HubUnavailable, hub_lookup
from noisypref.sampling import flip_count, keyed_uniforms, top_k_mask

logger = logging.getLogger(__name__)

LAYOUTS = ("sharegpt", "prompt_chosen_rejected", "shared_prefix")
LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")
WRITABLE_SUFFIXES = (".jsonl", ".parquet")
HH_ASSISTANT_MARKER = "\n\nAssistant:"
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
PAIR_ID_HEX_DIGITS = 16
SKIPPED_ROWS_LOGGED = 20

MESSAGE_FEATURE = {"role": datasets.Value("string"), "content": datasets.Value("string")}


class RowError(ValueError):
    """A row that cannot be parsed into a preference pair; the message says why."""


@dataclass(frozen=True)
class SkippedRow:
    index: int
    reason: str


@dataclass
class ParsedPreferences:
    """Rows normalised to the schema, and the rows that could not be parsed."""

    layout: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)


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


def detect_layout(columns: Iterable[str]) -> str:
    """The layout named by a table's columns; ValueError naming what is missing otherwise."""
    columns = set(columns)
    if {"conversations", "chosen", "rejected"} <= columns:
        return "sharegpt"
    if {"prompt", "chosen", "rejected"} <= columns:
        return "prompt_chosen_rejected"
    if {"chosen", "rejected"} <= columns:
        return "shared_prefix"
    raise ValueError(
        f"cannot recognise the layout of a table with columns {', '.join(sorted(columns)) or '(none)'}: "
        "a preference dataset needs 'chosen' and 'rejected' (plus 'prompt', or 'conversations' for ShareGPT, "
        "or full transcripts sharing the prompt)"
    )


def parse_preference_records(
    records: Iterable[Mapping[str, Any]], columns: Iterable[str], *, layout: str | None = None
) -> ParsedPreferences:
    """Normalise raw rows of one layout into schema rows with pair_ids; collect the rows that fail."""
    columns = list(columns)
    if layout is None:
        layout = detect_layout(columns)
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; the known layouts are: {', '.join(LAYOUTS)}")
    parse_row = _ROW_PARSERS[layout]
    parsed = ParsedPreferences(layout)
    conversational: bool | None = None
    for index, record in enumerate(records):
        try:
            if not isinstance(record, Mapping):
                raise RowError(f"the row is a {type(record).__name__}, not an object")
            row = parse_row(record)
            row_is_conversational = not isinstance(row["chosen"], str)
            if conversational is None:
                conversational = row_is_conversational
            elif row_is_conversational != conversational:
                raise RowError(
                    f"{'conversational' if row_is_conversational else 'plain-text'} row in a "
                    f"{'conversational' if conversational else 'plain-text'} dataset"
                )
            row.update(_scores(record))
            if isinstance(record.get("source"), str):
                row["source"] = record["source"]
            if "pair_id" in columns:
                if record.get("pair_id") in (None, ""):
                    raise RowError("the pair_id is missing")
                row = {"pair_id": str(record["pair_id"]), **row}
        except RowError as error:
            parsed.skipped.append(SkippedRow(index, str(error)))
            continue
        parsed.rows.append(row)
    if "pair_id" in columns:
        duplicated = [
            pair_id for pair_id, count in Counter(row["pair_id"] for row in parsed.rows).items() if count > 1
        ]
        if duplicated:
            raise ValueError(
                f"the source's pair_id column repeats {len(duplicated)} id(s), e.g. {duplicated[:5]}; pair_ids must be unique"
            )
    else:
        _assign_content_pair_ids(parsed.rows)
    return parsed


def content_pair_id(prompt: Any, chosen: Any, rejected: Any) -> str:
    """A stable hash of a normalised pair: the prompt and the unordered pair of responses."""
    responses = sorted(
        json.dumps(response, ensure_ascii=False, sort_keys=True) for response in (chosen, rejected)
    )
    canonical = json.dumps(
        [json.dumps(prompt, ensure_ascii=False, sort_keys=True), *responses], ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:PAIR_ID_HEX_DIGITS]


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


# ---------------------------------------------------------------------------------------------
# Layout parsers: one raw record in, {"prompt", "chosen", "rejected"} out, RowError on failure.


def _parse_sharegpt(record: Mapping[str, Any]) -> dict[str, Any]:
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise RowError("'conversations' is missing or not a non-empty list of turns")
    prompt = [
        _sharegpt_message(turn, f"conversations[{position}]") for position, turn in enumerate(conversation)
    ]
    if isinstance(record.get("system"), str) and record["system"]:
        prompt.insert(0, {"role": "system", "content": record["system"]})
    return {
        "prompt": prompt,
        "chosen": [_sharegpt_reply(record.get("chosen"), "chosen")],
        "rejected": [_sharegpt_reply(record.get("rejected"), "rejected")],
    }


def _parse_prompt_chosen_rejected(record: Mapping[str, Any]) -> dict[str, Any]:
    prompt, chosen, rejected = (
        _required(record, "prompt"),
        _required(record, "chosen"),
        _required(record, "rejected"),
    )
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            raise RowError("the responses are plain text but the prompt is not a string")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant":
        # Whole conversations (UltraFeedback binarized, armorm): the shared leading turns are the prompt.
        return _split_shared_messages(chosen, rejected)
    prompt_messages = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt")
    )
    return {"prompt": prompt_messages, "chosen": chosen, "rejected": rejected}


def _parse_shared_prefix(record: Mapping[str, Any]) -> dict[str, Any]:
    chosen, rejected = _required(record, "chosen"), _required(record, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_hh_transcripts(chosen, rejected)
    return _split_shared_messages(_messages(chosen, "chosen"), _messages(rejected, "rejected"))


_ROW_PARSERS = {
    "sharegpt": _parse_sharegpt,
    "prompt_chosen_rejected": _parse_prompt_chosen_rejected,
    "shared_prefix": _parse_shared_prefix,
}


def _split_hh_transcripts(chosen: str, rejected: str) -> dict[str, str]:
    chosen_cut, rejected_cut = chosen.rfind(HH_ASSISTANT_MARKER), rejected.rfind(HH_ASSISTANT_MARKER)
    if chosen_cut >= 0 and rejected_cut >= 0 and chosen[:chosen_cut] == rejected[:rejected_cut]:
        prompt = chosen[: chosen_cut + len(HH_ASSISTANT_MARKER)]
    else:
        shared_history = os.path.commonprefix([chosen, rejected])
        cut = shared_history.rfind(HH_ASSISTANT_MARKER)
        if cut < 0:
            raise RowError("the transcripts share no history ending in '\\n\\nAssistant:'")
        prompt = shared_history[: cut + len(HH_ASSISTANT_MARKER)]
    return {"prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :]}


def _split_shared_messages(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> dict[str, Any]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RowError("the chosen and rejected conversations share no prompt turns")
    prompt, chosen_reply, rejected_reply = chosen[:shared], chosen[shared:], rejected[shared:]
    if chosen_reply[-1]["role"] != "assistant" or rejected_reply[-1]["role"] != "assistant":
        raise RowError("a conversation does not end with an assistant reply")
    return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}


# ---------------------------------------------------------------------------------------------
# Field helpers


def _required(record: Mapping[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None:
        raise RowError(f"the field {name!r} is {'null' if name in record else 'missing'}")
    return value


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{name!r} is neither a string nor a non-empty list of messages")
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, Mapping) or message.get("role") not in MESSAGE_ROLES:
            raise RowError(f"{name}[{position}] is not a message with a role in {', '.join(MESSAGE_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise RowError(f"{name}[{position}] has no text content")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _sharegpt_message(turn: Any, name: str) -> dict[str, str]:
    if not isinstance(turn, Mapping) or turn.get("from") not in SHAREGPT_ROLES:
        raise RowError(f"{name} is not a turn with 'from' in {', '.join(SHAREGPT_ROLES)}")
    if not isinstance(turn.get("value"), str):
        raise RowError(f"{name} has no text 'value'")
    return {"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]}


def _sharegpt_reply(turn: Any, name: str) -> dict[str, str]:
    if isinstance(turn, str):
        return {"role": "assistant", "content": turn}
    message = _sharegpt_message(turn, name)
    if message["role"] != "assistant":
        raise RowError(f"{name} is from {turn['from']!r}, not from the assistant")
    return message


def _scores(record: Mapping[str, Any]) -> dict[str, float | None]:
    """score_chosen / score_rejected from the record, or from the armorm `all_rm_scores`."""
    if "score_chosen" in record and "score_rejected" in record:
        return {
            "score_chosen": _score(record, "score_chosen"),
            "score_rejected": _score(record, "score_rejected"),
        }
    responses, scores = record.get("all_generated_responses"), record.get("all_rm_scores")
    if isinstance(responses, list) and isinstance(scores, list) and len(responses) == len(scores):
        found = {}
        for name in ("chosen", "rejected"):
            reply = record[name][-1]["content"] if isinstance(record[name], list) else record[name]
            if reply not in responses:
                raise RowError(
                    f"the {name} response is not among all_generated_responses, so it has no score"
                )
            found[f"score_{name}"] = float(scores[responses.index(reply)])
        return found
    return {}


def _score(record: Mapping[str, Any], name: str) -> float | None:
    value = record[name]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{name} is {value!r}, not a number")
    return float(value)


def _assign_content_pair_ids(rows: list[dict[str, Any]]) -> None:
    occurrences: Counter[str] = Counter()
    for position, row in enumerate(rows):
        pair_id = content_pair_id(row["prompt"], row["chosen"], row["rejected"])
        occurrences[pair_id] += 1
        if occurrences[pair_id] > 1:
            pair_id = f"{pair_id}#{occurrences[pair_id]}"
        rows[position] = {"pair_id": pair_id, **row}
    duplicates = sum(count - 1 for count in occurrences.values())
    if duplicates:
        logger.warning(
            "%d pair(s) repeat an earlier pair exactly; their pair_ids carry '#2', '#3', ...", duplicates
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
