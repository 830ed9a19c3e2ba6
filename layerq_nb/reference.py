"""Reference solutions of the two MDL programs with cvxpy (an independent solver, for checking `mdl`).

The same programs as `layerq_nb.mdl` (Amaefuna et al., arXiv 2603.00910), stated as disciplined convex
programs: the log terms become exponential cones, solved by Clarabel (interior point) by default with
tightened tolerances, because its defaults leave ~1e-5 relative error in x on spiky q. No torch.

Even at its tightest, an interior-point solution is only as accurate as its duality gap allows: for an
objective with curvature mu, gap eps leaves up to sqrt(2 eps / mu) in x, and flat layers (small q,
large r) have small mu (measured: 3.8e-6 relative in x on an instance Clarabel calls optimal). So, as
OSQP's `polish`, the reference refines the solver's answer: it takes the active set the solver found
(layers at a bound), runs Newton's method on the equality-constrained problem over the free layers, and
keeps the result only if it is feasible and the bound multipliers have the right signs; otherwise it
returns the solver's x unchanged. The refinement uses the objective's gradient and Hessian only, not
the closed form x(nu) of `mdl`, so the comparison stays independent.

`allocate` and `prune` return an `mdl.Solution` of the same `mdl` problem (checked by the same code, so
bad input fails the same way), so `mdl.verify` certifies cvxpy's answer too; its `solver` field, a
`SolverReport`, keeps cvxpy's status, timings and its own x before refinement.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .mdl import AllocationProblem, PruningProblem, Solution, allocation_problem, pruning_problem

if TYPE_CHECKING:
    import cvxpy as cp

    Program = tuple[cp.Problem, cp.Variable, cp.Constraint, float]   # problem, variable, budget, objective offset

__all__ = ["SolverReport", "allocate", "prune", "build_allocation", "build_prune"]

TIGHT = {"CLARABEL": dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-14,
                          max_iter=1000)}


@dataclass(frozen=True, eq=False)
class SolverReport:
    """How cvxpy reached a reference solution (`mdl.Solution.solver`)."""
    name: str                 # the cvxpy solver, e.g. "CLARABEL"
    status: str               # cvxpy's status: "optimal", "optimal_inaccurate", ...
    build_seconds: float      # checking the data and stating the program in cvxpy
    solve_seconds: float
    polished: bool            # x and nu come from the active-set Newton refinement (`_polish`)
    x_solver: np.ndarray      # the solver's own x, before refinement
    objective_solver: float   # the solver's own objective value


ReferenceSolution = Solution     # the former result type's name: a reference answer is an `mdl.Solution` now


def _cvxpy():
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - cvxpy is a core dependency
        raise ImportError("the reference solutions need cvxpy: pip install cvxpy clarabel") from err
    return cp


def _box(x, lower, upper):
    cons = [x >= lower]
    finite = np.isfinite(upper)
    if finite.any():
        cons.append(x[np.flatnonzero(finite)] <= upper[finite])
    return cons


def _program_a(p: AllocationProblem) -> Program:
    """Program A in cvxpy: max sum q_k log(beta_k + r_k) (= the objective up to the returned offset)."""
    cp = _cvxpy()
    # the budget and the lower bounds imply r_k <= lower_k + (B - c.lower) / c_k; a looser copy of that
    # bound (never active, so the duals are unchanged) keeps the interior-point iterates bounded when
    # upper is infinite: better accuracy, same problem
    upper = np.minimum(p.upper, p.lower + 2.0 * (p.budget - p.cost @ p.lower) / p.cost + 1.0)
    r = cp.Variable(p.q.size)
    budget = p.cost @ r == p.budget
    program = cp.Problem(cp.Maximize(p.q @ cp.log(p.beta + r)), [budget, *_box(r, p.lower, upper)])
    offset = float(np.sum(p.q * np.log(p.beta)))     # log(1 + r/beta) = log(beta + r) - log(beta)
    return program, r, budget, offset


def _program_b(p: PruningProblem) -> Program:
    """Program B in cvxpy: min sum q_k phi(s_k), phi = -log(1 - s) or s^2/2."""
    cp = _cvxpy()
    s = cp.Variable(p.q.size)
    budget = p.sizes @ s == p.target
    loss = -(p.q @ cp.log(1 - s)) if p.penalty == "log" else 0.5 * (p.q @ cp.square(s))
    program = cp.Problem(cp.Minimize(loss), [budget, *_box(s, p.lower, p.upper)])
    return program, s, budget, 0.0


def build_allocation(q: ArrayLike, budget: float, *, cost: ArrayLike = 1.0, beta: ArrayLike = 1.0,
                     lower: ArrayLike = 0.0, upper: ArrayLike = np.inf) -> Program:
    """Program A as a cvxpy problem: (problem, variable r, budget constraint, objective offset)."""
    return _program_a(allocation_problem(q, budget, cost=cost, beta=beta, lower=lower, upper=upper))


def build_prune(q: ArrayLike, sparsity: float, *, sizes: ArrayLike = 1.0, lower: ArrayLike = 0.0,
                upper: ArrayLike = 0.99, penalty: str = "log") -> Program:
    """Program B as a cvxpy problem: (problem, variable s, budget constraint, objective offset 0)."""
    return _program_b(pruning_problem(q, sparsity, sizes=sizes, lower=lower, upper=upper, penalty=penalty))


def _derivatives(kind, q, x, beta):
    """Gradient and (diagonal) Hessian of the program written as a minimisation, and its domain."""
    if kind == "allocate":            # - sum q log(beta + r)
        return -q / (beta + x), q / (beta + x) ** 2, np.all(beta + x > 0)
    if kind == "log":                 # - sum q log(1 - s)
        return q / (1 - x), q / (1 - x) ** 2, np.all(x < 1)
    return q * x, q, True             # sum q s^2 / 2


def _polish(kind, q, x, weights, target, lower, upper, beta=None, max_iter=60):
    """Active-set Newton refinement: (x, nu) or None when no active set near the solver's certifies.

    Layers within 1e-7 of a bound start fixed there; on the free set F of the others, Newton's method for
    min F(x) s.t. w.x = target, whose KKT step with a diagonal Hessian h is
    dual = -(r + w_F.(g/h)) / (w_F.(w_F/h)),  dx = -(g + dual w_F) / h   (r = target - w.x),
    halving the step to stay in the domain. A free layer that Newton carries past a bound is fixed at
    that bound, and a fixed layer whose multiplier g_k + dual w_k has the wrong sign (< 0 at lower, > 0
    at upper) is freed, then Newton runs again (a primal active-set method: Nocedal & Wright, "Numerical
    Optimization", 2nd ed., section 16.5), for at most 2K + 2 rounds: the solver's iterate may stop just
    off a bound that binds, or on one that does not. Accepted when x_F is inside its bounds, every
    multiplier has its sign and the budget holds. nu = |dual|, the dual level of the budget in `mdl`'s
    convention.
    """
    x = np.clip(np.asarray(x, float), lower, upper)
    pos = q > 0
    near_lower = x <= lower + 1e-7 * np.maximum(1.0, np.abs(lower))
    finite = np.isfinite(upper)
    near_upper = np.zeros_like(finite)
    near_upper[finite] = x[finite] >= upper[finite] - 1e-7 * np.maximum(1.0, np.abs(upper[finite]))
    if np.any(~pos & ~near_lower & ~near_upper):
        return _polish_flat(kind, q, x, weights, target, lower, upper, beta, ~pos & ~near_lower & ~near_upper)
    at_lower = near_lower.copy()           # zero-score layers too: left 1e-9 off, they would read as free
    at_upper = ~at_lower & near_upper
    for _ in range(2 * q.size + 2):
        x = np.where(at_lower, lower, np.where(at_upper, upper, x))
        free = pos & ~at_lower & ~at_upper
        if not free.any():
            return None
        x = _newton_on(kind, q, x, free, weights, target, beta, max_iter)
        tol_x = 1e-12 * np.maximum(1.0, np.abs(x))
        below, above = free & (x < lower - tol_x), free & (x > upper + tol_x)
        if below.any() or above.any():     # Newton crossed a bound: it binds
            at_lower, at_upper = at_lower | below, at_upper | above
            continue
        g_all, _, _ = _derivatives(kind, q, x, beta)
        w = weights[free]
        dual = -float(np.mean(g_all[free] / w))     # stationarity on F: g_k + dual w_k = 0 for every free k
        bound_mult = g_all + dual * weights
        scale = 1e-8 * float(np.max(np.abs(g_all[pos])))
        wrong_lower, wrong_upper = at_lower & pos & (bound_mult < -scale), at_upper & pos & (bound_mult > scale)
        if wrong_lower.any() or wrong_upper.any():   # a bound that pushes the wrong way: let the layer go
            at_lower, at_upper = at_lower & ~wrong_lower, at_upper & ~wrong_upper
            continue
        ok = abs(weights @ x - target) <= 1e-12 * max(1.0, abs(target))
        return (x, abs(dual)) if ok else None
    return None


def _newton_on(kind, q, x, free, weights, target, beta, max_iter):
    """Newton's method on the free layers of min F(x) s.t. w.x = target, the others held where they are."""
    x = x.copy()
    w = weights[free]
    b = beta[free] if beta is not None else None
    for _ in range(max_iter):
        xf = x[free]
        g, h, _ = _derivatives(kind, q[free], xf, b)
        r = target - weights @ x
        dual = -(r + w @ (g / h)) / (w @ (w / h))
        dx = -(g + dual * w) / h
        step = 1.0
        while not _derivatives(kind, q[free], xf + step * dx, b)[2] and step > 1e-12:
            step /= 2
        x[free] = xf + step * dx
        if np.max(np.abs(step * dx)) <= 1e-15 * max(1.0, float(np.max(np.abs(xf)))):
            break
    return x


def _polish_flat(kind, q, x, weights, target, lower, upper, beta, movable):
    """The solver left a zero-score layer strictly inside its bounds: its stationarity 0 + dual w_k = 0
    forces dual = 0, so every scored layer sits at the bound its own gradient picks (lower where
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


def _solve(problem: AllocationProblem | PruningProblem, solver: str, polish: bool, t0: float) -> Solution:
    """Solve `problem` with cvxpy, refine (`_polish`) unless told not to, and restate it as an `mdl.Solution`."""
    is_a = isinstance(problem, AllocationProblem)
    program, x, budget, offset = (_program_a if is_a else _program_b)(problem)
    build_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():     # "may be inaccurate" is kept in the status ("optimal_inaccurate")
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        program.solve(solver=solver, **TIGHT.get(solver, {}))
    solve_seconds = time.perf_counter() - t0
    if x.value is None:
        raise RuntimeError(f"cvxpy ({solver}) found no solution: status {program.status}")
    # cvxpy's dual of an equality constraint follows its own sign convention; the KKT level nu >= 0
    nu = abs(float(np.atleast_1d(budget.dual_value)[0]))
    x_solver = np.asarray(x.value, float)
    refined = None
    if polish:
        kind, beta = ("allocate", problem.beta) if is_a else (problem.penalty, None)
        refined = _polish(kind, problem.q, x_solver, problem.weights, problem.target, problem.lower, problem.upper,
                          beta=beta)
    x_best, nu = refined if refined is not None else (x_solver, nu)
    report = SolverReport(name=solver, status=str(program.status), build_seconds=build_seconds,
                          solve_seconds=solve_seconds, polished=refined is not None, x_solver=x_solver,
                          objective_solver=float(program.value) - offset)
    return Solution.at(problem, x_best, nu, solver=report)


def allocate(q: ArrayLike, budget: float, *, cost: ArrayLike = 1.0, beta: ArrayLike = 1.0, lower: ArrayLike = 0.0,
             upper: ArrayLike = np.inf, solver: str = "CLARABEL", polish: bool = True) -> Solution:
    """Reference for `mdl.allocate` (program A), solved by cvxpy (refined by `_polish` unless polish=False)."""
    t0 = time.perf_counter()
    problem = allocation_problem(q, budget, cost=cost, beta=beta, lower=lower, upper=upper)
    return _solve(problem, solver, polish, t0)


def prune(q: ArrayLike, sparsity: float, *, sizes: ArrayLike = 1.0, lower: ArrayLike = 0.0, upper: ArrayLike = 0.99,
          penalty: str = "log", solver: str = "CLARABEL", polish: bool = True) -> Solution:
    """Reference for `mdl.prune` (program B), solved by cvxpy (refined by `_polish` unless polish=False)."""
    t0 = time.perf_counter()
    problem = pruning_problem(q, sparsity, sizes=sizes, lower=lower, upper=upper, penalty=penalty)
    return _solve(problem, solver, polish, t0)
