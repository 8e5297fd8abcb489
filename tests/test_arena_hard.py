"""Tests of Arena-Hard answer files (noisypref.benchmark.evaluation.arena_hard)."""

from __future__ import annotations

import json
import os
import uuid
from glob import glob
from pathlib import Path

import pytest

from noisypref.benchmark.evaluation.arena_hard import (
    SHORTUUID_ALPHABET,
    answer_id,
    load_questions,
    question_prompts,
    shortuuid_encode,
    write_answer_file,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUESTIONS = DATA / "arena_hard" / "question.jsonl"
needs_data = pytest.mark.skipif(
    not QUESTIONS.is_file(), reason=f"public Arena-Hard questions not found at {QUESTIONS}"
)


def load_model_answers_as_arena_hard_does(answer_dir: str) -> dict[str, dict[str, dict]]:
    """arena-hard-auto v0.1 ``utils.load_model_answers``, restated: model name from the file name."""
    model_answers = {}
    for filename in sorted(glob(os.path.join(answer_dir, "*.jsonl"))):
        with open(filename) as lines:
            model_answers[os.path.basename(filename)[:-6]] = {
                record["question_id"]: record for record in map(json.loads, lines)
            }
    return model_answers


@needs_data
def test_answer_file_for_the_500_questions_reads_like_arena_hard_answers(tmp_path):
    questions = load_questions(QUESTIONS)
    assert len(questions) == 500
    prompts = question_prompts(questions)
    answers = [f"An answer to: {prompt[:40]}" for prompt in prompts]

    path = write_answer_file(
        tmp_path, questions, answers, "my-model", count_tokens=lambda text: len(text.split())
    )

    assert path == tmp_path / "my-model.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 500
    assert [record["question_id"] for record in records] == sorted(q["question_id"] for q in questions)
    for record in records:
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert record["model_id"] == "my-model"
        assert isinstance(record["tstamp"], float)
        assert len(record["choices"]) == 1 and record["choices"][0]["index"] == 0
        (turn,) = record["choices"][0]["turns"]
        assert set(turn) == {"content", "token_len"}
        assert turn["token_len"] == len(turn["content"].split())

    by_model = load_model_answers_as_arena_hard_does(str(tmp_path))
    answer_by_question = {q["question_id"]: a for q, a in zip(questions, answers, strict=True)}
    judged = by_model["my-model"]
    assert {qid: judged[qid]["choices"][0]["turns"][0]["content"] for qid in judged} == answer_by_question


@needs_data
def test_answer_ids_are_stable_and_shortuuid_shaped(tmp_path):
    questions = load_questions(QUESTIONS)[:5]
    answers = ["a", "b", "c", "d", "e"]
    first = write_answer_file(tmp_path / "one", questions, answers, "m", count_tokens=len).read_text()
    second = write_answer_file(tmp_path / "two", questions, answers, "m", count_tokens=len).read_text()
    ids = [json.loads(line)["answer_id"] for line in first.splitlines()]
    assert ids == [json.loads(line)["answer_id"] for line in second.splitlines()]
    assert len(set(ids)) == 5
    assert all(len(i) == 22 and set(i) <= set(SHORTUUID_ALPHABET) for i in ids)
    assert answer_id("m", "q", "a") != answer_id("m", "q", "b") != answer_id("n", "q", "b")


def test_shortuuid_encoding_by_hand():
    assert len(SHORTUUID_ALPHABET) == 57
    assert shortuuid_encode(uuid.UUID(int=0)) == "2" * 22
    assert shortuuid_encode(uuid.UUID(int=1)) == "2" * 21 + "3"
    assert shortuuid_encode(uuid.UUID(int=57)) == "2" * 20 + "32"
    assert shortuuid_encode(uuid.UUID(int=57**2 + 2 * 57 + 3)) == "2" * 19 + "345"
    assert len(shortuuid_encode(uuid.UUID(int=2**128 - 1))) == 22


def test_shortuuid_encoding_matches_the_shortuuid_package():
    shortuuid = pytest.importorskip(
        "shortuuid", reason="shortuuid is not installed (arena-hard-auto uses it)"
    )
    for value in [uuid.uuid4() for _ in range(50)]:
        assert shortuuid_encode(value) == shortuuid.encode(value)


def test_multi_turn_questions_and_bad_inputs_are_refused(tmp_path):
    mt_bench = DATA / "mt_bench" / "question.jsonl"
    if mt_bench.is_file():
        with pytest.raises(ValueError, match="has 2 turns"):
            question_prompts(load_questions(mt_bench))
    questions = [{"question_id": "q1", "turns": [{"content": "hi"}]}]
    with pytest.raises(ValueError, match="0 answers for 1 questions"):
        write_answer_file(tmp_path, questions, [], "m", count_tokens=len)
    with pytest.raises(ValueError, match="file name"):
        write_answer_file(tmp_path, questions, ["a"], "org/model", count_tokens=len)
