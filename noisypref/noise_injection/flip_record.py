"""The flip record: which pairs a noise model flipped (``flips.csv`` and its summary), kept apart from
the noisy dataset. Evaluation reads it; training never does (DESIGN.md §1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class FlipRecord:
    """Which pairs a noise model flipped. Written beside a noisy dataset; read by evaluation only,
    never by training (but for the oracle reference, whose training data leaves the flipped pairs out:
    ``noisypref.benchmark.run.prepare.training_pairs``)."""

    model: str
    options: dict[str, Any]
    seed: int
    target_rate: float
    table: pd.DataFrame  # pair_id, is_flipped, flip_probability (NaN where the model has none)
    identical_pairs: int  # pairs whose chosen equals rejected: flipping them changes nothing

    @property
    def num_pairs(self) -> int:
        return len(self.table)

    @property
    def num_flipped(self) -> int:
        return int(self.table["is_flipped"].sum())

    @property
    def realised_rate(self) -> float:
        return self.num_flipped / self.num_pairs

    def flipped_pair_ids(self) -> set[str]:
        return set(self.table.loc[self.table["is_flipped"], "pair_id"])

    def summary(self) -> dict[str, Any]:
        """Everything but the per-pair table, as JSON-ready values."""
        return {
            "model": self.model,
            "options": self.options,
            "seed": self.seed,
            "target_rate": self.target_rate,
            "num_pairs": self.num_pairs,
            "num_flipped": self.num_flipped,
            "realised_rate": self.realised_rate,
            "identical_pairs": self.identical_pairs,
        }

    def to_csv(self, path: str | Path) -> None:
        """Write the per-pair table (pair_id, is_flipped, flip_probability) in dataset row order."""
        self.table.to_csv(path, index=False, lineterminator="\n")

    @classmethod
    def read(cls, table_path: str | Path) -> FlipRecord:
        """The record written as ``flips.csv``, with its summary from the file beside it: ``flips.json``
        (``noisypref noise``) or a run's ``result.json`` (its ``noise`` section). Raises
        ``ValueError`` naming the file when a column is missing or the table disagrees with its summary."""
        table_path = Path(table_path)
        summary, summary_path = _flip_summary_beside(table_path)
        table = pd.read_csv(table_path, dtype={"pair_id": str}, keep_default_na=False, na_values=[""])
        missing = [name for name in FLIP_TABLE_COLUMNS if name not in table.columns]
        if missing:
            raise ValueError(f"{table_path}: missing column(s) {missing}; a flip table has {list(FLIP_TABLE_COLUMNS)}")
        if table["is_flipped"].dtype != bool:
            raise ValueError(f"{table_path}: is_flipped must hold True/False only")
        table["flip_probability"] = table["flip_probability"].astype(float)
        record = cls(
            model=summary["model"],
            options=dict(summary["options"]),
            seed=int(summary["seed"]),
            target_rate=float(summary["target_rate"]),
            table=table[list(FLIP_TABLE_COLUMNS)],
            identical_pairs=int(summary["identical_pairs"]),
        )
        if (record.num_pairs, record.num_flipped) != (summary["num_pairs"], summary["num_flipped"]):
            raise ValueError(
                f"{table_path} has {record.num_pairs} pairs, {record.num_flipped} flipped; {summary_path} says "
                f"{summary['num_pairs']} pairs, {summary['num_flipped']} flipped: the files do not belong together"
            )
        return record


FLIP_TABLE_COLUMNS = ("pair_id", "is_flipped", "flip_probability")


def _flip_summary_beside(table_path: Path) -> tuple[dict[str, Any], Path]:
    for name, section in (("flips.json", None), ("result.json", "noise")):
        path = table_path.with_name(name)
        if path.is_file():
            summary = json.loads(path.read_text(encoding="utf-8"))
            summary = summary[section] if section else summary
            return summary, path
    raise ValueError(
        f"{table_path}: no flips.json (written by `noisypref noise`) or result.json (a finished run) beside "
        "it to say which noise model, rate and seed made it"
    )
