"""Study files past the limits of a study file: a YAML alias bomb, lists and mappings nested thousands
of levels deep, a file that contains itself, a file of megabytes, and a name too long for a folder.
Each is refused by `noisypref validate` and `run` with exit status 2 and one message naming the file
(and, where there is one, the line), in well under a second and bounded memory, and nothing is written.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli

from noisypref.benchmark.study import load_study
from noisypref.benchmark.study.yaml_io import MAX_NESTING, MAX_STUDY_FILE_BYTES, MAX_VALUES
from noisypref.checks import SHOWN_VALUE_CHARACTERS, show

VALID_TAIL = "noise: [{model: symmetric, rates: [0.2]}]\nmethods: [{name: dpo}]\n"


def refused_quickly(path: Path) -> str:
    """The message `load_study` refuses `path` with; it must take < 1 s of CPU and < 50 MB at peak."""
    started = time.process_time()
    with pytest.raises(ValueError) as refusal:
        load_study(path)
    assert time.process_time() - started < 1.0
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            load_study(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak
    return str(refusal.value)


def alias_bomb(levels: int = 9, fan_out: int = 9) -> str:
    """`levels` anchors, each a list of `fan_out` aliases of the one before: fan_out**levels values."""
    lines = [f"a0: &a0 [{', '.join(['x'] * fan_out)}]"]
    lines += [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * fan_out)}]" for level in range(1, levels)]
    return "\n".join(lines) + f"\nname: bomb\ndescription: *a{levels - 1}\n" + VALID_TAIL


def test_an_alias_bomb_is_refused_in_well_under_a_second_without_expanding_it(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 1000  # a few hundred bytes standing for 9**9 = 387 million values
    message = refused_quickly(path)
    assert str(path) in message and f"{MAX_VALUES:,} values" in message and "alias" in message
    out = tmp_path / "out"
    for command in (["validate", path], ["run", path, "--out", out, "--cache-dir", tmp_path / "cache"]):
        status, _, err = cli(capsys, *command)
        assert status == 2 and str(path) in err and "expand to more than" in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_aliases_of_ordinary_use_still_read(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "name: aliases\ntraining: &short {steps: 5, batch_size: 8}\nnoise: [{model: symmetric, rates: [0.2]}]\n"
        "methods:\n  - {name: dpo, training: *short}\n  - {name: ipo, training: *short}\n"
    )
    study = load_study(path)
    assert [method.training.steps for method in study.methods] == [5, 5]


@pytest.mark.parametrize(
    "nested",
    [
        "[" * 5000 + "]" * 5000,  # 5,000 nested lists, flow style
        "".join(f"{{k{level}: " for level in range(3000)) + "0" + "}" * 3000,  # 3,000 nested mappings
    ],
    ids=["lists", "mappings"],
)
def test_deep_nesting_is_refused_naming_the_file_and_line_not_a_recursion_error(tmp_path, capsys, nested):
    path = tmp_path / "deep.yaml"
    path.write_text(f"name: deep\n{VALID_TAIL}description: {nested}\n")
    message = refused_quickly(path)
    assert f"{path}, line 4" in message and f"more than {MAX_NESTING} levels" in message
    status, _, err = cli(capsys, "validate", path)
    assert status == 2 and f"{path}, line 4" in err and "RecursionError" not in err


def test_nesting_up_to_the_limit_reads(tmp_path):
    path = tmp_path / "nested.yaml"
    depth = MAX_NESTING - 1  # the top-level mapping is one level
    path.write_text(f"name: nested\n{VALID_TAIL}description: {'[' * depth}0{']' * depth}\n")
    with pytest.raises(ValueError, match=r"description = \[\[\[") as refusal:  # refused by its check, not the reader
        load_study(path)
    assert "a non-empty string" in str(refusal.value)


def test_a_file_that_contains_itself_is_refused(tmp_path, capsys):
    path = tmp_path / "cycle.yaml"
    path.write_text("name: cycle\n" + VALID_TAIL + "description: &loop [1, *loop]\n")
    message = refused_quickly(path)
    assert f"{path}, line 4" in message and "contains it" in message


def test_a_file_of_megabytes_is_refused_before_it_is_read(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\n" + VALID_TAIL + "description: '" + "x" * MAX_STUDY_FILE_BYTES + "'\n")
    status, _, err = cli(capsys, "validate", path)
    assert status == 2 and str(path) in err and f"at most {MAX_STUDY_FILE_BYTES:,} bytes" in err


def test_show_renders_huge_and_deep_values_in_bounded_time():
    bomb: list = ["x"] * 9
    for _ in range(9):
        bomb = [bomb] * 9  # 9**10 leaves through shared references
    deep: list = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    started = time.process_time()
    shown = [show(bomb), show(deep), show(list(range(10**6))), show("y" * 10**7)]
    assert time.process_time() - started < 0.5
    assert all(len(text) <= SHOWN_VALUE_CHARACTERS for text in shown)
    assert shown[0].startswith("[[[") and shown[2].startswith("[0, 1, 2")
    # small values keep their exact repr (dict order included)
    assert show({"b": 1, "a": [1, 2]}) == "{'b': 1, 'a': [1, 2]}"


def test_a_name_too_long_for_a_folder_is_refused_at_load(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    name = "n" * 300
    path.write_text(yaml.safe_dump({"name": name, "noise": [{"model": "symmetric", "rates": [0.2]}], "methods": [{"name": "dpo"}]}))
    out = tmp_path / "out"
    status, _, err = cli(capsys, "run", path, "--out", out, "--cache-dir", tmp_path / "cache")
    assert status == 2, err
    assert f"name = '{name[:20]}" in err and "at most 100" in err and "names a folder" in err
    assert not out.exists()
    path.write_text(path.read_text().replace(name, "n" * 100))
    assert load_study(path).name == "n" * 100
