"""The cleaning record: what a judge made of a noisy dataset, per pair (``cleaning.csv`` and its summary)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

RECORD_COLUMNS = ("pair_id", "score", "flagged", "action")


@dataclass(frozen=True)
class CleaningRecord:
    """What a judge made of a noisy dataset: per pair its score, whether it was flagged and what was done.
    Written beside a run as ``cleaning.csv`` (+ the summary in ``result.json``'s ``cleaning``)."""

    judge: str
    options: dict[str, Any]
    treatment: str
    budget: str | dict[str, float]
    seed: int
    estimated_rate: float
    table: pd.DataFrame  # pair_id, score, flagged, action ("keep", "remove" or "flip")

    @property
    def num_pairs(self) -> int:
        return len(self.table)

    @property
    def num_flagged(self) -> int:
        return int(self.table["flagged"].sum())

    @property
    def num_left(self) -> int:
        """Pairs the cleaned dataset holds."""
        return int((self.table["action"] != "remove").sum())

    def summary(self) -> dict[str, Any]:
        """Everything but the per-pair table, as JSON-ready values."""
        return {
            "judge": self.judge,
            "options": self.options,
            "treatment": self.treatment,
            "budget": self.budget,
            "seed": self.seed,
            "estimated_rate": self.estimated_rate,
            "num_pairs": self.num_pairs,
            "num_flagged": self.num_flagged,
            "num_left": self.num_left,
        }

    def to_csv(self, path: str | Path) -> None:
        """The per-pair table in dataset row order (scores written to 17 significant digits)."""
        self.table.to_csv(path, index=False, lineterminator="\n", float_format="%.17g")

    def write(self, folder: str | Path) -> None:
        """``cleaning.csv`` and ``cleaning.json`` (the summary) in ``folder``."""
        folder = Path(folder)
        self.to_csv(folder / CLEANING_TABLE_NAME)
        (folder / CLEANING_SUMMARY_NAME).write_text(
            json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8"
        )

    @classmethod
    def read(cls, folder: str | Path) -> CleaningRecord:
        """The record `write` left in ``folder``; ``ValueError`` naming the file when it is malformed."""
        folder = Path(folder)
        table_path, summary_path = folder / CLEANING_TABLE_NAME, folder / CLEANING_SUMMARY_NAME
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        table = pd.read_csv(table_path, dtype={"pair_id": str, "action": str}, keep_default_na=False)
        missing = [name for name in RECORD_COLUMNS if name not in table.columns]
        if missing:
            raise ValueError(
                f"{table_path}: missing column(s) {missing}; a cleaning table has {list(RECORD_COLUMNS)}"
            )
        if table["flagged"].dtype != bool:
            raise ValueError(f"{table_path}: flagged must hold True/False only")
        table["score"] = table["score"].astype(float)
        record = cls(
            judge=summary["judge"],
            options=dict(summary["options"]),
            treatment=summary["treatment"],
            budget=summary["budget"],
            seed=int(summary["seed"]),
            estimated_rate=float(summary["estimated_rate"]),
            table=table[list(RECORD_COLUMNS)],
        )
        if (record.num_pairs, record.num_flagged) != (summary["num_pairs"], summary["num_flagged"]):
            raise ValueError(f"{table_path} and {summary_path} disagree on the number of pairs or flags")
        return record


CLEANING_TABLE_NAME = "cleaning.csv"
CLEANING_SUMMARY_NAME = "cleaning.json"
