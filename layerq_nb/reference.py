"""Reference solutions of the two MDL programs with cvxpy (an independent solver, for checking `mdl`).

The same programs as `layerq_nb.mdl`, stated as disciplined convex programs: the log terms become
exponential cones, solved by Clarabel (interior point) by default with tightened tolerances, because
its defaults leave ~1e-5 relative error in x on spiky q (DESIGN.md section 6). No torch.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from .mdl import normalise

__all__ = ["ReferenceSolution", "allocate", "prune", "build_allocation", "build_prune"]

TIGHT = {"CLARABEL": dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-14,
                          max_iter=1000)}


@dataclass(frozen=True, eq=False)
class ReferenceSolution:
    """What cvxpy returned: x, the dual level of the budget constraint, the objective and the status."""
    x: np.ndarray
    nu: float
    objective: float
    status: str
    build_seconds: float
    solve_seconds: float


def _cvxpy():
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - cvxpy is a core dependency
        raise ImportError("the reference solutions need cvxpy: pip install cvxpy clarabel") from err
    return cp


def _broadcast(value, k):
    return np.broadcast_to(np.asarray(value, dtype=float), (k,)).copy()


def _box(cp, x, lower, upper):
    cons = [x >= lower]
    finite = np.isfinite(upper)
    if finite.any():
        cons.append(x[np.flatnonzero(finite)] <= upper[finite])
    return cons


def build_allocation(q, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf):
    """Program A as a cvxpy problem: max sum q_k log(beta_k + r_k) (= the objective up to a constant)."""
    cp = _cvxpy()
    q = normalise(q)
    k = q.size
    cost, beta, lower, upper = (_broadcast(v, k) for v in (cost, beta, lower, upper))
    # the budget and the lower bounds imply r_k <= lower_k + (B - c.lower) / c_k; a looser copy of that
    # bound (never active, so the duals are unchanged) keeps the interior-point iterates bounded when
    # upper is infinite: better accuracy, same problem
    upper = np.minimum(upper, lower + 2.0 * (float(budget) - cost @ lower) / cost + 1.0)
    r = cp.Variable(k)
    budget_con = cost @ r == float(budget)
    objective = cp.Maximize(q @ cp.log(beta + r))
    problem = cp.Problem(objective, [budget_con, *_box(cp, r, lower, upper)])
    offset = float(np.sum(q * np.log(beta)))     # log(1 + r/beta) = log(beta + r) - log(beta)
    return problem, r, budget_con, offset


def build_prune(q, sparsity, sizes=1.0, lower=0.0, upper=0.99, penalty="log"):
    """Program B as a cvxpy problem: min sum q_k phi(s_k), phi = -log(1 - s) or s^2/2."""
    cp = _cvxpy()
    q = normalise(q)
    k = q.size
    sizes, lower, upper = (_broadcast(v, k) for v in (sizes, lower, upper))
    s = cp.Variable(k)
    budget_con = sizes @ s == float(sparsity) * float(sizes.sum())
    if penalty == "log":
        cost = -(q @ cp.log(1 - s))
    elif penalty == "quadratic":
        cost = 0.5 * (q @ cp.square(s))
    else:
        raise ValueError(f"penalty must be 'log' or 'quadratic', got {penalty!r}")
    problem = cp.Problem(cp.Minimize(cost), [budget_con, *_box(cp, s, lower, upper)])
    return problem, s, budget_con, 0.0


def _solve(built, solver, build_seconds):
    problem, x, budget_con, offset = built
    opts = TIGHT.get(solver, {})
    t0 = time.perf_counter()
    with warnings.catch_warnings():     # "may be inaccurate" is kept in .status ("optimal_inaccurate")
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        problem.solve(solver=solver, **opts)
    solve_seconds = time.perf_counter() - t0
    if x.value is None:
        raise RuntimeError(f"cvxpy ({solver}) found no solution: status {problem.status}")
    # cvxpy's dual of an equality constraint follows its own sign convention; the KKT level nu >= 0
    nu = abs(float(np.atleast_1d(budget_con.dual_value)[0]))
    return ReferenceSolution(x=np.asarray(x.value, float), nu=nu, objective=float(problem.value) - offset,
                             status=str(problem.status), build_seconds=build_seconds, solve_seconds=solve_seconds)


def allocate(q, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf, solver="CLARABEL") -> ReferenceSolution:
    """Reference for `mdl.allocate` (program A), solved by cvxpy."""
    t0 = time.perf_counter()
    built = build_allocation(q, budget, cost, beta, lower, upper)
    return _solve(built, solver, time.perf_counter() - t0)


def prune(q, sparsity, sizes=1.0, lower=0.0, upper=0.99, penalty="log", solver="CLARABEL") -> ReferenceSolution:
    """Reference for `mdl.prune` (program B), solved by cvxpy."""
    t0 = time.perf_counter()
    built = build_prune(q, sparsity, sizes, lower, upper, penalty)
    return _solve(built, solver, time.perf_counter() - t0)
