"""The two constants of the transfer-regret bound for MDL program A, side by side (tutorial 06).

Amaefuna, Vaidya, Chhabra, Mali, "Curvature-Weighted Capacity Allocation" (arXiv 2603.00910),
Theorem 4 (transfer regret): allocating with source scores q_S on a target program F_T costs

    R = F_T(x*(q_T)) - F_T(x*(q_S)) = O(kappa_T delta^2),    delta = ||q_T - q_S||_2.

With mu_T the strong-concavity and L_T the smoothness modulus of F_T on the feasible box, L_q the
Lipschitz constant of grad_x F_q in q, and kappa_T = L_T / mu_T (the moduli `mdl.regret_bound` returns):

- the paper's route (its argument as reconstructed from the paper and its code; the theorem itself states
  the O(kappa_T delta^2) form): ||x_S - x_T|| <= (L_q / mu_T) delta, then L_T-smoothness at the target optimum,
      R <= (L_T / 2) ||x_S - x_T||^2 <= kappa_T L_q^2 / (2 mu_T) delta^2        (`paper_bound`);
  the smoothness step drops the first-order term -grad F_T(x_T)^T (x_S - x_T) >= 0, which is zero when
  no bound is active in either program (or both share their active set) but adds to R otherwise;
- the package's route (`mdl.regret_bound(...).bound`): concavity and the optimality of x_S for F_S,
      R <= L_q delta ||x_S - x_T|| <= L_q^2 / mu_T delta^2                        (`package_bound`),
  which holds whatever the active sets; it is the smaller of the two whenever kappa_T > 2.
"""
from __future__ import annotations

import math

__all__ = ["package_bound", "paper_bound"]


def _moduli(mu: float, smoothness: float, lipschitz_q: float) -> None:
    for name, value in (("mu", mu), ("smoothness", smoothness), ("lipschitz_q", lipschitz_q)):
        if not value >= 0 or math.isnan(value):
            raise ValueError(f"{name} must be >= 0, got {value}")
    if smoothness < mu:
        raise ValueError(f"smoothness L_T = {smoothness} is below mu_T = {mu}: L_T >= mu_T on any box")


def paper_bound(delta: float, mu: float, smoothness: float, lipschitz_q: float) -> float:
    """kappa_T L_q^2 / (2 mu_T) * delta^2, kappa_T = L_T / mu_T (arXiv 2603.00910, Theorem 4: the constant of
    its smoothness route, L_T / 2 times ||x_S - x_T||^2 <= (L_q delta / mu_T)^2).

    Valid as a bound when grad F_T(x_T)^T (x_S - x_T) = 0 (no active bound, or a shared active set).
    Infinite when mu_T = 0 (a target layer with zero score: F_T is not strongly concave).

    >>> paper_bound(0.5, mu=1.0, smoothness=4.0, lipschitz_q=1.0)   # kappa 4: 4 * 1 / 2 * 0.25
    0.5
    """
    _moduli(mu, smoothness, lipschitz_q)
    if mu == 0:
        return math.inf
    kappa = smoothness / mu
    return kappa * lipschitz_q**2 / (2.0 * mu) * float(delta) ** 2


def package_bound(delta: float, mu: float, lipschitz_q: float) -> float:
    """L_q^2 / mu_T * delta^2: the constant `mdl.regret_bound` uses (valid whatever the active sets).

    >>> package_bound(0.5, mu=1.0, lipschitz_q=1.0)
    0.25
    """
    _moduli(mu, mu, lipschitz_q)
    if mu == 0:
        return math.inf
    return lipschitz_q**2 / mu * float(delta) ** 2
