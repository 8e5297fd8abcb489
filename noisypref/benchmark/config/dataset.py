"""Where a run's pairs come from: the ``dataset`` section (the testbed, a local file or a hub id)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.sections import TESTBED
from noisypref.benchmark.testbed.config import TestbedConfig
from noisypref.checks import Invalid, choice, integer, number, optional, text
from noisypref.sampling import flip_count
from noisypref.settings import Section, nested_section, setting

DATASET_KINDS = (TESTBED, "file", "hub")
DEFAULT_HELDOUT_FRACTION = 0.1


def _hub_options_check(value: Any) -> dict[str, Any]:
    expected = "a mapping of datasets.load_dataset keyword options, e.g. {data_dir: harmless-base}"
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise Invalid(expected)
    if "split" in value or "path" in value:
        raise Invalid(f"{expected} (the split is the entry's 'split', the dataset its 'source')")
    return json.loads(json.dumps(dict(value)))


@dataclass(frozen=True)
class DatasetSettings(Section):
    """Where the pairs come from (the ``dataset`` section): the testbed, a local file or a hub id."""

    section = "dataset"

    label: str | None = setting(None, optional(text()))  # names the dataset in studies; not part of a run
    kind: str = setting(TESTBED, choice(DATASET_KINDS))
    testbed: TestbedConfig | None = setting(  # kind testbed; None: the defaults
        None, nested_section(TestbedConfig, "a mapping of TestbedConfig fields")
    )
    source: str | None = setting(None, optional(text(described_as="a local file path or a hub dataset id")))
    split: str | None = setting(None, optional(text()))
    heldout_fraction: float = setting(
        DEFAULT_HELDOUT_FRACTION, number(minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
    )
    max_pairs: int | None = setting(None, optional(integer(minimum=1)))
    hub_options: dict[str, Any] = setting({}, _hub_options_check)  # options of datasets.load_dataset, kind hub

    def __post_init__(self) -> None:
        if self.kind == TESTBED and self.testbed is None:
            object.__setattr__(self, "testbed", TestbedConfig())
        super().__post_init__()

    def problems(self) -> list[tuple[str, Any, str]]:
        problems = []
        if self.kind == TESTBED:
            if self.source is not None:
                problems.append(("source", self.source, "nothing for kind 'testbed' (its pairs are generated)"))
        else:
            if self.source is None:
                problems.append(("source", None, f"a {'local file path' if self.kind == 'file' else 'hub dataset id'} for kind {self.kind!r}"))
            if self.testbed is not None:
                problems.append(("testbed", "...", f"nothing for kind {self.kind!r} (testbed settings apply to kind 'testbed')"))
        if self.hub_options and self.kind != "hub":
            problems.append(("hub_options", self.hub_options, "nothing: it applies to kind 'hub' only"))
        return problems

    def pair_counts(
        self, file_pairs: int | None = None, max_heldout_pairs: int | None = None
    ) -> tuple[int, int] | None:
        """(training pairs, held-out pairs) that a run of this dataset gets, as
        `run.prepare.resolve_dataset` takes them: the testbed's sizes, or a file of ``file_pairs``
        pairs split by ``heldout_fraction``; both capped by ``max_pairs`` (the held-out pairs at
        ceil(heldout_fraction * max_pairs) for a file) and the held-out pairs by ``max_heldout_pairs``
        (``evaluation.max_heldout_pairs``). None where the size is not known before loading (a hub
        dataset, or ``file_pairs`` not given)."""
        if self.kind == TESTBED:
            train, heldout = self.testbed.num_train_pairs, self.testbed.num_heldout_pairs
        elif self.kind == "file" and file_pairs is not None:
            heldout = flip_count(self.heldout_fraction, file_pairs)  # split_heldout's count
            train = file_pairs - heldout
            if self.max_pairs is not None:
                heldout = min(heldout, max(1, math.ceil(self.heldout_fraction * self.max_pairs)))
        else:
            return None
        if self.max_pairs is not None:
            train = min(train, self.max_pairs)
        if max_heldout_pairs is not None:
            heldout = min(heldout, max_heldout_pairs)
        return train, heldout

    @property
    def display_label(self) -> str:
        """The label, else: "testbed", a file's stem (data/hh.jsonl.gz: hh), a hub id."""
        if self.label:
            return self.label
        if self.kind == TESTBED:
            return TESTBED
        if self.kind == "file":
            name = Path(str(self.source)).name
            return name.split(".", 1)[0] or name
        return str(self.source)

    def study_dict(self) -> dict[str, Any]:
        """The entry as a resolved study file writes it: the keys its kind uses, every default filled in."""
        keys = ("label", "kind", "testbed", "max_pairs") if self.kind == TESTBED else (
            "label", "kind", "source", "split", "heldout_fraction", "max_pairs", "hub_options"
        )  # fmt: skip
        return {key: value for key, value in self.run_dict(label=True).items() if key in keys}

    def run_dict(self, *, label: bool = False) -> dict[str, Any]:
        """The run config's "dataset" section (the label names the dataset in a study, not the run)."""
        names = [field.name for field in dataclasses.fields(self) if label or field.name != "label"]
        section = {name: getattr(self, name) for name in names}
        section["testbed"] = self.testbed.to_dict() if self.testbed is not None else None
        return json.loads(json.dumps(section))
