"""Reference solutions of the two MDL programs with cvxpy (an independent solver, for checking `mdl`).

The same programs as `layerq_nb.mdl`, stated as disciplined convex programs: the log terms become
exponential cones, solved by Clarabel (interior point) by default with tightened tolerances, because
its defaults leave ~1e-5 relative error in x on spiky q. No torch.

Even at its tightest, an interior-point solution is only as accurate as its duality gap allows: for an
objective with curvature mu, gap eps leaves up to sqrt(2 eps / mu) in x, and flat layers (small q,
large r) have small mu (measured: 3.8e-6 relative in x on an instance Clarabel calls optimal). So, as
OSQP's `polish`, the reference refines the solver's answer: it takes the active set the solver found
(layers at a bound), runs Newton's method on the equality-constrained problem over the free layers, and
keeps the result only if it is feasible and the bound multipliers have the right signs; otherwise it
returns the solver's x unchanged. The refinement uses the objective's gradient and Hessian only, not
the closed form x(nu) of `mdl`, so the comparison stays independent. `x_solver` keeps the solver's own x.
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
    polished: bool = False            # x and nu come from the active-set Newton refinement
    x_solver: np.ndarray | None = None   # the solver's own x, before refinement


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


def _derivatives(kind, q, x, beta):
    """Gradient and (diagonal) Hessian of the program written as a minimisation, and its domain."""
    if kind == "allocate":            # - sum q log(beta + r)
        return -q / (beta + x), q / (beta + x) ** 2, np.all(beta + x > 0)
    if kind == "log":                 # - sum q log(1 - s)
        return q / (1 - x), q / (1 - x) ** 2, np.all(x < 1)
    return q * x, q, True             # sum q s^2 / 2


def _polish(kind, q, x, weights, target, lower, upper, beta=None, max_iter=60):
    """Active-set Newton refinement: (x, nu) or None when the solver's active set does not certify.

    Layers with q > 0 within 1e-7 of a bound are fixed there; on the free set F, Newton's method for
    min F(x) s.t. w.x = target, whose KKT step with a diagonal Hessian h is
    lam = -(r + w_F.(g/h)) / (w_F.(w_F/h)),  dx = -(g + lam w_F) / h   (r = target - w.x),
    halving the step to stay in the domain. Accepted if x_F stays inside its bounds and each fixed
    layer's multiplier g_k + lam w_k has the sign its bound needs (>= 0 at lower, <= 0 at upper).
    nu = |lam|, the dual level of the budget in `mdl`'s convention.
    """
    x = np.clip(np.asarray(x, float), lower, upper)
    pos = q > 0
    near_lower = x <= lower + 1e-7 * np.maximum(1.0, np.abs(lower))
    finite = np.isfinite(upper)
    near_upper = np.zeros_like(finite)
    near_upper[finite] = x[finite] >= upper[finite] - 1e-7 * np.maximum(1.0, np.abs(upper[finite]))
    if np.any(~pos & ~near_lower & ~near_upper):
        return _polish_flat(kind, q, x, weights, target, lower, upper, beta, ~pos & ~near_lower & ~near_upper)
    at_lower = pos & near_lower
    at_upper = pos & ~at_lower & near_upper
    x = np.where(at_lower, lower, np.where(at_upper, upper, x))
    free = pos & ~at_lower & ~at_upper
    if not free.any():
        return None
    w = weights[free]
    b = beta[free] if beta is not None else None
    for _ in range(max_iter):
        xf = x[free]
        g, h, _ = _derivatives(kind, q[free], xf, b)
        r = target - weights @ x
        lam = -(r + w @ (g / h)) / (w @ (w / h))
        dx = -(g + lam * w) / h
        step = 1.0
        while not _derivatives(kind, q[free], xf + step * dx, b)[2] and step > 1e-12:
            step /= 2
        x[free] = xf + step * dx
        if np.max(np.abs(step * dx)) <= 1e-15 * max(1.0, float(np.max(np.abs(xf)))):
            break
    g_all, _, _ = _derivatives(kind, q, x, beta)
    lam = -float(np.mean(g_all[free] / w))     # stationarity on F: g_k + lam w_k = 0 for every free k
    tol_x = 1e-12 * np.maximum(1.0, np.abs(x))
    mult = g_all + lam * weights
    scale = 1e-8 * float(np.max(np.abs(g_all[pos])))
    ok = (np.all(x[free] >= lower[free] - tol_x[free]) and np.all(x[free] <= upper[free] + tol_x[free])
          and np.all(mult[at_lower] >= -scale) and np.all(mult[at_upper] <= scale)
          and abs(weights @ x - target) <= 1e-12 * max(1.0, abs(target)))
    return (x, abs(lam)) if ok else None


def _polish_flat(kind, q, x, weights, target, lower, upper, beta, movable):
    """The solver left a zero-score layer strictly inside its bounds: its stationarity 0 + lam w_k = 0
    forces lam = 0, so every scored layer sits at the bound its own gradient picks (lower where
    g_k >= 0, upper where g_k < 0) and the zero-score layers absorb the rest of the budget (any split is
    optimal: the objective is flat in them; each moves in proportion to its room towards the bound)."""
    pos = q > 0
    g, _, _ = _derivatives(kind, q, x, beta)
    x = x.copy()
    x[pos] = np.where(g[pos] >= 0, lower[pos], upper[pos])
    if not np.all(np.isfinite(x)):
        return None
    rest = target - weights @ x
    room = np.where(movable, (upper - x) if rest > 0 else (x - lower), 0.0)   # how far each may move
    if np.isinf(room).any():
        x += np.where(np.isinf(room), rest / (weights * np.isinf(room).sum()), 0.0)
    elif weights @ room > 0:
        x += room * (rest / (weights @ room))
    ok = (np.all(x >= lower - 1e-12) and np.all(x <= upper + 1e-12)
          and abs(weights @ x - target) <= 1e-12 * max(1.0, abs(target)))
    return (x, 0.0) if ok else None


def _solve(built, solver, build_seconds, polish=None):
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
    x_solver = np.asarray(x.value, float)
    objective = float(problem.value) - offset
    refined = polish(x_solver) if polish is not None else None
    if refined is not None:
        x_best, nu, objective = refined
    return ReferenceSolution(x=x_best if refined is not None else x_solver, nu=nu, objective=objective,
                             status=str(problem.status), build_seconds=build_seconds, solve_seconds=solve_seconds,
                             polished=refined is not None, x_solver=x_solver)


def allocate(q, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf, solver="CLARABEL",
             polish=True) -> ReferenceSolution:
    """Reference for `mdl.allocate` (program A), solved by cvxpy (refined by `_polish` unless polish=False)."""
    t0 = time.perf_counter()
    built = build_allocation(q, budget, cost, beta, lower, upper)
    q = normalise(q)
    cost, beta, lower, upper = (_broadcast(v, q.size) for v in (cost, beta, lower, upper))

    def refine(x):
        out = _polish("allocate", q, x, cost, float(budget), lower, upper, beta=beta)
        if out is None:
            return None
        return (*out, float(np.sum(q * np.log1p(out[0] / beta))))
    return _solve(built, solver, time.perf_counter() - t0, refine if polish else None)


def prune(q, sparsity, sizes=1.0, lower=0.0, upper=0.99, penalty="log", solver="CLARABEL",
          polish=True) -> ReferenceSolution:
    """Reference for `mdl.prune` (program B), solved by cvxpy (refined by `_polish` unless polish=False)."""
    t0 = time.perf_counter()
    built = build_prune(q, sparsity, sizes, lower, upper, penalty)
    q = normalise(q)
    sizes, lower, upper = (_broadcast(v, q.size) for v in (sizes, lower, upper))

    def refine(x):
        out = _polish(penalty, q, x, sizes, float(sparsity) * float(sizes.sum()), lower, upper)
        if out is None:
            return None
        cost = -np.sum(q * np.log1p(-out[0])) if penalty == "log" else np.sum(q * out[0] ** 2 / 2)
        return (*out, float(cost))
    return _solve(built, solver, time.perf_counter() - t0, refine if polish else None)
