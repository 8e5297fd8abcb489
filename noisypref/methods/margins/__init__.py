"""γ-PO dynamic target margins: Sun et al., "Robust Preference Optimization via Dynamic Target Margins", 2025.

DESIGN §3.1. For a candidate set of N reward gaps ``g`` the per-pair margins are ``γ_i = γ0·N·p_i``,
``p*`` the minimiser over the simplex of ``(1/N) Σ_i −log σ(g_i − γ0·N·p_i) + τ Σ_i p_i log(N·p_i)``:

    estimator.py    MarginEstimator: the margins of a training batch (candidate set, queue, state)
    solvers.py      solve_margins, margin_objective: the problem and its three solvers
    exact.py        the exact solver (the default), on any device without host synchronisation
    exact_host.py   the exact solver on the host (NumPy), tried first on CPU tensors
"""

from noisypref.methods.margins.estimator import MarginEstimator
from noisypref.methods.margins.solvers import SOLVERS, margin_objective, solve_margins

__all__ = ["SOLVERS", "MarginEstimator", "margin_objective", "solve_margins"]
