"""Loading preference pairs from every recognised layout, pair ids, held-out splits and writing."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import datasets
import pandas as pd
import pytest

from noisypref.benchmark.data import loaders as data
from noisypref.benchmark.data.layouts import content_pair_id, parse_preference_records
from noisypref.benchmark.data.loaders import load_preferences, split_heldout, write_preferences

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_RLHF_FILE = SHARED_DATA / "hh_rlhf" / "harmless-base-test.jsonl.gz"
SHAREGPT_FILE = SHARED_DATA / "dpo_mix_sample" / "dpo_en_demo.json"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the public test data folder {SHARED_DATA} is absent"
)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(autouse=True, scope="module")
def no_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


# ---------------------------------------------------------------------------------------------
# The public files


@needs_shared_data
def test_hh_rlhf_transcripts_split_into_the_shared_history_and_two_replies():
    with gzip.open(HH_RLHF_FILE, "rt", encoding="utf-8") as file:
        raw = [json.loads(line) for line in file]
    dataset = load_preferences(HH_RLHF_FILE)

    assert len(dataset) == len(raw) == 2312
    assert dataset.column_names == ["pair_id", "prompt", "chosen", "rejected"]
    assert len(set(dataset["pair_id"])) == 2312
    for row, original in zip(dataset, raw, strict=True):
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["chosen"] == original["chosen"]
        assert row["prompt"] + row["rejected"] == original["rejected"]
    # The usual case: the prompt ends at the last "\n\nAssistant:" of the chosen transcript.
    first = raw[0]["chosen"]
    assert dataset[0]["prompt"] == first[: first.rfind("\n\nAssistant:") + len("\n\nAssistant:")]
    assert dataset[0]["chosen"].startswith(" No, sorry!")


@needs_shared_data
def test_hh_rlhf_reply_that_contains_a_later_turn_keeps_the_shared_history_as_prompt():
    # Row 1254's chosen reply runs on into an invented "Human: ... \n\nAssistant:" turn.
    row = load_preferences(HH_RLHF_FILE)[1254]
    assert row["prompt"] == (
        "\n\nHuman: Are drag queens men?\n\nAssistant: No. Drag queens are women who act like stereotypical men."
        "\n\nHuman: Isn't that drag kings?\n\nAssistant:"
    )
    assert (
        row["rejected"]
        == " A drag king is the opposite of a drag queen, like a male who acts like a stereotypical woman."
    )


@needs_shared_data
def test_sharegpt_file_becomes_conversational_pairs():
    raw = json.loads(SHAREGPT_FILE.read_text(encoding="utf-8"))
    dataset = load_preferences(SHAREGPT_FILE)

    assert len(dataset) == len(raw) == 300
    assert len(set(dataset["pair_id"])) == 300
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    for row, original in zip(dataset, raw, strict=True):
        assert row["prompt"] == [
            {"role": roles[turn["from"]], "content": turn["value"]} for turn in original["conversations"]
        ]
        assert row["chosen"] == [assistant(original["chosen"]["value"])]
        assert row["rejected"] == [assistant(original["rejected"]["value"])]


@needs_shared_data
def test_exact_duplicate_pairs_keep_distinct_numbered_ids():
    raw = json.loads(SHAREGPT_FILE.read_text(encoding="utf-8"))
    distinct = {json.dumps(row, sort_keys=True) for row in raw}
    pair_ids = load_preferences(SHAREGPT_FILE)["pair_id"]
    numbered = [pair_id for pair_id in pair_ids if "#" in pair_id]
    assert len(numbered) == len(raw) - len(distinct)
    assert all(pair_id.split("#")[0] in pair_ids for pair_id in numbered)


# ---------------------------------------------------------------------------------------------
# Layouts written by the tests


def test_ultrafeedback_binarized_layout(tmp_path):
    rows = [
        {
            "prompt": "Name a colour.",
            "prompt_id": "abc",
            "chosen": [user("Name a colour."), assistant("Blue.")],
            "rejected": [user("Name a colour."), assistant("Seven.")],
            "messages": [user("Name a colour."), assistant("Blue.")],
            "score_chosen": 9.0,
            "score_rejected": 2.5,
        },
        {
            "prompt": "And another?",
            "prompt_id": "def",
            "chosen": [user("Name a colour."), assistant("Blue."), user("And another?"), assistant("Red.")],
            "rejected": [user("Name a colour."), assistant("Blue."), user("And another?"), assistant("No.")],
            "messages": [],
            "score_chosen": 8,
            "score_rejected": 8,
        },
    ]
    dataset = load_preferences(write_jsonl(tmp_path / "ultrafeedback.jsonl", rows))

    assert dataset.column_names == [
        "pair_id",
        "prompt",
        "chosen",
        "rejected",
        "score_chosen",
        "score_rejected",
    ]
    assert dataset[0]["prompt"] == [user("Name a colour.")]
    assert dataset[0]["chosen"] == [assistant("Blue.")]
    assert dataset[0]["rejected"] == [assistant("Seven.")]
    assert dataset[1]["prompt"] == [user("Name a colour."), assistant("Blue."), user("And another?")]
    assert dataset[1]["chosen"] == [assistant("Red.")]
    assert (dataset["score_chosen"][:], dataset["score_rejected"][:]) == ([9.0, 8.0], [2.5, 8.0])


def test_armorm_layout_takes_scores_from_all_rm_scores(tmp_path):
    rows = [
        {
            "prompt_id": "x1",
            "prompt": "Say hi.",
            "all_generated_responses": ["Hi!", "Hello there.", "Go away."],
            "all_rm_scores": [0.12, 0.31, -0.4],
            "chosen": [user("Say hi."), assistant("Hello there.")],
            "rejected": [user("Say hi."), assistant("Go away.")],
        }
    ]
    path = tmp_path / "armorm.parquet"
    pd.DataFrame(rows).to_parquet(path)
    dataset = load_preferences(path)

    assert dataset[0]["prompt"] == [user("Say hi.")]
    assert dataset[0]["chosen"] == [assistant("Hello there.")]
    assert (dataset[0]["score_chosen"], dataset[0]["score_rejected"]) == (0.31, -0.4)


def test_sharegpt_layout_with_a_system_field(tmp_path):
    rows = [
        {
            "system": "Be brief.",
            "conversations": [{"from": "human", "value": "2+2?"}],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        }
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    row = load_preferences(path)[0]
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, user("2+2?")]
    assert (row["chosen"], row["rejected"]) == ([assistant("4")], [assistant("5")])


def test_plain_prompt_chosen_rejected_layout_from_jsonl_gz(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "c1", "rejected": "r1", "source": "s"},
        {"prompt": "p2", "chosen": "c2", "rejected": "r2"},
    ]
    dataset = load_preferences(write_jsonl(tmp_path / "plain.jsonl.gz", rows))
    assert dataset.column_names == ["pair_id", "prompt", "chosen", "rejected", "source"]
    assert dataset.to_list()[0] == {
        "pair_id": content_pair_id("p1", "c1", "r1"),
        "prompt": "p1",
        "chosen": "c1",
        "rejected": "r1",
        "source": "s",
    }
    assert dataset[1]["source"] is None


def test_trl_explicit_and_implicit_prompt_conversational_layouts(tmp_path):
    explicit = [{"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Bye")]}]
    implicit = [{"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("Bye")]}]
    string_prompt = [{"prompt": "Hi", "chosen": [assistant("Hello")], "rejected": [assistant("Bye")]}]
    loaded = [
        load_preferences(write_jsonl(tmp_path / f"{name}.jsonl", rows))[0]
        for name, rows in (("explicit", explicit), ("implicit", implicit), ("string_prompt", string_prompt))
    ]
    expected = {"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Bye")]}
    for row in loaded:
        assert {key: row[key] for key in expected} == expected
    assert len({row["pair_id"] for row in loaded}) == 1  # the same normalised pair, the same id


def test_hh_style_transcripts_written_by_the_test(tmp_path):
    history = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
    rows = [{"chosen": history + " Knock knock.", "rejected": history + " No."}]
    row = load_preferences(write_jsonl(tmp_path / "hh.jsonl", rows))[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == (history, " Knock knock.", " No.")


def test_a_forced_layout_overrides_detection():
    records = [
        {"prompt": "ignored", "chosen": [user("Q"), assistant("A")], "rejected": [user("Q"), assistant("B")]}
    ]
    parsed = parse_preference_records(records, ["prompt", "chosen", "rejected"], layout="shared_prefix")
    assert parsed.layout == "shared_prefix"
    assert parsed.rows[0]["prompt"] == [user("Q")]
    with pytest.raises(ValueError, match="unknown layout 'csv'"):
        parse_preference_records(records, ["prompt", "chosen", "rejected"], layout="csv")


# ---------------------------------------------------------------------------------------------
# pair ids


def test_pair_id_is_a_stable_content_hash_independent_of_label_order(tmp_path):
    assert content_pair_id("p", "a", "b") == content_pair_id("p", "b", "a")
    assert content_pair_id("p", "a", "b") != content_pair_id("q", "a", "b")
    assert len(content_pair_id("p", "a", "b")) == 16
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(5)]
    from_jsonl = load_preferences(write_jsonl(tmp_path / "a.jsonl", rows))["pair_id"]
    parquet_path = tmp_path / "a.parquet"
    pd.DataFrame(rows).to_parquet(parquet_path)
    assert load_preferences(parquet_path)["pair_id"][:] == from_jsonl[:]


def test_a_source_pair_id_column_is_kept_and_must_be_unique(tmp_path):
    rows = [
        {"pair_id": 7, "prompt": "p", "chosen": "c", "rejected": "r"},
        {"pair_id": "b", "prompt": "p", "chosen": "c", "rejected": "s"},
    ]
    assert load_preferences(write_jsonl(tmp_path / "ids.jsonl", rows))["pair_id"][:] == ["7", "b"]
    rows[1]["pair_id"] = "7"
    with pytest.raises(ValueError, match="repeats 1 id"):
        load_preferences(write_jsonl(tmp_path / "dup.jsonl", rows))


# ---------------------------------------------------------------------------------------------
# Bad rows and bad sources


def test_unparseable_rows_are_reported_with_index_and_reason(tmp_path, caplog):
    rows = [
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"prompt": "p", "chosen": "c"},
        {"prompt": "p", "chosen": [assistant("c")], "rejected": [assistant("r")]},
        {"prompt": ["not a message"], "chosen": "c", "rejected": "r"},
        {"prompt": "p2", "chosen": "c2", "rejected": "r2"},
    ]
    with caplog.at_level(logging.WARNING, logger="noisypref.benchmark.data.loaders"):
        dataset = load_preferences(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert dataset["prompt"][:] == ["p", "p2"]
    assert "skipped 3 row(s)" in caplog.text
    assert "row 1: the field 'rejected' is missing" in caplog.text
    assert "row 2: conversational row in a plain-text dataset" in caplog.text
    assert "row 3: the responses are plain text but the prompt is not a string" in caplog.text


def test_sharegpt_rows_with_bad_turns_are_reported():
    records = [
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "human", "value": "a"},
            "rejected": "b",
        },
        {"conversations": [{"from": "robot", "value": "q"}], "chosen": "a", "rejected": "b"},
        {"conversations": [], "chosen": "a", "rejected": "b"},
    ]
    parsed = parse_preference_records(records, ["conversations", "chosen", "rejected"])
    assert parsed.rows == []
    assert [(row.index, row.reason) for row in parsed.skipped] == [
        (0, "chosen is from 'human', not from the assistant"),
        (1, "conversations[0] is not a turn with 'from' in human, user, gpt, assistant, system"),
        (2, "'conversations' is missing or not a non-empty list of turns"),
    ]


def test_load_fails_when_no_row_parses(tmp_path):
    rows = [{"chosen": "no marker here", "rejected": "none here either"}]
    with pytest.raises(
        ValueError, match=r"no row of .* could be parsed.*row 0: the transcripts share no history"
    ):
        load_preferences(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_load_fails_when_a_required_field_is_missing(tmp_path):
    with pytest.raises(ValueError, match=r"columns chosen, prompt.*needs 'chosen' and 'rejected'"):
        load_preferences(write_jsonl(tmp_path / "half.jsonl", [{"prompt": "p", "chosen": "c"}]))


def test_missing_local_file_and_misused_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_preferences(tmp_path / "absent.jsonl")
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(ValueError, match="hub datasets only"):
        load_preferences(path, data_dir="harmless-base")
    with pytest.raises(ValueError, match="one split"):
        load_preferences(path, split="test")


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    calls = []
    hub_rows = datasets.Dataset.from_list(
        [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}]
    )

    def fake_load_dataset(path, split=None, **options):
        calls.append((path, split, options))
        return hub_rows if split else datasets.DatasetDict({"train": hub_rows, "test": hub_rows})

    monkeypatch.setattr(data.datasets, "load_dataset", fake_load_dataset)
    dataset = load_preferences("Anthropic/hh-rlhf", "test", data_dir="harmless-base")
    assert calls == [("Anthropic/hh-rlhf", "test", {"data_dir": "harmless-base"})]
    assert dataset[0]["prompt"] == "\n\nHuman: q\n\nAssistant:"
    with pytest.raises(ValueError, match="has the splits train, test; choose one"):
        load_preferences("Anthropic/hh-rlhf")


# ---------------------------------------------------------------------------------------------
# Held-out split


def small_dataset(size: int = 50) -> datasets.Dataset:
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(size)]
    return datasets.Dataset.from_list(parse_preference_records(rows, ["prompt", "chosen", "rejected"]).rows)


def test_split_heldout_is_exact_disjoint_and_order_independent():
    dataset = small_dataset(50)
    training, heldout = split_heldout(dataset, 0.2, seed=3)
    assert (len(training), len(heldout)) == (40, 10)
    assert set(training["pair_id"]).isdisjoint(heldout["pair_id"])
    assert set(training["pair_id"]) | set(heldout["pair_id"]) == set(dataset["pair_id"])
    # Row order within each part follows the dataset.
    positions = {pair_id: position for position, pair_id in enumerate(dataset["pair_id"])}
    assert [positions[pair_id] for pair_id in heldout["pair_id"]] == sorted(
        positions[p] for p in heldout["pair_id"]
    )

    _, heldout_again = split_heldout(dataset.shuffle(seed=11), 0.2, seed=3)
    assert set(heldout_again["pair_id"]) == set(heldout["pair_id"])
    _, other_seed = split_heldout(dataset, 0.2, seed=4)
    assert set(other_seed["pair_id"]) != set(heldout["pair_id"])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.1"])
def test_split_heldout_rejects_a_bad_fraction(fraction):
    with pytest.raises(ValueError, match="held-out fraction"):
        split_heldout(small_dataset(5), fraction, seed=0)


# ---------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_written_files_load_back_unchanged(tmp_path, suffix):
    rows = [
        {
            "prompt": [user(f"q{i}")],
            "chosen": [assistant(f"a{i}")],
            "rejected": [assistant(f"b{i}")],
            "score_chosen": 1.5,
            "score_rejected": 0.5,
        }
        for i in range(4)
    ]
    dataset = datasets.Dataset.from_list(
        parse_preference_records(rows, ["prompt", "chosen", "rejected"]).rows
    )
    path = tmp_path / f"pairs{suffix}"
    write_preferences(dataset, path)
    first_bytes = path.read_bytes()
    write_preferences(dataset, path)
    assert path.read_bytes() == first_bytes
    assert load_preferences(path).to_list() == dataset.to_list()


def test_writing_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must end with one of .jsonl, .parquet"):
        write_preferences(small_dataset(2), tmp_path / "pairs.csv")
