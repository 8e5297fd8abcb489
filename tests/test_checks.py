"""The one family of value checks (noisypref.checks) and the plain forms of settings sections (noisypref.settings)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest

from noisypref.checks import (
    InvalidValue,
    check_bool,
    check_choice,
    check_in_range,
    check_integer,
    check_non_negative,
    check_number,
    check_positive,
    integer,
    make_options,
    option_field,
)
from noisypref.settings import Section, nested_section, run_id_section, setting, settings_dict


@pytest.mark.parametrize("check", [check_positive, check_non_negative])
@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, "1", None, [1.0]])
def test_a_number_check_refuses_what_is_not_a_finite_real_number(check, value):
    # A bool is an int in Python; none of these checks takes one (the drift of issue 25 point 3).
    with pytest.raises(InvalidValue, match=r"^beta = .* is invalid: expected a finite number >?=? 0(, written without quotes)?$"):
        check("beta", value)


def test_the_checks_return_the_normalised_value_and_say_what_is_allowed():
    assert check_positive("beta", 2) == 2.0 and isinstance(check_positive("beta", 2), float)
    assert check_non_negative("gamma", 0) == 0.0
    assert check_integer("steps", np.int64(3), minimum=1) == 3
    assert check_choice("mode", "exact", ("exact", "bernoulli")) == "exact"
    assert check_bool("clip", False) is False
    messages = {
        "beta = 0 is invalid: expected a finite number > 0": lambda: check_positive("beta", 0),
        "label_smoothing = 0.5 is invalid: expected a number in [0.0, 0.5)": lambda: check_in_range(
            "label_smoothing", 0.5, 0.0, 0.5
        ),
        "keep = 1.5 is invalid: expected a number in [0, 1]": lambda: check_in_range("keep", 1.5, 0, 1, high_inclusive=True),
        "steps = 2.0 is invalid: expected an integer >= 1": lambda: check_integer("steps", 2.0, minimum=1),
        "steps = True is invalid: expected an integer >= 1": lambda: check_integer("steps", True, minimum=1),
        "mode = 'x' is invalid: expected one of 'exact', 'bernoulli'": lambda: check_choice(
            "mode", "x", ("exact", "bernoulli")
        ),
        "clip = 1 is invalid: expected true or false": lambda: check_bool("clip", 1),
        "strength = -1 is invalid: expected a finite number >= 0 and <= 2": lambda: check_number(
            "strength", -1, minimum=0, maximum=2
        ),
    }
    for message, call in messages.items():
        with pytest.raises(InvalidValue) as raised:
            call()
        assert str(raised.value) == message
    assert check_in_range("keep", 1, 0, 1, high_inclusive=True) == 1.0


def test_an_invalid_value_survives_the_trip_back_from_a_worker_process():
    error = InvalidValue("tau", -1.0, "a finite number > 0")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.name, copy.value, copy.expected, str(copy)) == ("tau", -1.0, "a finite number > 0", str(error))


@dataclasses.dataclass(frozen=True)
class Options:
    mode: str = option_field("exact", "how")
    temperature: float = option_field(1.0, "how hot")

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("exact", "bernoulli"))
        check_positive("temperature", self.temperature)


def test_make_options_words_a_problem_as_an_option_of_its_owner():
    assert make_options("noise model 'x'", Options, {"mode": "bernoulli"}) == Options("bernoulli")
    with pytest.raises(ValueError, match=r"^noise model 'x' has no option 'temp'; its options are: mode, temperature$"):
        make_options("noise model 'x'", Options, {"temp": 1.0})
    with pytest.raises(ValueError, match=r"^option temperature=0 must be a finite number > 0$"):
        make_options("noise model 'x'", Options, {"temperature": 0})


@dataclasses.dataclass(frozen=True)
class Inner(Section):
    section = "inner"

    size: int = setting(1, integer(minimum=1))


@dataclasses.dataclass(frozen=True)
class Outer(Section):
    section = "outer"

    inner: Inner | None = setting(None, nested_section(Inner, "null or a mapping of inner settings"), omitted_when_none=True)
    names: tuple[str, ...] = setting(("a",), tuple)
    added: int = setting(0, integer(), since="0.2")


def test_plain_forms_leave_out_what_is_off_and_what_was_added_at_its_default():
    assert settings_dict(Outer()) == {"names": ("a",), "added": 0}  # inner is off: left out
    assert run_id_section(Outer()) == {"names": ("a",)}  # added since 0.2 and at its default: left out
    assert run_id_section(Outer(inner={"size": 3}, added=1)) == {"inner": {"size": 3}, "names": ("a",), "added": 1}
    assert Outer(inner={}).inner == Inner()
    with pytest.raises(ValueError, match=r"^outer.inner.size = 0 is invalid: expected an integer >= 1$"):
        Outer(inner={"size": 0})
