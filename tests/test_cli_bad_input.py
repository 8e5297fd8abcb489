"""Bad input, through the command line: malformed data files and hub rows, study files, flags, noise
options and method hyperparameters. Each mistake ends with one message naming the file, field or row,
the value and what is allowed, and exit status 2; a traceback would be an internal bug.

Property-based: hypothesis generates the malformed rows and configs (few examples each, so the file
runs in well under a minute); a handful of hand-written cases cover file-system mistakes.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from pathlib import Path

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from noisypref.benchmark.data.loaders import load_preferences
from noisypref.cli import main
from noisypref.methods import available_methods, hyperparameter_defaults
from noisypref.noise_injection import NOISE_MODELS

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------------------------
# Running the command line


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `noisypref ARGV`, run in this process."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse: usage and a one-line error
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    if currently_in_test_context():
        event(f"exit status {status}")
    return status, out, err


def assert_user_error(status: int, err: str, *names: object) -> None:
    """Exit status 2 and one message (no blank line in it) naming each of `names`."""
    assert status == 2, err
    assert "error:" in err and "\n\n" not in err.strip(), err
    for name in names:
        assert str(name) in err, (name, err)


# ---------------------------------------------------------------------------------------------
# Dataset files and hub rows

TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "\t\n  ", "\u2028 line separator", "nul\x00", "é ü 日本"]),
)
MESSAGE = st.dictionaries(st.sampled_from(["role", "content", "from", "value"]), st.one_of(TEXT, st.none()))
VALUE = st.one_of(
    st.none(),
    TEXT,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.one_of(TEXT, st.none(), MESSAGE), max_size=3),
    MESSAGE,
)
FIELDS = (
    "prompt",
    "chosen",
    "rejected",
    "pair_id",
    "score_chosen",
    "score_rejected",
    "conversations",
    "source",
)
MALFORMED_ROW = st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=6)
PLAIN_ROW = st.fixed_dictionaries({"prompt": TEXT, "chosen": TEXT, "rejected": TEXT})
NOT_AN_OBJECT = st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2), TEXT)


@st.composite
def malformed_rows(draw: st.DrawFn) -> list:
    rows = draw(st.lists(st.one_of(PLAIN_ROW, MALFORMED_ROW, NOT_AN_OBJECT), max_size=8))
    objects = [row for row in rows if isinstance(row, dict)]
    if objects and draw(st.booleans()):  # an exact duplicate
        rows.append(copy.deepcopy(draw(st.sampled_from(objects))))
    if objects and draw(st.booleans()):  # chosen equal to rejected
        row = draw(st.sampled_from(objects))
        row["rejected"] = row.get("chosen")
    return rows


def write_rows(path: Path, rows: list, corruption: tuple[int, bytes] | None = None) -> None:
    """Rows as JSON lines, a JSON array or gzip-ed JSON lines (by the suffix), optionally with bytes
    spliced in (invalid UTF-8, broken JSON)."""
    if path.name.endswith(".json"):
        content = json.dumps(rows).encode()
    else:
        content = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    if corruption is not None:
        position, junk = corruption
        position %= len(content) + 1
        content = content[:position] + junk + content[position:]
    path.write_bytes(gzip.compress(content, mtime=0) if path.name.endswith(".gz") else content)


def noise_cli(capsys, data: object, out: Path, *flags: object) -> tuple[int, str, str]:
    """`noisypref noise` into `out`, overwriting an earlier example's output (--force)."""
    return cli(
        capsys, "noise", "--data", data, "--model", "symmetric", "--rate", "0.4", "--out", out, "--force", *flags
    )


def assert_noise_succeeded_or_named(status: int, err: str, data: object, out: Path) -> None:
    """Either the noisy data was written and reads back pair for pair, or the message names the data."""
    if status != 0:
        assert_user_error(status, err, data)
        return
    noisy = load_preferences(out / "noisy.jsonl")
    flips = (out / "flips.csv").read_text().splitlines()[1:]
    assert list(noisy["pair_id"]) == [line.rsplit(",", 2)[0].strip('"') for line in flips]


@FUZZ
@given(
    rows=malformed_rows(),
    suffix=st.sampled_from([".jsonl", ".json", ".jsonl.gz"]),
    corruption=st.one_of(
        st.none(), st.tuples(st.integers(0, 10**6), st.sampled_from([b"\xff", b"\xc3", b"\x00", b"{", b'"']))
    ),
)
def test_malformed_data_files_give_a_message_naming_the_file(tmp_path, capsys, rows, suffix, corruption):
    data = tmp_path / f"pairs{suffix}"
    write_rows(data, rows, corruption)
    out = tmp_path / "out"
    status, _, err = noise_cli(capsys, data, out)
    assert_noise_succeeded_or_named(status, err, data, out)


HUB_TEXT = st.one_of(st.none(), TEXT)


@FUZZ
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"prompt": HUB_TEXT, "chosen": HUB_TEXT, "rejected": HUB_TEXT},
            optional={"pair_id": st.sampled_from([None, "", "a", "b", "c"])},
        ),
        max_size=8,
    ),
)
def test_malformed_hub_rows_give_a_message_naming_the_dataset(tmp_path, capsys, monkeypatch, rows):
    columns = {name: [row.get(name) for row in rows] for name in ("prompt", "chosen", "rejected")}
    if any("pair_id" in row for row in rows):
        columns["pair_id"] = [row.get("pair_id") for row in rows]
    hub_rows = datasets.Dataset.from_dict(columns)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub_rows)
    out = tmp_path / "out"
    status, _, err = noise_cli(capsys, "someone/preferences", out, "--split", "train")
    assert_noise_succeeded_or_named(status, err, "someone/preferences", out)


def test_enormous_blank_and_identical_texts_are_kept_and_reported(tmp_path, capsys):
    enormous = "word " * 1_000_000
    rows = [
        {"prompt": "p", "chosen": enormous, "rejected": "short"},
        {"prompt": "p", "chosen": "   ", "rejected": ""},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
    ]
    data, out = tmp_path / "pairs.jsonl", tmp_path / "out"
    write_rows(data, rows)
    status, stdout, err = noise_cli(capsys, data, out)
    assert status == 0, err
    assert "1 pair(s) have chosen equal to rejected" in stdout
    noisy = load_preferences(out / "noisy.jsonl")
    assert sorted(map(len, [*noisy["chosen"], *noisy["rejected"]])) == [0, 3, 4, 4, 5, len(enormous)]


def test_a_hub_dataset_that_cannot_be_loaded_is_named(tmp_path, capsys, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/missing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    status, _, err = noise_cli(capsys, "someone/missing", tmp_path / "out")
    assert_user_error(status, err, "'someone/missing'", "Couldn't reach")


def test_file_system_mistakes_name_the_path(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    write_rows(data, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    not_parquet = tmp_path / "pairs.parquet"
    not_parquet.write_text("not parquet")

    assert_user_error(*noise_cli(capsys, folder, tmp_path / "o1")[::2], folder, "folder")
    assert_user_error(*noise_cli(capsys, not_parquet, tmp_path / "o2")[::2], not_parquet)
    assert_user_error(*noise_cli(capsys, data, a_file / "sub")[::2], a_file / "sub", "--out")
    assert_user_error(*noise_cli(capsys, data, a_file)[::2], a_file, "not a folder")
    assert_user_error(*noise_cli(capsys, tmp_path / "missing.jsonl", tmp_path / "o3")[::2], "missing.jsonl")
    assert not list(tmp_path.glob("o*/*"))  # nothing written


# ---------------------------------------------------------------------------------------------
# Flags, noise options


FLAG_TEXT = st.one_of(
    st.text(max_size=12), st.sampled_from(["nan", "inf", "-1", "1e400", "0.5", "[1, 2]", "{}", "null"])
)


@FUZZ
@given(
    flag=st.sampled_from(["--rate", "--seed", "--model", "--format", "--split"]),
    value=FLAG_TEXT,
)
def test_bad_noise_flags_are_named(tmp_path, capsys, flag, value):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "out"
    write_rows(data, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    argv = {"--data": data, "--model": "symmetric", "--rate": "0.4", "--out": out, flag: value}
    status, _, err = cli(capsys, "noise", *[f"{name}={text}" for name, text in argv.items()])
    if status != 0:
        assert_user_error(status, err, flag if flag != "--split" else data)


@FUZZ
@given(
    model=st.sampled_from(sorted(NOISE_MODELS)),
    option=st.one_of(
        st.sampled_from(["mode", "accuracy", "panel_size", "temperature", "strength"]),
        st.text(alphabet="abcdefgh_", max_size=8),
    ),
    value=FLAG_TEXT,
)
def test_bad_noise_options_are_named(tmp_path, capsys, model, option, value):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "out"
    rows = [
        {"prompt": "p", "chosen": f"a{i}", "rejected": "b", "score_chosen": i, "score_rejected": 0}
        for i in range(4)
    ]
    write_rows(data, rows)
    status, _, err = cli(
        capsys,
        "noise",
        "--data",
        data,
        "--model",
        model,
        "--rate",
        "0.5",
        "--out",
        out,
        f"--option={option}={value}",
    )
    if status != 0:
        assert_user_error(status, err)
        assert option in err or "--option" in err, err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["run", "--workers", "0"], "--workers"),
        (["run", "--workers", "two"], "--workers"),
        (["run", "--devices", "gpu0"], "--devices"),
        (["run", "--run-id", "000000000000"], "000000000000"),
        (["run", "--emit-jobs", "--run-id", "x"], "--run-id"),
        (["noise", "--data", "x.jsonl"], "--model"),
        (["validate", "--count", "--bogus"], "--bogus"),
        (["status", "no/such/folder"], "no/such/folder"),
        (["collect", "no/such/folder"], "no/such/folder"),
    ],
)
def test_bad_flags_are_named(tmp_path, capsys, monkeypatch, argv, named):
    monkeypatch.chdir(tmp_path)
    assert_user_error(*cli(capsys, *argv)[::2], named)


# ---------------------------------------------------------------------------------------------
# Study files and method hyperparameters

STUDY = {
    "name": "fuzz",
    "datasets": [{"kind": "testbed", "testbed": {"num_train_pairs": 64}, "max_pairs": 32}],
    "noise": [
        {"model": "symmetric", "rates": [0, 0.2], "options": {"mode": "exact"}},
        {"model": "annotators", "rates": [0.3], "options": {"accuracy": [0.9, 0.8, 0.7]}},
    ],
    "methods": [
        {"name": "dpo", "hyperparameters": {"beta": 0.1}},
        {"label": "gdpo", "name": "gamma_dpo", "hyperparameters": {"tau": [1, 3]}, "training": {"steps": 5}},
    ],
    "seeds": [0, 1],
    "models": [{"name": "testbed", "dtype": "float32"}],
    "training": {"steps": 10, "batch_size": 8, "max_length": 64, "max_prompt_length": 32},
    "evaluation": {"num_eval_prompts": 8},
}
JUNK = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.sampled_from(["", "   ", "x" * 5000, "1e-3", "nan", "testbed", "symmetric", "dpo"]),
    st.integers(-(10**6), 10**6),  # and extremes (not mid-sized ones a method might allocate)
    st.sampled_from([-(10**30), 10**30, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def field_paths(value: object, path: str = "") -> list[str]:
    """Every field path of a study, in the notation of the error messages: noise[0].options.mode."""
    children = (
        [(f"{path}.{key}" if path else key, item) for key, item in value.items()]
        if isinstance(value, dict)
        else [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        if isinstance(value, list)
        else []
    )
    return [child for child_path, item in children for child in [child_path, *field_paths(item, child_path)]]


def mutate(study: dict, path: str, action: str, junk: object) -> dict:
    study = copy.deepcopy(study)
    *parents, last = re.findall(r"[^.\[\]]+", path)
    container = study
    for part in parents:
        container = container[int(part)] if isinstance(container, list) else container[part]
    key = int(last) if isinstance(container, list) else last
    if action == "replace":
        container[key] = junk
    elif action == "delete":
        del container[key]
    elif isinstance(container, dict):
        container[f"{last}_typo"] = junk
    return study


def write_study(path: Path, study: object) -> Path:
    path.write_text(yaml.safe_dump(study, allow_unicode=True))
    return path


@FUZZ
@given(
    path=st.sampled_from(field_paths(STUDY)),
    action=st.sampled_from(["replace", "replace", "delete", "unknown key"]),
    junk=JUNK,
)
def test_malformed_study_files_name_the_file_and_field(tmp_path, capsys, path, action, junk):
    study_file = write_study(tmp_path / "study.yaml", mutate(STUDY, path, action, junk))
    status, _, err = cli(capsys, "validate", "--count", study_file)
    if status != 0:
        assert_user_error(status, err, study_file, re.split(r"[.\[]", path)[0])


@FUZZ
@given(
    method=st.sampled_from(available_methods()),
    data=st.data(),
    junk=JUNK,
)
def test_bad_method_hyperparameters_name_the_field(tmp_path, capsys, method, data, junk):
    hyperparameter = data.draw(st.sampled_from([*hyperparameter_defaults(method), "not_a_hyperparameter"]))
    study = {**STUDY, "methods": [{"name": method, "hyperparameters": {hyperparameter: junk}}]}
    status, _, err = cli(capsys, "validate", "--count", write_study(tmp_path / "study.yaml", study))
    if status != 0:
        assert_user_error(status, err, f"methods[0].hyperparameters.{hyperparameter}")


@FUZZ
@given(content=st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_study_files_that_are_not_yaml_mappings_are_named(tmp_path, capsys, content):
    study_file = tmp_path / "study.yaml"
    study_file.write_bytes(content if isinstance(content, bytes) else content.encode())
    status, _, err = cli(capsys, "validate", study_file)
    assert_user_error(status, err, study_file)


def test_bad_study_and_data_files_stop_run_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", "noisypref.no_such_module:execute")  # never reached
    valid = write_study(tmp_path / "valid.yaml", STUDY)
    duplicate_key = tmp_path / "duplicate.yaml"
    duplicate_key.write_text("name: a\nname: b\n")
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("name: caf\xe9\n".encode("latin-1"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    bad_data = tmp_path / "pairs.jsonl"
    bad_data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": \n')
    file_study = write_study(
        tmp_path / "file.yaml",
        {
            **STUDY,
            "datasets": [{"kind": "file", "source": str(bad_data)}],
            "models": [{"name": "some/model"}],
        },
    )
    invalid = write_study(tmp_path / "invalid.yaml", mutate(STUDY, "noise[0].rates[1]", "replace", 1.5))

    assert_user_error(*cli(capsys, "run", duplicate_key)[::2], duplicate_key, "found the key 'name' twice")
    assert_user_error(*cli(capsys, "run", not_utf8)[::2], not_utf8, "UTF-8")
    assert_user_error(*cli(capsys, "run", tmp_path)[::2], tmp_path, "Is a directory")
    assert_user_error(*cli(capsys, "run", a_file / "study.yaml")[::2], a_file / "study.yaml")
    assert_user_error(*cli(capsys, "run", invalid)[::2], invalid, "noise[0].rates[1] = 1.5")
    assert_user_error(*cli(capsys, "run", file_study)[::2], file_study, "datasets[0]", f"{bad_data}, line 2")
    assert_user_error(*cli(capsys, "validate", file_study)[::2], file_study, f"{bad_data}, line 2")
    assert_user_error(*cli(capsys, "run", valid, "--out", a_file / "out")[::2], a_file / "out", "--out")
    assert_user_error(*cli(capsys, "run", valid, "--cache-dir", a_file)[::2], a_file, "--cache-dir")
    assert not list(tmp_path.glob("runs/*/*"))  # nothing run


def test_flex_attention_on_the_cpu_is_refused_before_any_work(tmp_path) -> None:
    from noisypref.benchmark.config.run_config import default_run_config
    from noisypref.benchmark.run.execute import execute_run

    config = default_run_config()
    config["model"]["attn_implementation"] = "flex_attention"
    with pytest.raises(ValueError, match=r"model\.attn_implementation = 'flex_attention' trains on CUDA only"):
        execute_run(config, tmp_path / "run", tmp_path / "cache", device="cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"preference": 1},\n{"preference": ', r"bad\.json: not valid JSON at line 2, column 16"),
        ('{"preference": 1}', r"bad\.json: expected a JSON array of objects"),
    ],
)
def test_malformed_annotation_files_are_named_with_the_place(tmp_path, capsys, content, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    status, _, err = cli(capsys, "alpacaeval", "--annotations", path)
    assert status == 2
    assert re.search(message, err), err
