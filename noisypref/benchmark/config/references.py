"""References: runs that a study trains and draws beside its competitors but never ranks (DESIGN §1).

* ``clean_only`` (the oracle): a method entry with ``reference: clean_only`` trains on its run's noisy
  pairs minus the flipped ones; everything else (dataset, noise model, rate, seed, method,
  hyperparameters, held-out evaluation) is the same run. It is the one place where the flip record
  reaches data preparation (`noisypref.benchmark.run.prepare.training_pairs`); it measures how much
  noise costs, the headroom a robust method can recover.
* ``known_rate``: a method given its run's own realised flip rate. A hyperparameter that the method
  declares an assumed flip rate (``flip_rate_hyperparameters``: cDPO's and rDPO's ``label_smoothing``)
  set to the symbol ``realised_flip_rate`` is resolved per run, after noise injection, to the share of
  training pairs actually flipped. Such an entry is a known-rate reference automatically: it reads a
  summary of the flip record that no competitor has.
* cleaned runs (`noisypref.benchmark.config.cleaning`): a run cleaned by the ``oracle`` judge reads the
  flip record. Removing what it flags at its own estimate or at the realised rate removes exactly the
  flipped pairs, so it is ``clean_only``; any other use of the oracle (flipping, removing a share) is an
  ``oracle`` reference. A run whose judge is told the realised flip rate (budget ``realised_rate``) is
  ``known_rate``. `run_reference_kind` gives a run's kind from its method and cleaning sections.

Competitors are ``none``. A reference at rate 0 is its own base run (nothing to remove, ε = 0), so the
grid leaves it out there. This module is plain data: the names, the symbol and how a run's kind is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from noisypref import methods as method_registry
from noisypref.folder_layout import CLEAN_ONLY, FLIP_RECORD_ORACLE, KNOWN_RATE, NO_REFERENCE

REFERENCE_KINDS = (NO_REFERENCE, CLEAN_ONLY, KNOWN_RATE, FLIP_RECORD_ORACLE)
GIVEN_REFERENCES = (NO_REFERENCE, CLEAN_ONLY)  # what a method entry or run config states; known_rate is read
REALISED_FLIP_RATE = "realised_flip_rate"  # the symbolic hyperparameter value


def is_symbol(value: Any) -> bool:
    return isinstance(value, str) and value == REALISED_FLIP_RATE


def symbolic_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """{name: symbol} of the hyperparameters given as ``realised_flip_rate``."""
    return {name: value for name, value in hyperparameters.items() if is_symbol(value)}


def reference_kind(reference: str, hyperparameters: Mapping[str, Any]) -> str:
    """The kind of a run: ``clean_only`` as stated, ``known_rate`` when a hyperparameter is symbolic,
    else ``none`` (a competitor)."""
    if reference == CLEAN_ONLY:
        return CLEAN_ONLY
    return KNOWN_RATE if symbolic_hyperparameters(hyperparameters) else NO_REFERENCE


def run_reference_kind(method_kind: str, cleaning_kind: str | None) -> str:
    """The kind of a run from its method's kind and its cleaning's (None: the run is not cleaned). A study
    never crosses a method reference with a cleaning entry, so at most one of them is a reference."""
    if method_kind != NO_REFERENCE or cleaning_kind is None:
        return method_kind
    return cleaning_kind


def symbol_problem(method: str, hyperparameter: str) -> str | None:
    """Why ``hyperparameter`` of ``method`` cannot be ``realised_flip_rate`` (None: it can, or it is not
    a hyperparameter of the method at all, which the method's own check reports)."""
    method_class = method_registry.method_class(method)
    fields = {field.name: field for field in dataclasses.fields(method_class.config_class)}
    if hyperparameter not in fields:
        return None
    allowed = [
        name
        for name in method_class.flip_rate_hyperparameters
        if name in fields and isinstance(fields[name].default, float)
    ]
    if hyperparameter in allowed:
        return None
    takes = f"{method!r} takes it for {', '.join(allowed)}" if allowed else f"{method!r} has none"
    return (
        f"{REALISED_FLIP_RATE!r} stands for the run's realised flip rate, which only a hyperparameter that is "
        f"an assumed flip rate can take ({takes}; `noisypref methods` lists them)"
    )


def with_symbols_replaced(hyperparameters: Mapping[str, Any], value_of: Mapping[str, Any]) -> dict[str, Any]:
    """``hyperparameters`` with each symbolic one that ``value_of`` names replaced by its value there."""
    return {
        name: value_of[name] if is_symbol(value) and name in value_of else value
        for name, value in hyperparameters.items()
    }
