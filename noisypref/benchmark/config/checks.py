"""The small toolkit study validation is built from: value checks, typed settings, collected errors.

A *check* is a function that returns the accepted (possibly normalised) value or raises `Invalid`
saying what is allowed. Settings sections are frozen dataclasses whose fields carry their check
(`setting(default, check)`); `load_settings` fills them from a YAML mapping. Every problem goes
into an `ErrorList` with its field path, so a study file's mistakes are all reported at once.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

Check = Callable[[Any], Any]
SettingsT = TypeVar("SettingsT")

SHOWN_VALUE_CHARACTERS = 80


class Invalid(Exception):
    """Raised by a check; `expected` completes the sentence "expected ..."."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


class StudyError(ValueError):
    """Everything wrong with a study file, one problem per line of `problems`."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(
            f"{source} is not a valid study ({count}):\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass
class ErrorList:
    """Problems found so far, each naming its field path."""

    problems: list[str] = field(default_factory=list)

    def invalid(self, path: str, value: Any, expected: str) -> None:
        self.problems.append(f"{path} = {show(value)}: expected {expected}")

    def message(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def __len__(self) -> int:
        return len(self.problems)

    def raise_if_any(self, source: str) -> None:
        if self.problems:
            raise StudyError(source, self.problems)


def show(value: Any) -> str:
    """A value as it would appear in a message: repr, shortened."""
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARACTERS else text[: SHOWN_VALUE_CHARACTERS - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Checks


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Check:
    bounds = [f">= {minimum}"] if minimum is not None else []
    bounds += [f"<= {maximum}"] if maximum is not None else []
    expected = "an integer" + (f" {' and '.join(bounds)}" if bounds else "")

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise Invalid(expected)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise Invalid(expected)
        return int(value)

    return check


def number(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> Check:
    """A finite real number in a range, returned as a float (so 1 and 1.0 name the same run)."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        bounds.append(f"{'<' if exclusive_maximum else '<='} {maximum}")
    expected = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")

    def check(value: Any) -> float:
        if isinstance(value, str) and _is_number_text(value):
            raise Invalid(f"{expected}, written without quotes")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise Invalid(expected)
        too_small = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        too_large = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
        if too_small or too_large:
            raise Invalid(expected)
        return float(value)

    return check


def _is_number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def boolean() -> Check:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid("true or false")
        return value

    return check


def text(*, pattern: str | None = None, described_as: str = "a non-empty string") -> Check:
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(described_as)
        if compiled is not None and not compiled.fullmatch(value):
            raise Invalid(described_as)
        return value

    return check


def choice(options: Sequence[str]) -> Check:
    expected = "one of " + ", ".join(map(repr, options))

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise Invalid(expected)
        return value

    return check


def optional(inner: Check) -> Check:
    """`inner`, or null."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner(value)
        except Invalid as error:
            raise Invalid(f"{error.expected}, or null") from None

    return check


# ---------------------------------------------------------------------------------------------
# Mappings and settings sections


def setting(default: Any, check: Check) -> Any:
    """A settings-dataclass field: its default and the check a YAML value must pass."""
    if isinstance(default, (dict, list)):  # a fresh copy per instance
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def is_mapping(value: Any, path: str, errors: ErrorList, what: str) -> bool:
    if isinstance(value, Mapping):
        return True
    errors.invalid(path, value, f"a mapping of {what}")
    return False


def unknown_keys(raw: Mapping[str, Any], allowed: Sequence[str], path: str, errors: ErrorList) -> bool:
    """Report every key of `raw` that is not in `allowed` (with a close match where there is one)."""
    found = False
    for key in raw:
        if key in allowed:
            continue
        found = True
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errors.message(
            f"{path}.{key}" if path else str(key),
            f"unknown key{hint}; allowed keys are {', '.join(allowed)}",
        )
    return found


def load_settings(settings_type: type[SettingsT], raw: Any, path: str, errors: ErrorList) -> SettingsT | None:
    """Fill a settings dataclass from a YAML mapping (missing keys take their defaults).

    Every unknown key and every value failing its field's check is reported; returns None when
    there was any problem.
    """
    if raw is None:
        raw = {}
    if not is_mapping(raw, path, errors, "settings"):
        return None
    fields = dataclasses.fields(settings_type)  # type: ignore[arg-type]
    problems_before = len(errors)
    unknown_keys(raw, [f.name for f in fields], path, errors)
    values = {}
    for settings_field in fields:
        if settings_field.name not in raw:
            continue
        value = raw[settings_field.name]
        try:
            values[settings_field.name] = settings_field.metadata["check"](value)
        except Invalid as error:
            errors.invalid(f"{path}.{settings_field.name}", value, error.expected)
    if len(errors) > problems_before:
        return None
    return settings_type(**values)


def settings_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)
