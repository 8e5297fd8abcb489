"""Settings sections: frozen dataclasses whose fields carry their default and their check.

A section subclasses `Section` and declares each field with `setting(default, check)` (the checks of
`noisypref.checks`); building one checks every field, so a section is valid wherever it comes from: a
study file, a run config or Python. `load_settings` fills one from a YAML mapping and puts every
problem into an `ErrorList` with its field path, so a study file's mistakes are all reported at once.
`run_id_section` and `settings_dict` give a section's plain form (a run config's, a resolved study's).

Standard library and `noisypref.checks` only: the benchmark's configuration and the reports (which
never import the benchmark or torch) both build on it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from noisypref.checks import Check, Invalid, show

SettingsT = TypeVar("SettingsT")


# ---------------------------------------------------------------------------------------------
# Sections


def setting(default: Any, check: Check, *, since: str | None = None, omitted_when_none: bool = False) -> Any:
    """A settings-dataclass field: its default and the check a value must pass.

    ``since``: the version that added the field. A run's id leaves such a field out while it is at
    its default, so the runs of studies written before it keep their ids (`run_id_section`).
    ``omitted_when_none``: a nested section that is off while None (a benchmark not run) is left out
    of the plain form, so a section of such fields that are all off is ``{}``.
    """
    metadata: dict[str, Any] = {"check": check}
    if since is not None:
        metadata["since"] = since
    if omitted_when_none:
        metadata["omitted_when_none"] = True
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


def nested_section(section_type: type[Section], described_as: str) -> Check:
    """The check of a field holding a nested section or null: a mapping becomes ``section_type``
    (every default filled in), its fields' problems reported under the outer field; ``described_as``
    says what else is allowed."""

    def check(value: Any) -> Any:
        if value is None or isinstance(value, section_type):
            return value
        if not isinstance(value, Mapping):
            raise Invalid(described_as)
        try:
            return section_type.from_dict(value)
        except SettingsError as error:
            raise Invalid(f"valid {section_type.section} settings", error.problems) from None
        except ValueError as error:
            raise Invalid(f"valid {section_type.section} settings ({error})") from None

    return check


def _required_fields(settings_type: type) -> list[str]:
    return [
        settings_field.name
        for settings_field in dataclasses.fields(settings_type)  # type: ignore[arg-type]
        if settings_field.default is dataclasses.MISSING and settings_field.default_factory is dataclasses.MISSING
    ]


def _field_default(settings_field: dataclasses.Field) -> Any:
    if settings_field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return settings_field.default_factory()  # type: ignore[misc]
    return settings_field.default


def from_known_keys(cls: type[SettingsT], values: Mapping[str, Any], section: str) -> SettingsT:
    """``cls(**values)``; a key that is not one of ``cls``'s fields raises ``ValueError`` naming
    ``section``, the unknown keys and the allowed ones."""
    known = {settings_field.name for settings_field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# Plain forms


def run_id_section(settings: Any) -> Any:
    """A section as plain data for a run config, leaving out each field marked ``since`` that is at
    its default (the generalised rule that keeps older runs' ids); nested sections alike."""
    return _plain(settings, leave_out_since=True)


def settings_dict(settings: Any) -> dict[str, Any]:
    """A section as plain data with every field (a resolved study file's form); nested sections alike."""
    return _plain(settings, leave_out_since=False)


def _plain(value: Any, *, leave_out_since: bool) -> Any:
    """Dataclasses become dicts of their fields (less a field marked ``omitted_when_none`` that is None
    and, with ``leave_out_since``, one marked ``since`` at its default), at any depth."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        values = {}
        for settings_field in dataclasses.fields(value):
            item = getattr(value, settings_field.name)
            if item is None and settings_field.metadata.get("omitted_when_none"):
                continue
            if leave_out_since and "since" in settings_field.metadata and item == _field_default(settings_field):
                continue
            values[settings_field.name] = _plain(item, leave_out_since=leave_out_since)
        return values
    if isinstance(value, dict):
        return {key: _plain(item, leave_out_since=leave_out_since) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, leave_out_since=leave_out_since) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item, leave_out_since=leave_out_since) for item in value)
    return copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------
# A study file's sections: every problem collected with its field path


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
