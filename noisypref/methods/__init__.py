"""Preference-optimisation losses on per-pair log-probs, and the γ-PO margin estimator.

    from noisypref.methods import PairLogps, build
    method = build("gamma_dpo", beta=0.1, gamma0=1.0, tau=10.0)
    output = method(PairLogps(...))        # output.loss (per pair), output.objective (scalar)

Each method is one module registering one class; importing this package registers them all.
Pure torch: nothing here reads text, files or models.
"""

from noisypref.methods import (  # noqa: F401  (importing registers each method)
    alpha_dpo,
    aot,
    aot_unpaired,
    apo_down,
    apo_zero,
    bco_pair,
    beta_dpo,
    cdpo,
    combined,
    discopop,
    dpo,
    dr_dpo,
    exo_pair,
    gamma,
    hinge,
    ipo,
    length_dpo,
    nca_pair,
    robust_dpo,
    ropo,
    rpo,
    sft,
    sigmoid_norm,
    simpo,
    sppo_hard,
    sympo,
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
