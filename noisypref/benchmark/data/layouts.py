"""The public layouts of preference data, each parsed into the schema of DESIGN §2, one raw row at a time.

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

Adding a layout: a parser here (one raw record in, `{"prompt", "chosen", "rejected"}` out, `RowError`
on a row it cannot read), its name in `LAYOUTS` and `_ROW_PARSERS`, and its columns in `detect_layout`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LAYOUTS = ("sharegpt", "prompt_chosen_rejected", "shared_prefix")
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
