"""Building a settings dataclass from a plain mapping (a YAML section, a run config's section)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_known_keys(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """``cls(**values)``; a key that is not one of ``cls``'s fields raises ``ValueError`` naming
    ``section``, the unknown keys and the allowed ones."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    return cls(**values)
