"""The ``cleaning`` section of a run: which judge cleans the noisy training pairs before training, how.

A run config holds a ``cleaning`` section only when a judge cleans its data; a run without one (every
run of a study with no ``cleaning:`` axis) trains on the noisy pairs, and its id is what it was before
cleaning existed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from noisypref.checks import Invalid, choice, optional, text
from noisypref.cleaning import JUDGES, ORACLE_JUDGE, TREATMENTS, Budget, get_judge
from noisypref.folder_layout import CLEAN_ONLY, FLIP_RECORD_ORACLE, KNOWN_RATE, NO_REFERENCE
from noisypref.settings import Section, setting


def _judge_check(value: Any) -> str:
    return choice(sorted(JUDGES))(value)


def _budget_check(value: Any) -> str | dict[str, float]:
    try:
        return Budget.parse(value).to_plain()
    except ValueError as error:
        raise Invalid(f"a valid budget ({error})") from None


def _options_check(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise Invalid("a mapping of the judge's options")
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class CleaningSettings(Section):
    """A judge, its options, the treatment of the pairs it flags and how many it flags (the budget)."""

    section = "cleaning"

    label: str | None = setting(None, optional(text()))  # names the entry in studies; not part of a run
    judge: str = setting("oracle", _judge_check)
    options: dict[str, Any] = setting({}, _options_check)
    treatment: str = setting("remove", choice(TREATMENTS))
    budget: Any = setting("estimated", _budget_check)

    def problems(self) -> list[tuple[str, Any, str]]:
        try:
            options = get_judge(self.judge).make_options(self.options)
        except (ValueError, TypeError) as error:
            return [("options", self.options, f"valid options of judge {self.judge!r} ({error})")]
        object.__setattr__(self, "options", json.loads(json.dumps(dataclasses.asdict(options))))
        return []

    @property
    def display_label(self) -> str:
        """The label, else the judge with what differs from the default treatment and budget, e.g.
        ``reward_model``, ``reward_model(flip)``, ``small_loss(top 20%)``."""
        if self.label:
            return self.label
        parts = [] if self.treatment == "remove" else [self.treatment]
        budget = Budget.parse(self.budget)
        if budget.kind != "estimated":
            parts.append("realised rate" if budget.kind == "realised_rate" else budget.describe())
        return self.judge + (f"({', '.join(parts)})" if parts else "")

    @property
    def reference_kind(self) -> str:
        """What a run cleaned this way knows that no real cleaner does (`config.references`): the oracle
        judge reads the flip record (``clean_only`` where it removes exactly the flipped pairs: at its own
        estimate or the realised rate; else ``oracle``); a budget ``realised_rate`` tells any other judge
        how many pairs flipped (``known_rate``); else ``none``, a competitor."""
        budget = Budget.parse(self.budget).kind
        if self.judge == ORACLE_JUDGE:
            exact = self.treatment == "remove" and budget in ("estimated", "realised_rate")
            return CLEAN_ONLY if exact else FLIP_RECORD_ORACLE
        return KNOWN_RATE if budget == "realised_rate" else NO_REFERENCE

    @property
    def judges(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """(judge, options) of the judge and, for an ensemble, of each of its members."""
        members = getattr(get_judge(self.judge).make_options(self.options), "members", ())
        return ((self.judge, self.options), *((member["judge"], member["options"]) for member in members))

    @property
    def needs_models(self) -> bool:
        return get_judge(self.judge).make_options(self.options).needs_models

    def run_dict(self) -> dict[str, Any]:
        """The run config's "cleaning" section (the label names the entry in a study, not the run)."""
        section = {"judge": self.judge, "options": self.options, "treatment": self.treatment, "budget": self.budget}
        return json.loads(json.dumps(section))

    def study_dict(self) -> dict[str, Any]:
        return {"label": self.display_label, **self.run_dict()}

