"""Run ids are stable: the shipped study files of 0.1 keep the ids their runs had then.

`tests/data/shipped_configs_v0_1/` holds copies of the `configs/*.yaml` of version 0.1 and the run ids
that version computed for them (`run_ids.json`, written by 0.1's `plan_runs`). A setting added since
stays out of a run's id while it is at its default, so finished runs of older studies are found again.
"""

import json
from pathlib import Path

import pytest

from noisypref.benchmark.study import load_study, plan_runs

PINNED = Path(__file__).parent / "data" / "shipped_configs_v0_1"
PINNED_IDS = json.loads((PINNED / "run_ids.json").read_text())


@pytest.mark.parametrize("file_name", sorted(PINNED_IDS))
def test_shipped_study_files_of_0_1_keep_their_run_ids(file_name):
    study = load_study(PINNED / file_name, check_files=False)
    assert [run.run_id for run in plan_runs(study)] == PINNED_IDS[file_name]
