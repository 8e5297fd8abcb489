"""Every registered method trains in a study on the tiny testbed: 5 steps each, through the CLI in a subprocess.

The CLI (``python -m noisypref run STUDY.yaml --out DIR --workers 1``) is the stable entry point while
the package is restructured. The options that need per-token terms (LD-DPO's ``ld_alpha``, WPO's
``use_weighting``) run too, on DPO and inside a combined method.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from test_study import TINY_TESTBED  # the engine's tiny testbed

from noisypref.methods import available_methods

REPOSITORY = Path(__file__).resolve().parents[1]


def test_every_method_runs_five_steps_in_a_study(tmp_path):
    methods = [{"name": name} for name in available_methods()]
    methods.append(
        {
            "label": "dpo_plus_sft",
            "name": "combined",
            "hyperparameters": {
                "terms": [
                    {"method": "gamma_dpo", "weight": 1.0, "tau": 1.0},
                    {"method": "sft", "weight": 0.5},
                ]
            },
        }
    )
    methods += [
        {"label": "ld_dpo", "name": "dpo", "hyperparameters": {"ld_alpha": 0.5}},
        {"label": "wpo", "name": "dpo", "hyperparameters": {"use_weighting": True}},
        {
            "label": "wpo_ld_ipo_plus_sft",
            "name": "combined",
            "hyperparameters": {
                "terms": [
                    {"method": "ipo", "weight": 1.0, "ld_alpha": 0.0, "use_weighting": True},
                    {"method": "sft", "weight": 0.5},
                ]
            },
        },
    ]
    study = {
        "name": "every_method",
        "datasets": [{"kind": "testbed", "testbed": TINY_TESTBED}],
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": methods,
        "seeds": [0],
        "training": {"steps": 5, "batch_size": 8, "max_length": 16, "max_prompt_length": 4},
        "evaluation": {"num_eval_prompts": 8, "max_new_tokens": 5},
    }
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study), encoding="utf-8")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "noisypref",
            "run",
            str(study_file),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    frame = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["method_name"]) == set(available_methods())
    assert len(frame) == len(methods)
    assert set(frame["status"]) == {"succeeded"}
    assert frame["final_loss"].notna().all()
