"""One run of a study as plan.json holds it: plain data, which `noisypref status` reads without importing
the configuration (``noisypref.benchmark.study.grid`` plans the runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from noisypref.folder_layout import NO_CLEANING, NO_NOISE_LABEL, NO_REFERENCE


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its config and where it sits in the grid."""

    run_id: str
    config: dict[str, Any]
    dataset: str  # dataset label
    noise_model: str  # NO_NOISE_LABEL for rate 0
    noise_rate: float
    method: str  # method label
    seed: int
    model: str
    grid_points: int  # how many grid points this run stands for (several for merged rate-0 runs)
    reference: str = NO_REFERENCE  # none (a competitor), clean_only, known_rate or oracle (config.references)
    base_label: str | None = None  # the label of this competitor's own base (`sweeps.base_labels`)
    cleaning: str = NO_CLEANING  # the cleaning entry's label

    @property
    def is_reference(self) -> bool:
        return self.reference != NO_REFERENCE

    def describe(self) -> str:
        noise = (
            "no noise" if self.noise_model == NO_NOISE_LABEL else f"{self.noise_model} {self.noise_rate:g}"
        )
        method = self.method if self.cleaning == NO_CLEANING else f"{self.method} after {self.cleaning}"
        return f"{method} | {self.dataset} | {noise} | seed {self.seed} | {self.model}"
