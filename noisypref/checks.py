"""The one family of value checks: what a setting, a hyperparameter or an option may hold.

Standard library only, so every room imports it: `methods` and `noise_injection` (DESIGN.md §1: they
import nothing else of noisypref but the leaf modules), `cleaning`, the settings sections
(`noisypref.settings`) and the rest of the benchmark.

A *check* (`integer`, `number`, `interval`, `boolean`, `text`, `choice`, `optional`) returns the
accepted value, normalised (3 -> 3.0 for a number), or raises `Invalid` completing the sentence
"expected ..."; a bool is never a number. The named forms (`check_positive("beta", value)`, ...) run
one and raise `InvalidValue`: ``beta = 0 is invalid: expected a finite number > 0``. The options of a
registered noise model or judge are built by `make_options`, which words a problem as
``option mode='x' must be one of 'exact', 'bernoulli'``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any], Any]

SHOWN_VALUE_CHARACTERS = 80


class Invalid(Exception):
    """Raised by a check; `expected` completes the sentence "expected ...". A check of a nested
    section gives its own ``problems`` (field, value, expected), reported under the outer field."""

    def __init__(self, expected: str, problems: Sequence[tuple[str, Any, str]] = ()):
        super().__init__(expected)
        self.expected = expected
        self.problems = list(problems)


class InvalidValue(ValueError):
    """A named value that fails its check: ``name = value is invalid: expected ...``."""

    def __init__(self, name: str, value: Any, expected: str):
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(f"{name} = {value!r} is invalid: expected {expected}")

    def __reduce__(self) -> tuple:  # raised in a worker process, it must unpickle in the parent
        return type(self), (self.name, self.value, self.expected)


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
    return _real(
        "a finite number" + (f" {' and '.join(bounds)}" if bounds else ""),
        minimum, maximum, exclusive_minimum, exclusive_maximum,
    )  # fmt: skip


def interval(low: float, high: float, *, high_inclusive: bool = False) -> Check:
    """A number in [low, high) (or [low, high]), said as an interval; returned as a float."""
    return _real(f"a number in [{low}, {high}{']' if high_inclusive else ')'}", low, high, False, not high_inclusive)


def _real(
    expected: str, minimum: float | None, maximum: float | None, exclusive_minimum: bool, exclusive_maximum: bool
) -> Check:
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
# Named values: a hyperparameter, an option, an argument


def check_value(name: str, value: Any, check: Check) -> Any:
    """``check(value)``; `InvalidValue` naming ``name`` where it fails."""
    try:
        return check(value)
    except Invalid as error:
        raise InvalidValue(name, value, error.expected) from None


def check_positive(name: str, value: Any) -> float:
    return check_value(name, value, number(minimum=0, exclusive_minimum=True))


def check_non_negative(name: str, value: Any) -> float:
    return check_value(name, value, number(minimum=0))


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    return check_value(name, value, number(minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum))


def check_in_range(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> float:
    return check_value(name, value, interval(low, high, high_inclusive=high_inclusive))


def check_integer(name: str, value: Any, *, minimum: int | None = None) -> int:
    return check_value(name, value, integer(minimum=minimum))


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    return check_value(name, value, choice(allowed))


def check_bool(name: str, value: Any) -> bool:
    return check_value(name, value, boolean())


# ---------------------------------------------------------------------------------------------
# Options of a registered plugin (a noise model, a cleaning judge): a frozen dataclass whose
# __post_init__ runs the named checks above


def option_field(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line description (``noisypref noise --list``,
    ``noisypref judges``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def option_help(options_type: type) -> list[tuple[str, Any, str]]:
    """(name, default, description) of each option."""
    return [
        (option.name, option.default, option.metadata.get("help", ""))
        for option in dataclasses.fields(options_type)
    ]


def make_options(owner: str, options_type: type, values: Mapping[str, Any]) -> Any:
    """``options_type(**values)``; ``ValueError`` naming ``owner`` (e.g. "noise model 'symmetric'") and
    its options where a key is unknown, or naming the option, its value and what is allowed."""
    allowed = [option.name for option in dataclasses.fields(options_type)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(
            f"{owner} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(allowed) or '(none)'}"
        )
    try:
        return options_type(**values)
    except InvalidValue as error:
        raise ValueError(f"option {error.name}={error.value!r} must be {error.expected}") from None
