"""Preference-optimisation losses on per-pair log-probs, and the γ-PO margin estimator.

    from noisypref.methods import PairLogps, build
    method = build("gamma_dpo", beta=0.1, gamma0=1.0, tau=10.0)
    output = method(PairLogps(...))        # output.loss (per pair), output.objective (scalar)

Each method is one module registering one class; importing this package registers them all.
Pure torch: nothing here reads text, files or models.
"""

from noisypref.methods import (  # noqa: F401  (importing registers each method)
    beta_dpo,
    cdpo,
    dpo,
    dr_dpo,
    gamma,
    hinge,
    ipo,
    length_dpo,
    robust_dpo,
    ropo,
    simpo,
)
from noisypref.methods.base import (
    METHODS,
    MethodOutput,
    PairLogps,
    PreferenceMethod,
    available_methods,
    build,
    hyperparameter_defaults,
    method_class,
    register,
)
from noisypref.methods.margins import MarginEstimator, solve_margins

__all__ = [
    "METHODS",
    "MarginEstimator",
    "MethodOutput",
    "PairLogps",
    "PreferenceMethod",
    "available_methods",
    "build",
    "hyperparameter_defaults",
    "method_class",
    "register",
    "solve_margins",
]
