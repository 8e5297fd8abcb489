"""The one family of value checks, typed settings sections and collected errors (studies, run configs, engine).

A *check* is a function that returns the accepted (possibly normalised) value or raises `Invalid`
saying what is allowed. Settings sections are frozen dataclasses whose fields carry their check
(`setting(default, check)`); `load_settings` fills them from a YAML mapping. Every problem goes
into an `ErrorList` with its field path, so a study file's mistakes are all reported at once.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
import numbers
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

Check = Callable[[Any], Any]
SettingsT = TypeVar("SettingsT")

SHOWN_VALUE_CHARACTERS = 80


class Invalid(Exception):
    """Raised by a check; `expected` completes the sentence "expected ...". A check of a nested
    section gives its own ``problems`` (field, value, expected), reported under the outer field."""

    def __init__(self, expected: str, problems: Sequence[tuple[str, Any, str]] = ()):
        super().__init__(expected)
        self.expected = expected
        self.problems = list(problems)


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
    """A value as it would appear in a message: repr, shortened. A large or deep value (a list of a
    million items, a mapping nested a thousand levels) is rendered in bounded time and memory."""
    text = repr(value) if _is_small(value) else _BOUNDED_REPR.repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARACTERS else text[: SHOWN_VALUE_CHARACTERS - 3] + "..."


def _bounded_repr() -> reprlib.Repr:
    bounded = reprlib.Repr()
    bounded.maxlevel = 3
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = bounded.maxset = bounded.maxfrozenset = 8
    bounded.maxstring = bounded.maxother = bounded.maxlong = SHOWN_VALUE_CHARACTERS
    return bounded


_BOUNDED_REPR = _bounded_repr()


def _is_small(value: Any) -> bool:
    """Whether ``value`` holds at most SHOWN_VALUE_CHARACTERS items and strings of modest length,
    at every depth together (its full repr is then cheap); stops counting as soon as it is not."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > SHOWN_VALUE_CHARACTERS or (isinstance(item, str) and len(item) > 10 * SHOWN_VALUE_CHARACTERS):
            return False
        if isinstance(item, Mapping):
            pending.extend(itertools.islice(item.items(), SHOWN_VALUE_CHARACTERS + 1))
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(itertools.islice(item, SHOWN_VALUE_CHARACTERS + 1))
    return True


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


def setting(default: Any, check: Check, *, since: str | None = None) -> Any:
    """A settings-dataclass field: its default and the check a value must pass.

    ``since``: the version that added the field. A run's id leaves such a field out while it is at
    its default, so the runs of studies written before it keep their ids (`run_id_section`).
    """
    metadata = {"check": check} if since is None else {"check": check, "since": since}
    if isinstance(default, (dict, list)):  # a fresh copy per instance
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class SettingsError(ValueError):
    """A settings section built with values that fail their checks; ``problems`` holds
    (field, value, expected) for each."""

    def __init__(self, section: str, problems: Sequence[tuple[str, Any, str]]):
        self.section = section
        self.problems = list(problems)
        super().__init__(
            "; ".join(f"{section}.{name} = {show(value)} is invalid: expected {expected}" for name, value, expected in problems)
        )


class Section:
    """Base of a settings section: a frozen dataclass whose fields are `setting(default, check)`.

    Building one runs every field's check (keeping the normalised value, e.g. 3 -> 3.0) and then
    `problems()` (values that cannot work together), so a section is valid wherever it comes from:
    a study file, a run config or Python. Failures raise `SettingsError` naming every field.
    """

    section: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        problems = []
        for settings_field in dataclasses.fields(self):  # type: ignore[arg-type]
            check = settings_field.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, settings_field.name)
            try:
                object.__setattr__(self, settings_field.name, check(value))
            except Invalid as error:
                nested = [(f"{settings_field.name}.{name}", item, expected) for name, item, expected in error.problems]
                problems.extend(nested or [(settings_field.name, value, error.expected)])
        problems = problems or self.problems()
        if problems:
            raise SettingsError(self.section, problems)

    def problems(self) -> list[tuple[str, Any, str]]:
        """(field, value, expected) for combinations of values that cannot work."""
        return []

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str | None = None) -> Any:
        """The section from a mapping (missing keys take their defaults); ``ValueError`` naming the
        unknown keys or the bad fields under ``path`` (default: the section's name)."""
        path = path or cls.section
        names = [settings_field.name for settings_field in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if not isinstance(values, Mapping):
            raise ValueError(f"{path} = {show(values)} is invalid: expected a mapping with keys {', '.join(names)}")
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; allowed keys are {', '.join(names)}")
        for name in _required_fields(cls):
            if name not in values:
                raise ValueError(f"{path}.{name}: missing; it has no default")
        try:
            return cls(**values)
        except SettingsError as error:
            raise SettingsError(path, error.problems) from None


def _required_fields(settings_type: type) -> list[str]:
    return [
        settings_field.name
        for settings_field in dataclasses.fields(settings_type)  # type: ignore[arg-type]
        if settings_field.default is dataclasses.MISSING and settings_field.default_factory is dataclasses.MISSING
    ]


def run_id_section(settings: Any) -> Any:
    """A dataclass as plain data for a run config, leaving out each field marked ``since`` that is at
    its default (the generalised rule that keeps older runs' ids); nested dataclasses alike."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        return copy.deepcopy(settings)
    values = {}
    for settings_field in dataclasses.fields(settings):
        value = getattr(settings, settings_field.name)
        if "since" in settings_field.metadata and value == _field_default(settings_field):
            continue
        values[settings_field.name] = run_id_section(value)
    return values


def _field_default(settings_field: dataclasses.Field) -> Any:
    if settings_field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return settings_field.default_factory()  # type: ignore[misc]
    return settings_field.default


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
    """Fill a settings section from a YAML mapping (missing keys take their defaults).

    Every unknown key, every value failing its field's check and every combination that cannot
    work is reported under ``path``; returns None when there was any problem.
    """
    if raw is None:
        raw = {}
    if not is_mapping(raw, path, errors, "settings"):
        return None
    names = [settings_field.name for settings_field in dataclasses.fields(settings_type)]  # type: ignore[arg-type]
    has_unknown_keys = unknown_keys(raw, names, path, errors)
    missing = [name for name in _required_fields(settings_type) if name not in raw]
    for name in missing:
        errors.message(f"{path}.{name}", "missing; it has no default")
    if missing:
        return None
    try:
        settings = settings_type(**{name: raw[name] for name in names if name in raw})
    except SettingsError as error:
        for name, value, expected in error.problems:
            errors.invalid(f"{path}.{name}", value, expected)
        return None
    return None if has_unknown_keys else settings


def settings_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def from_known_keys(cls: type[SettingsT], values: Mapping[str, Any], section: str) -> SettingsT:
    """``cls(**values)``; a key that is not one of ``cls``'s fields raises ``ValueError`` naming
    ``section``, the unknown keys and the allowed ones."""
    known = {settings_field.name for settings_field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    return cls(**values)
