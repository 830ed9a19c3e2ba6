"""Transfer regret of MDL program A and its two O(delta^2) bounds (numpy only).

Amaefuna, Vaidya, Chhabra, Mali, "Curvature-Weighted Capacity Allocation" (arXiv 2603.00910),
Theorem 4 (transfer regret): allocating with source scores q_S on a target program F_T costs

    R = F_T(x*(q_T)) - F_T(x*(q_S)) = O(kappa_T delta^2),    delta = ||q_T - q_S||_2.

With mu_T the strong-concavity and L_T the smoothness modulus of F_T on the feasible box, L_q the
Lipschitz constant of grad_x F_q in q, and kappa_T = L_T / mu_T (the moduli `regret_bound` returns):

- the paper's route (its argument as reconstructed from the paper and its code; the theorem itself states
  the O(kappa_T delta^2) form): ||x_S - x_T|| <= (L_q / mu_T) delta, then L_T-smoothness at the target optimum,
      R <= (L_T / 2) ||x_S - x_T||^2 <= kappa_T L_q^2 / (2 mu_T) delta^2        (`paper_bound`);
  the smoothness step drops the first-order term -grad F_T(x_T)^T (x_S - x_T) >= 0, which is zero when
  no bound is active in either program (or both share their active set) but adds to R otherwise;
- the package's route (`regret_bound(...).bound`): concavity and the optimality of x_S for F_S,
      R <= L_q delta ||x_S - x_T|| <= L_q^2 / mu_T delta^2                        (`package_bound`),
  which holds whatever the active sets; it is the smaller of the two whenever kappa_T > 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .mdl import allocate, normalise

__all__ = ["Regret", "regret_bound", "package_bound", "paper_bound"]


@dataclass(frozen=True)
class Regret:
    """Transfer regret of allocating with source scores on the target program (see `regret_bound`)."""
    regret: float         # F_T(x*(q_T)) - F_T(x*(q_S)) >= 0
    delta: float          # ||q_T - q_S||_2 on the simplex
    bound: float          # C * delta^2, always >= regret
    constant: float       # C = L_q^2 / mu_T = kappa_T L_q^2 / L_T
    mu: float             # strong-concavity modulus of F_T on the feasible box
    smoothness: float     # L_T, smoothness modulus of F_T on the box
    kappa: float          # L_T / mu_T, the target program's condition number
    lipschitz_q: float    # L_q: ||grad F_q(x) - grad F_q'(x)|| <= L_q ||q - q'||
    paper_bound: float    # kappa_T L_q^2 / (2 mu_T) delta^2: the smoothness route, valid when the active set does not change


def regret_bound(q_source: ArrayLike, q_target: ArrayLike, budget: float, *, cost: ArrayLike = 1.0,
                 beta: ArrayLike = 1.0, lower: ArrayLike = 0.0, upper: ArrayLike = np.inf) -> Regret:
    """Transfer regret of program A and its O(delta^2) bound (arXiv 2603.00910, Theorem 4).

    x_S = x*(q_S), x_T = x*(q_T) on the same feasible set E = {sum c r = B, lower <= r <= upper}.
    Constants on the box (r_max_k = upper_k, or what the budget allows when upper is infinite):
      mu_T  = min_k q_T,k / (beta_k + r_max_k)^2     (-F_T'' >= mu_T: strong concavity)
      L_T   = max_k q_T,k / (beta_k + lower_k)^2     (-F_T'' <= L_T: smoothness)
      L_q   = max_k 1 / (beta_k + lower_k)           (grad_r F_q = q / (beta + r) is L_q-Lipschitz in q)
    Derivation: concavity gives R = F_T(x_T) - F_T(x_S) <= grad F_T(x_S)^T (x_T - x_S); optimality of
    x_S for F_S gives grad F_S(x_S)^T (x_T - x_S) <= 0; subtracting, R <= L_q delta ||x_T - x_S||.
    Strong monotonicity with both optimality conditions gives mu_T ||x_T - x_S||^2 <= L_q delta ||x_T - x_S||.
    Hence R <= (L_q^2 / mu_T) delta^2 (`package_bound`); the paper's smoothness route is `paper_bound`.

    >>> r = regret_bound([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], budget=6.0)   # same scores: no regret
    >>> r.regret, r.delta, r.bound
    (0.0, 0.0, 0.0)
    """
    qs, qt = normalise(q_source), normalise(q_target)
    if qs.size != qt.size:
        raise ValueError(f"source and target scores need the same number of layers, got {qs.size} and {qt.size}")
    src = allocate(qs, budget, cost=cost, beta=beta, lower=lower, upper=upper)
    tgt = allocate(qt, budget, cost=cost, beta=beta, lower=lower, upper=upper)
    p = tgt.problem
    regret = max(0.0, p.objective(tgt.x) - p.objective(src.x))
    delta = float(np.linalg.norm(qt - qs))
    slack = p.budget - p.cost @ p.lower
    r_max = np.minimum(p.upper, p.lower + slack / p.cost)
    mu = float(np.min(qt / (p.beta + r_max) ** 2))
    smooth = float(np.max(qt / (p.beta + p.lower) ** 2))
    lip_q = float(np.max(1.0 / (p.beta + p.lower)))
    const = lip_q**2 / mu if mu > 0 else math.inf
    return Regret(regret=regret, delta=delta, bound=package_bound(delta, mu=mu, lipschitz_q=lip_q), constant=const,
                  mu=mu, smoothness=smooth, kappa=smooth / mu if mu > 0 else math.inf, lipschitz_q=lip_q,
                  paper_bound=paper_bound(delta, mu=mu, smoothness=smooth, lipschitz_q=lip_q))


def _moduli(mu: float, smoothness: float, lipschitz_q: float) -> None:
    for name, value in (("mu", mu), ("smoothness", smoothness), ("lipschitz_q", lipschitz_q)):
        if not value >= 0 or math.isnan(value):
            raise ValueError(f"{name} must be >= 0, got {value}")
    if smoothness < mu:
        raise ValueError(f"smoothness L_T = {smoothness} is below mu_T = {mu}: L_T >= mu_T on any box")


def paper_bound(delta: float, *, mu: float, smoothness: float, lipschitz_q: float) -> float:
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


def package_bound(delta: float, *, mu: float, lipschitz_q: float) -> float:
    """L_q^2 / mu_T * delta^2: the constant `regret_bound` uses (valid whatever the active sets).

    >>> package_bound(0.5, mu=1.0, lipschitz_q=1.0)
    0.25
    """
    _moduli(mu, mu, lipschitz_q)
    if mu == 0:
        return math.inf
    return lipschitz_q**2 / mu * float(delta) ** 2
