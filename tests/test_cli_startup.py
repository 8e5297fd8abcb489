"""The command line answers at once (issue 25): `import noisypref.cli`, `noisypref --help`, `--version` and
`noisypref status DIR` import neither torch nor transformers. Each is checked in a fresh interpreter, by
the modules it leaves in ``sys.modules``; how fast they answer is benchmarks/cli_startup.py's to measure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisypref.benchmark.storage import write_json_atomic
from noisypref.benchmark.study import StudyFolder, parse_study, plan_runs

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
STUDY = {
    "name": "light",
    "noise": [{"model": "symmetric", "rates": [0.2]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
}


def heavy_modules_after(code: str) -> list[str]:
    """Runs ``code`` in a fresh interpreter; the heavy modules in sys.modules afterwards."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(name for name in {HEAVY!r} if name in sys.modules))"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()[-1].split()[1:]


def test_the_probe_sees_torch_where_it_is_imported() -> None:
    assert heavy_modules_after("import torch") == ["torch"]


def test_importing_the_command_line_imports_neither_torch_nor_transformers() -> None:
    assert heavy_modules_after("import noisypref.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_help_and_version_import_neither_torch_nor_transformers(argv) -> None:
    code = f"from noisypref.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert heavy_modules_after(code) == []


def test_status_imports_neither_torch_nor_transformers(tmp_path) -> None:
    study = parse_study(STUDY)
    folder = StudyFolder(tmp_path / "study")
    folder.prepare(study)
    done, failed = (run.run_id for run in plan_runs(study)[:2])
    write_json_atomic(folder.run_dir(done) / "result.json", {"status": "succeeded", "metrics": {}})
    write_json_atomic(folder.run_dir(failed) / "failure.json", {"reason": "RuntimeError: it failed"})
    code = f"from noisypref.cli import main\nassert main(['status', '--all', {str(folder.root)!r}]) == 0"
    assert heavy_modules_after(code) == []
