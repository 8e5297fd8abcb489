"""docs/engine.md's code runs as written (issue 28: it imported `default_run_config` from where it no
longer lives): every ```python block, in order, in one namespace, in a scratch folder."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "engine.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_the_code_of_docs_engine_md_runs(tmp_path, monkeypatch, one_torch_thread) -> None:
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/engine.md has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102  (the documentation's own code)
    metrics = namespace["result"]["metrics"]
    assert 0 <= metrics["heldout_accuracy"] <= 1 and 0 <= metrics["gold_win_rate"] <= 1
    assert (tmp_path / "runs" / "example" / "result.json").is_file()


def test_the_block_finder_reads_fenced_python_only() -> None:
    text = "intro\n```python\na = 1\n```\n```console\n$ b\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]
