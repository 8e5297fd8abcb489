"""Arena-Hard v0.1 answer files, ready for its judge (lm-sys/arena-hard-auto, ``gen_judgment.py``).

The format is what the v0.1 ``gen_answer.py`` of arena-hard-auto writes to
``data/arena-hard-v0.1/model_answer/<model_id>.jsonl``, one line per question, sorted by question id
(its ``reorg_answer_file``)::

    {"question_id": "...", "answer_id": "<22 characters, shortuuid>", "model_id": "<model_id>",
     "choices": [{"index": 0, "turns": [{"content": "<answer>", "token_len": <int>}]}],
     "tstamp": <unix time>}

The judge finds an answer by the file name (the model name) and ``question_id``, and reads
``choices[0]["turns"][0]["content"]``. ``token_len`` is informational (average length in the
results table); arena-hard-auto counts it with tiktoken's ``cl100k_base`` (``tiktoken_counter``),
which needs the encoding file from the internet on first use, so ``tokenizer_counter`` (the model's
own tokenizer) is offered as well. Later arena-hard-auto versions (style control, v2.0) add a
``conv_metadata`` field or use another layout; neither is written here.

``answer_id`` is random in arena-hard-auto (``shortuuid.uuid()``); here it is the same 22-character
encoding of a UUID5 of (model id, question id, answer), so rewriting a file gives the same ids.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from noisypref.benchmark.storage import write_text_atomic

# shortuuid's default alphabet: digits and letters without the look-alikes 0, 1, I, O and l.
SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SHORTUUID_LENGTH = 22
ANSWER_ID_NAMESPACE = uuid.UUID("5d0c1f38-4e4b-4d63-9a53-3b5c1e2f6a10")
QUESTION_FILE = "data/arena-hard-v0.1/question.jsonl"  # in lm-sys/arena-hard-auto


def load_questions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The questions of an arena-hard ``question.jsonl`` (``question_id``, ``category``, ``turns``)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def question_prompts(questions: Sequence[dict[str, Any]]) -> list[str]:
    """The user turn of every question; Arena-Hard v0.1 questions are single-turn."""
    prompts = []
    for question in questions:
        if len(question["turns"]) != 1:
            raise ValueError(
                f"question {question['question_id']} has {len(question['turns'])} turns; expected 1"
            )
        prompts.append(question["turns"][0]["content"])
    return prompts


def shortuuid_encode(value: uuid.UUID) -> str:
    """``shortuuid.encode``: the UUID's integer in base 57, most significant digit first, padded to 22."""
    number = value.int
    digits = []
    while number:
        number, digit = divmod(number, len(SHORTUUID_ALPHABET))
        digits.append(SHORTUUID_ALPHABET[digit])
    digits.extend(SHORTUUID_ALPHABET[0] * (SHORTUUID_LENGTH - len(digits)))
    return "".join(reversed(digits))


def answer_id(model_id: str, question_id: str, content: str) -> str:
    return shortuuid_encode(uuid.uuid5(ANSWER_ID_NAMESPACE, json.dumps([model_id, question_id, content])))


def answer_record(
    question_id: str, model_id: str, content: str, token_len: int, tstamp: float | None = None
) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "answer_id": answer_id(model_id, question_id, content),
        "model_id": model_id,
        "choices": [{"index": 0, "turns": [{"content": content, "token_len": int(token_len)}]}],
        "tstamp": time.time() if tstamp is None else tstamp,
    }


def tiktoken_counter() -> Callable[[str], int]:
    """arena-hard-auto's count: tiktoken ``encoding_for_model("gpt-3.5-turbo")`` (cl100k_base)."""
    import tiktoken

    encoding = tiktoken.encoding_for_model("gpt-3.5-turbo")
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def tokenizer_counter(tokenizer: Any) -> Callable[[str], int]:
    """Tokens of the answer under a Hugging Face tokenizer (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_answer_file(
    answer_dir: str | os.PathLike,
    questions: Sequence[dict[str, Any]],
    answers: Sequence[str],
    model_id: str,
    count_tokens: Callable[[str], int],
) -> Path:
    """Write ``<answer_dir>/<model_id>.jsonl``; ``answers[i]`` answers ``questions[i]``.

    Point ``answer_dir`` at ``data/arena-hard-v0.1/model_answer`` of an arena-hard-auto checkout and
    add ``model_id`` to its ``judge_config.yaml`` ``model_list``.
    """
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    if "/" in model_id or not model_id:
        raise ValueError(f"model_id {model_id!r} must be a non-empty file name (no '/')")
    tstamp = time.time()
    records = [
        answer_record(question["question_id"], model_id, answer, count_tokens(answer), tstamp)
        for question, answer in zip(questions, answers, strict=True)
    ]
    records.sort(key=lambda record: record["question_id"])
    path = Path(answer_dir) / f"{model_id}.jsonl"
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
    return path
