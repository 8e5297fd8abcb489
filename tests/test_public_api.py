"""The public Python API (issue 25): every name docs/api.md lists is importable from the place it gives.

docs/api.md is the list: one ``## `module` `` heading per place, one table row per name, the name in the
first column. This pins it: a module move that drops a re-export, a rename, or a name listed but never
written fails here, and so does a list that shrinks by accident (``PINNED``).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
HEADING = re.compile(r"^## `([\w.]+)`\s*$")
ROW = re.compile(r"^\| `(\w+)` \|")
OPTIONAL = {"noisypref.integrations.trl": "trl"}  # place -> the extra it needs

# The places and how many names each promises: the list may grow, but not lose a name unnoticed
PINNED = {
    "noisypref": 1,
    "noisypref.methods": 11,
    "noisypref.noise_injection": 8,
    "noisypref.cleaning": 12,
    "noisypref.benchmark.data": 3,
    "noisypref.benchmark.testbed": 6,
    "noisypref.benchmark.config.run_config": 4,
    "noisypref.benchmark.run": 1,
    "noisypref.benchmark.engine.models": 2,
    "noisypref.benchmark.evaluation.generation": 1,
    "noisypref.benchmark.config.benchmarks": 2,
    "noisypref.benchmark.evaluation.alpaca_eval": 6,
    "noisypref.benchmark.evaluation.arena_hard": 4,
    "noisypref.benchmark.study": 16,
    "noisypref.reports": 17,
    "noisypref.integrations.trl": 1,
}


def documented_api() -> dict[str, list[str]]:
    """{place: [name, ...]} as docs/api.md lists them, in order."""
    api: dict[str, list[str]] = {}
    place = None
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        heading = HEADING.match(line)
        if heading:
            place = heading.group(1)
            api[place] = []
        elif place is not None and (row := ROW.match(line)):
            api[place].append(row.group(1))
    return api


API = documented_api()


def test_the_list_holds_every_pinned_place_and_no_name_twice() -> None:
    assert {place: len(names) for place, names in API.items()} == PINNED
    for place, names in API.items():
        assert len(names) == len(set(names)), f"{place}: a name is listed twice"
    # the examples issue 25 names
    assert (
        "load_preferences" in API["noisypref.benchmark.data"] and "inject" in API["noisypref.noise_injection"]
    )
    assert {"build", "PairLogps"} <= set(API["noisypref.methods"]) and "clean" in API["noisypref.cleaning"]
    assert {"TestbedConfig", "build_testbed"} <= set(API["noisypref.benchmark.testbed"])


@pytest.mark.parametrize("place", sorted(PINNED))
def test_every_listed_name_imports_from_its_place(place: str) -> None:
    if place in OPTIONAL:
        pytest.importorskip(OPTIONAL[place], reason=f"{place} needs the {OPTIONAL[place]} extra")
    module = importlib.import_module(place)
    missing = [name for name in API[place] if not hasattr(module, name)]
    assert not missing, f"docs/api.md promises {', '.join(missing)} from {place}: re-export it there"
    exported = getattr(module, "__all__", None)
    if exported is not None:  # `from place import *` gives the promised names too
        assert set(API[place]) - {"__version__"} <= set(exported), f"{place}.__all__ lacks a listed name"


def test_the_examples_of_the_issue_import() -> None:
    from noisypref.benchmark.data import load_preferences
    from noisypref.benchmark.testbed import TestbedConfig, build_testbed
    from noisypref.cleaning import clean
    from noisypref.methods import PairLogps, build
    from noisypref.noise_injection import inject

    assert all(callable(value) for value in (load_preferences, build_testbed, clean, build, inject))
    assert isinstance(TestbedConfig, type) and isinstance(PairLogps, type)


# The imports plugin files copied from the earlier docs (docs/api.md, "Moved or renamed this round"):
# they keep working from their old place, each the one definition of noisypref.checks.
KEPT_IMPORTS = {
    "noisypref.methods.base": {"check_positive": "check_positive", "check_non_negative": "check_non_negative",
                               "check_choice": "check_choice", "check_finite": "check_number"},
    "noisypref.noise_injection.base": {"check_choice": "check_choice", "check_real": "check_number",
                                       "check_integer": "check_integer", "option_field": "option_field"},
    "noisypref.cleaning.base": {"check_choice": "check_choice", "check_positive_number": "check_positive",
                                "option_field": "option_field"},
}  # fmt: skip


@pytest.mark.parametrize("place", sorted(KEPT_IMPORTS))
def test_the_checks_plugins_imported_from_their_old_place_are_the_one_definition(place: str) -> None:
    import noisypref.checks

    module = importlib.import_module(place)
    for old, new in KEPT_IMPORTS[place].items():
        assert getattr(module, old) is getattr(noisypref.checks, new), (place, old)


def test_the_other_kept_imports_behave_as_before() -> None:
    from noisypref.benchmark.config.benchmarks import published_settings
    from noisypref.benchmark.evaluation import generation
    from noisypref.checks import InvalidValue
    from noisypref.cleaning.base import check_positive_integer

    assert generation.published_settings is published_settings
    assert check_positive_integer("folds", 4) == 4
    for value in (0, True, 2.5):  # minimum 1 by default, an integer, not a bool
        with pytest.raises(InvalidValue, match="folds"):
            check_positive_integer("folds", value)
