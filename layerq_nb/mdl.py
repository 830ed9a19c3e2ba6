"""The two MDL programs of the curvature-weighted capacity framework, solved in closed form.

Amaefuna, Vaidya, Chhabra, Mali, "Curvature-Weighted Capacity Allocation" (UAI 2026, arXiv 2603.00910):
layer scores q (on the simplex) go in, a per-layer decision comes out.

A. allocation (LoRA rank, LoRA-MoE experts):  max  sum_k q_k log(1 + r_k / beta_k)
                                              s.t. sum_k c_k r_k = B,  lower <= r <= upper
B. pruning (per-layer sparsity):              min  sum_k q_k phi(s_k),  phi(s) = -log(1-s) or s^2/2
                                              s.t. sum_k n_k s_k = S sum_k n_k,  lower <= s <= upper

Both are separable and strictly concave (convex) where q_k > 0, with one linear budget, so the KKT
conditions give x_k(nu) = clip(closed form in the dual level nu, lower, upper) and the spend
sum_k w_k x_k(nu) is monotone in nu: bisection on one scalar finds the unique optimum in O(K log 1/eps).
The spend is also of the form a/nu + b (or a nu + b) between the 2K breakpoints where a layer hits a
bound, so sorting the breakpoints gives nu exactly in O(K log K) (`method="sorted"`, and `allocate_batch`
for many instances at once: one routine, `_sorted_levels`). The transfer-regret bound is in `regret`.

Numpy only: the math can be taught and tested without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .integer import check_swaps, greedy

if TYPE_CHECKING:
    from .reference import SolverReport

# Regret and regret_bound live in regret.py (which imports this module): served by __getattr__ below
__all__ = [  # noqa: F822
    "AllocationProblem", "PruningProblem", "Solution", "Regret", "BatchAllocation",
    "allocate", "allocate_batch", "prune", "verify", "regret_bound", "bisection_trace", "budget_curve", "normalise",
    "allocation_problem", "pruning_problem",
]

_SPEND_RTOL = 1e-9   # verify(): the budget must hold to this relative accuracy
_KKT_RTOL = 1e-6     # verify(): stationarity, relative to the dual level nu * w_k


# ----------------------------------------------------------------------------- validation

def normalise(q: ArrayLike) -> np.ndarray:
    """q / sum(q) after checking q is finite, >= 0 and not all zero (scores on the simplex)."""
    q = np.asarray(q, dtype=float)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"scores q must be a non-empty 1-d array, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        bad = np.flatnonzero(~np.isfinite(q))
        raise ValueError(f"scores q must be finite; q[{bad[0]}] = {q[bad[0]]} (fix the scoring run, e.g. more damping)")
    if np.any(q < 0):
        bad = np.flatnonzero(q < 0)
        raise ValueError(f"scores q must be >= 0; q[{bad[0]}] = {q[bad[0]]} (use a gain such as zeta^2, or shift/clip)")
    total = q.sum()
    if total <= 0:
        raise ValueError("scores q are all zero: no layer has any gain, so there is nothing to allocate by")
    if not np.isfinite(total):      # each q_k is finite but their sum overflows: scale by the largest first
        q = q / q.max()
        total = q.sum()
    return q / total


def _per_layer(name: str, value, k: int, *, positive=False, allow_inf=False) -> np.ndarray:
    """Broadcast a scalar or (K,) array to (K,) floats and check it."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size != k):
        raise ValueError(f"{name} must be a scalar or have one value per layer ({k}), got shape {arr.shape}")
    arr = np.broadcast_to(arr, (k,)).astype(float)
    bad = np.isnan(arr) | (np.isinf(arr) & ~allow_inf)
    if np.any(bad):
        i = np.flatnonzero(bad)[0]
        raise ValueError(f"{name}[{i}] = {arr[i]} is not finite")
    if positive and np.any(arr <= 0):
        i = np.flatnonzero(arr <= 0)[0]
        raise ValueError(f"{name}[{i}] = {arr[i]} must be > 0")
    arr.setflags(write=False)
    return arr


def _check_bounds(lower, upper):
    if np.any(lower > upper):
        i = np.flatnonzero(lower > upper)[0]
        raise ValueError(f"bounds cross at layer {i}: lower = {lower[i]} > upper = {upper[i]}")


# ----------------------------------------------------------------------------- problems

@dataclass(frozen=True, eq=False)
class AllocationProblem:
    """MDL program A (arXiv 2603.00910, capacity allocation): max sum_k q_k log(1 + r_k/beta_k), sum c r = B."""
    q: np.ndarray               # (K,), or (n, K): one instance per row (`allocate_batch`)
    budget: float               # or (n,), one per row
    cost: np.ndarray
    beta: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    sense = "max"

    @property
    def weights(self) -> np.ndarray:    # the budget's coefficients c_k
        return self.cost

    @property
    def target(self) -> float:
        return self.budget

    def x_of_nu(self, nu: float | np.ndarray) -> np.ndarray:
        """KKT: q_k / (beta_k + r_k) = nu c_k  =>  r_k(nu) = clip(q_k / (nu c_k) - beta_k, lower, upper)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(self.q > 0, self.q / (nu * self.cost) - self.beta, -np.inf)
        return np.clip(r, self.lower, self.upper)

    def objective(self, x: np.ndarray) -> float:
        return float(np.sum(self.q * np.log1p(x / self.beta)))

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.q / (self.beta + x)

    def free_form(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
        """Breakpoints and spend coefficients: w_k r_k = a_k / nu + b_k while layer k is free."""
        with np.errstate(divide="ignore"):
            at_lower = self.q / (self.cost * (self.beta + self.lower))   # r_k hits lower at nu >= this
            at_upper = self.q / (self.cost * (self.beta + self.upper))   # r_k hits upper at nu <= this
        return at_lower, at_upper, self.q, -self.cost * self.beta, "inverse"


@dataclass(frozen=True, eq=False)
class PruningProblem:
    """MDL program B (arXiv 2603.00910, pruning): min sum_k q_k phi(s_k), sum n s = S sum n, phi = -log(1-s) or s^2/2."""
    q: np.ndarray
    sparsity: float
    sizes: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    penalty: str
    sense = "min"

    @property
    def weights(self) -> np.ndarray:    # the budget's coefficients n_k
        return self.sizes

    @property
    def target(self) -> float:
        return self.sparsity * float(self.sizes.sum())

    def x_of_nu(self, nu: float | np.ndarray) -> np.ndarray:
        """KKT: q_k phi'(s_k) = nu n_k. log: s_k = 1 - q_k/(nu n_k); quadratic: s_k = nu n_k / q_k; clipped."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.penalty == "log":
                s = 1.0 - self.q / (nu * self.sizes)
            else:
                s = np.where(self.q > 0, nu * self.sizes / self.q, np.inf)
        return np.clip(s, self.lower, self.upper)

    def objective(self, x: np.ndarray) -> float:
        if self.penalty == "log":
            return float(np.sum(self.q * -np.log1p(-x)))
        return float(np.sum(self.q * x**2 / 2))

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.q / (1.0 - x) if self.penalty == "log" else self.q * x

    def free_form(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
        n, q = self.sizes, self.q
        if self.penalty == "log":        # n_k s_k = n_k - q_k / nu
            return q / (n * (1 - self.lower)), q / (n * (1 - self.upper)), -q, n.copy(), "inverse"
        with np.errstate(divide="ignore", invalid="ignore"):  # n_k s_k = nu n_k^2 / q_k
            slope = np.where(q > 0, n**2 / q, 0.0)
        return q * self.lower / n, q * self.upper / n, slope, np.zeros_like(n), "linear"


@dataclass(frozen=True, eq=False)
class Solution:
    """Solution of an MDL program with its certificate (see `verify`)."""
    x: np.ndarray               # (K,) decision per layer
    nu: float                   # dual level of the budget constraint (>= 0)
    objective: float
    iterations: int             # bisection steps (0 for the sorted exact path)
    active_lower: np.ndarray    # (K,) bool, x_k at its lower bound
    active_upper: np.ndarray    # (K,) bool, x_k at its upper bound
    kkt_residual: float         # largest relative violation of feasibility / stationarity / slackness
    problem: AllocationProblem | PruningProblem = field(repr=False)
    integer: bool = False
    solver: SolverReport | None = field(default=None, repr=False)   # set by `reference` (cvxpy); None here

    @classmethod
    def at(cls, problem: AllocationProblem | PruningProblem, x: ArrayLike, nu: float, *, iterations: int = 0,
           integer: bool = False, solver: SolverReport | None = None) -> Solution:
        """The solution of `problem` at a candidate (x, nu) from any solver: x within 1e-12 of a bound is put
        on it, then the active sets, objective and KKT residual are computed (`verify` judges them)."""
        x = np.asarray(x, dtype=float)
        with np.errstate(invalid="ignore"):
            active_lower = x <= problem.lower + 1e-12 * np.maximum(1.0, np.abs(problem.lower))
            active_upper = (x >= problem.upper - 1e-12 * np.maximum(1.0, np.abs(problem.upper))) & ~active_lower
        x = np.where(active_lower, problem.lower, np.where(active_upper, problem.upper, x))
        sol = cls(x=x, nu=float(nu), objective=problem.objective(x), iterations=iterations,
                  active_lower=active_lower, active_upper=active_upper, kkt_residual=np.nan,
                  problem=problem, integer=integer, solver=solver)
        return replace(sol, kkt_residual=_kkt_residual(sol))

    # cvxpy's report under the names notebooks 04 and 05 read (`ref.status`, `ref.polished`, `ref.x_solver`)
    status = property(lambda self: self._report().status)
    polished = property(lambda self: self._report().polished)
    x_solver = property(lambda self: self._report().x_solver)

    def _report(self) -> SolverReport:
        if self.solver is None:
            raise AttributeError("only a `reference` (cvxpy) solution carries a solver report")
        return self.solver


# ----------------------------------------------------------------------------- solver

def _spend(problem, x):
    return float(np.dot(problem.weights, x))


def _saturation(problem):
    """Spend range reachable with nu > 0, and where zero-score layers sit (they are flat in the objective)."""
    w, zero = problem.weights, problem.q == 0
    if problem.sense == "max":   # nu -> 0: positive layers at upper, zero layers at lower
        lo_end = np.dot(w, problem.lower)
        hi_end = np.dot(w[~zero], problem.upper[~zero]) + np.dot(w[zero], problem.lower[zero])
    else:                        # nu -> 0: positive layers at lower, zero layers at upper
        lo_end = np.dot(w[~zero], problem.lower[~zero]) + np.dot(w[zero], problem.upper[zero])
        hi_end = np.dot(w, problem.upper)
    return lo_end, hi_end


def _degenerate(problem):
    """Budget beyond what positive-score layers use at any nu > 0: nu = 0 and zero-score layers take the
    remainder in proportion to their room (any split is optimal, the objective is flat in them)."""
    zero, w, t = problem.q == 0, problem.weights, problem.target
    x = np.where(zero, problem.lower if problem.sense == "max" else problem.upper,
                 problem.upper if problem.sense == "max" else problem.lower).astype(float)
    rest = t - np.dot(w, x)
    room = np.where(zero, (problem.upper - x) if problem.sense == "max" else (problem.lower - x), 0.0)
    unbounded = np.isinf(room)
    if rest != 0 and unbounded.any():
        x = x + np.where(unbounded, rest / (unbounded.sum() * w), 0.0)
    elif rest != 0 and np.dot(w, room) != 0:
        x = x + room * (rest / np.dot(w, room))
    return x


def _bracket(problem):
    """nu interval [lo, hi] with spend(lo) on one side of the target and spend(hi) on the other."""
    at_lower, at_upper, *_ = problem.free_form()
    pos = problem.q > 0
    ends = np.concatenate([at_lower[pos], at_upper[pos]])
    ends = ends[np.isfinite(ends) & (ends > 0)]
    lo, hi = (float(ends.min()), float(ends.max())) if ends.size else (1.0, 1.0)
    t, grows = problem.target, problem.sense == "min"   # pruning spend grows with nu, allocation's shrinks

    def spend(nu):
        return _spend(problem, problem.x_of_nu(nu))

    # widen until the target is inside (needed when a bound is infinite or zero); 2000 halvings reach 0.0
    for _ in range(2000):
        if (spend(lo) <= t) if grows else (spend(lo) >= t):
            break
        lo /= 2.0
    for _ in range(2000):
        if (spend(hi) >= t) if grows else (spend(hi) <= t):
            break
        hi *= 2.0
    return lo, hi


def _geometric_mean(lo, hi):
    """sqrt(lo hi), without the product under- or overflowing when nu is below ~1e-154 or above ~1e154."""
    prod = lo * hi
    return np.sqrt(prod) if 1e-300 < prod < 1e300 else np.sqrt(lo) * np.sqrt(hi)


def _bisect(problem, tol, max_iter=400, trace=None):
    """Bisection on log(nu): the spend is monotone in nu, so the bracket halves every step."""
    lo, hi = _bracket(problem)
    t, increasing = problem.target, problem.sense == "min"
    it = 0
    while hi - lo > tol * hi and it < max_iter:
        mid = _geometric_mean(lo, hi) if lo > 0 else 0.5 * hi
        spend = _spend(problem, problem.x_of_nu(mid))
        if trace is not None:
            trace.append((lo, hi, mid, spend))
        it += 1
        if spend == t:
            lo = hi = mid
        elif (spend < t) == increasing:
            lo = mid
        else:
            hi = mid
    return _polish(problem, lo, hi), it


def _polish(problem, lo, hi):
    """Inside a bracket too small to hold a breakpoint, the free set is fixed and the spend is
    a f(nu) + b: solve that exactly so the budget holds to rounding error."""
    nu = _geometric_mean(lo, hi) if lo > 0 else 0.5 * (lo + hi)
    at_lower, at_upper, a, b, form = problem.free_form()
    x = problem.x_of_nu(nu)
    free = (x > problem.lower) & (x < problem.upper)
    if not free.any():
        return nu
    rest = problem.target - np.dot(problem.weights[~free], x[~free]) - b[free].sum()
    a_free = a[free].sum()
    exact = a_free / rest if form == "inverse" else rest / a_free
    return float(exact) if np.isfinite(exact) and exact > 0 and lo * (1 - 1e-9) <= exact <= hi * (1 + 1e-9) else nu


def _sorted_levels(problem: AllocationProblem | PruningProblem) -> np.ndarray:
    """Exact dual levels nu, one per instance (a row of q (n, K), or q (K,) alone), from the sorted breakpoints.

    Walking nu down from +inf, allocation (max) layers go lower -> free -> upper and pruning (min) layers
    upper -> free -> lower: layer k leaves its start bound at `enter_k`, reaches its end bound at `leave_k`,
    and in between spends a_k f(nu) + b_k (f(nu) = 1/nu or nu, see `free_form`). So between consecutive
    breakpoints spend(nu) = A f(nu) + B; one argsort of the 2K breakpoints per row and two cumulative sums
    give (A, B) on every piece, the first breakpoint where the spend reaches the target names the piece,
    and A f(nu) + B = target gives nu. A layer with no score never leaves its start bound (one instance;
    `allocate_batch` requires every q_k > 0).
    """
    at_lower, at_upper, a, b, form = problem.free_form()
    w, rising = problem.weights, problem.sense == "max"     # walking nu down, allocation's spend rises, pruning's falls
    enter, leave = (at_lower, at_upper) if rising else (at_upper, at_lower)
    start, end = (problem.lower, problem.upper) if rising else (problem.upper, problem.lower)
    q = np.atleast_2d(problem.q)
    n = q.shape[0]
    enter, leave, a, b, start, end = (np.broadcast_to(v, q.shape) for v in (enter, leave, a, b, w * start, w * end))
    base = start.sum(axis=1)                                  # (n,) the spend above every breakpoint
    if problem.q.ndim == 1:
        pos = q[0] > 0
        enter, leave, a, b, start, end = (v[:, pos] for v in (enter, leave, a, b, start, end))
    nus = np.concatenate([enter, leave], axis=1)              # (n, 2K)
    d_a = np.concatenate([a, -a], axis=1)
    d_b = np.concatenate([b - start, end - b], axis=1)
    order = np.argsort(-nus, axis=1, kind="stable")
    nus = np.take_along_axis(nus, order, axis=1)
    big_a = np.cumsum(np.take_along_axis(d_a, order, axis=1), axis=1)
    big_b = np.cumsum(np.take_along_axis(d_b, order, axis=1), axis=1) + base[:, None]
    target = np.broadcast_to(np.asarray(problem.target, dtype=float), (n,))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        f = (1.0 / nus) if form == "inverse" else nus
        spend = np.where(np.isfinite(f) & (big_a != 0), big_a * f, 0.0) + big_b   # at each breakpoint
        reached = spend >= target[:, None] if rising else spend <= target[:, None]
        j = np.where(reached.any(axis=1), np.argmax(reached, axis=1), nus.shape[1] - 1)
        rows, prev = np.arange(n), np.maximum(j - 1, 0)
        a_j, b_j = big_a[rows, prev], big_b[rows, prev]       # the piece just above breakpoint j
        root = a_j / (target - b_j) if form == "inverse" else (target - b_j) / a_j
    return np.where((j == 0) | (a_j == 0), nus[rows, j], root)   # j == 0: the target is met at a breakpoint


def _sorted_exact(problem: AllocationProblem | PruningProblem) -> float:
    """The exact nu of one instance (`_sorted_levels` on a single row)."""
    return float(_sorted_levels(problem)[0])


def _solve(problem, method, tol):
    lo_end, hi_end = _saturation(problem)
    t = problem.target
    if (problem.sense == "max" and t >= hi_end) or (problem.sense == "min" and t <= lo_end):
        return Solution.at(problem, _degenerate(problem), 0.0)
    if method == "bisection":
        nu, it = _bisect(problem, tol)
    elif method == "sorted":
        nu, it = _sorted_exact(problem), 0
    else:
        raise ValueError(f"method must be 'bisection' or 'sorted', got {method!r}")
    return Solution.at(problem, problem.x_of_nu(nu), nu, iterations=it)


def _pow2_scale(values) -> float:
    """A power of two near the largest |value|: dividing by it is exact, and brings costs or sizes of
    any magnitude (1e-200 .. 1e200) to order one, so sums and products inside the solver stay finite."""
    top = float(np.max(np.abs(values)))
    if not np.isfinite(top) or top == 0 or 2.0**-60 <= top <= 2.0**60:
        return 1.0
    return float(2.0 ** np.round(np.log2(top)))


def _budget_scale(cost, budget) -> float:
    """The cost scale for program A, unless dividing the budget by it would leave the float range."""
    scale = _pow2_scale(cost)
    with np.errstate(over="ignore", under="ignore"):
        scaled = budget / scale
    return scale if np.isfinite(scaled) and (scaled != 0 or budget == 0) else 1.0


def _spend_error(problem, x) -> float:
    """|sum_k w_k x_k - target| relative to the larger of |target| and sum_k |w_k x_k| (0 when both are 0)."""
    w = problem.weights
    with np.errstate(over="ignore", invalid="ignore"):
        spend = float(np.dot(w, x))
        scale = max(abs(problem.target), float(np.dot(np.abs(w), np.abs(x))))
        err = abs(spend - problem.target)
    if not np.isfinite(err):
        return np.inf
    return 0.0 if err == 0 else err / scale


def _answer(sol: Solution, program: str, tol: float) -> Solution:
    """The solver's own check before handing an answer out: finite x and nu, x in its box, the budget
    met to rounding. Where the scale of the inputs defeats double precision (a budget that buys
    ~1e-20 of a unit at cost 1e20, or sums that overflow), this says so instead of returning garbage."""
    p, x = sol.problem, sol.x
    if program == "A":
        with np.errstate(all="ignore"):
            ratio = p.target / float(np.dot(p.cost, p.beta))
        small = not ratio >= 1
        what = (f"the budget buys {'a tiny fraction of one unit' if small else 'more units than a double holds'}: "
                f"B / sum_k c_k beta_k = {ratio:.3g}")
        fix = ("express x in other units so that B / sum_k c_k beta_k is nearer 1 (scale beta, the bounds and "
               "1 / cost together)")
    else:
        what = f"sparsity {p.sparsity:g} with sizes from {p.sizes.min():g} to {p.sizes.max():g}"
        fix = "use a sparsity of at least ~1e-9, or sizes within a few hundred decades of each other"
    if not (np.all(np.isfinite(x)) and np.isfinite(sol.nu) and np.isfinite(sol.objective)):
        raise ValueError(f"program {program} cannot be solved at the scale of these inputs ({what}): the answer "
                         f"would not be finite. Fix: {fix}")
    if sol.integer:
        over = float(np.dot(p.weights, x)) - p.target
        if over > 1e-12 * max(1.0, abs(p.target)):
            raise ValueError(f"program {program}: whole units overspend the budget by {over:g} at this scale. Fix: {fix}")
        return sol
    err = _spend_error(p, x)
    if err > max(_SPEND_RTOL, 4 * tol):
        raise ValueError(f"program {program} cannot be solved accurately at the scale of these inputs ({what}): "
                         f"the best double-precision answer misses the budget by a relative {err:.2g}. Fix: {fix}")
    if not sol.kkt_residual <= max(_KKT_RTOL, 4 * tol):
        raise ValueError(f"program {program} cannot be solved accurately at the scale of these inputs ({what}): "
                         f"the optimality conditions hold only to {sol.kkt_residual:.2g}. Fix: {fix}")
    return sol


def _rescaled(sol: Solution, problem, scale: float) -> Solution:
    """A solution of the problem with weights divided by `scale`, restated for the original problem:
    x is unchanged and nu scales by 1 / scale (q phi'(x) = nu w)."""
    if scale == 1.0:
        return sol
    return Solution.at(problem, sol.x, sol.nu / scale, iterations=sol.iterations, integer=sol.integer)


def _check_budget(name, target, lo, hi, what):
    if not (lo - 1e-12 * max(1, abs(lo)) <= target <= hi + 1e-12 * max(1, abs(hi))):
        raise ValueError(f"{name} {target:g} is infeasible: it must lie in [{lo:g}, {hi:g}] ({what})")


# ----------------------------------------------------------------------------- public API

def _allocation_terms(k, cost, beta, lower, upper):
    """Program A's per-layer terms as checked (K,) arrays: cost > 0, beta > 0, lower <= upper, lower > -beta."""
    cost = _per_layer("cost", cost, k, positive=True)
    beta = _per_layer("beta", beta, k, positive=True)
    lower = _per_layer("lower", lower, k)
    upper = _per_layer("upper", upper, k, allow_inf=True)
    _check_bounds(lower, upper)
    if np.any(lower <= -beta):
        i = np.flatnonzero(lower <= -beta)[0]
        raise ValueError(f"lower[{i}] = {lower[i]} must be > -beta[{i}] = {-beta[i]} (log(1 + r/beta) undefined)")
    return cost, beta, lower, upper


def allocation_problem(q: ArrayLike, budget: float, *, cost: ArrayLike = 1.0, beta: ArrayLike = 1.0,
                       lower: ArrayLike = 0.0, upper: ArrayLike = np.inf, integer: bool = False) -> AllocationProblem:
    """Program A's data checked once (the ValueError names the first bad value): q normalised to the
    simplex, per-layer terms broadcast to (K,), the budget inside [sum c lower, sum c upper] (whole units,
    `integer=True`, spend at most the budget, so only the lower end binds them)."""
    q = normalise(q)
    cost, beta, lower, upper = _allocation_terms(q.size, cost, beta, lower, upper)
    budget = float(budget)
    if not np.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    lo, hi = float(cost @ lower), float(cost @ upper)
    _check_budget("budget", budget, lo, np.inf if integer else hi, "sum_k cost_k * lower_k .. sum_k cost_k * upper_k")
    return AllocationProblem(q=q, budget=budget, cost=cost, beta=beta, lower=lower, upper=upper)


def pruning_problem(q: ArrayLike, sparsity: float, *, sizes: ArrayLike = 1.0, lower: ArrayLike = 0.0,
                    upper: ArrayLike = 0.99, penalty: str = "log") -> PruningProblem:
    """Program B's data checked once (the ValueError names the first bad value): q normalised, sizes > 0,
    0 <= lower <= upper < 1, and the global sparsity inside the size-weighted means of lower and upper."""
    q = normalise(q)
    k = q.size
    if penalty not in ("log", "quadratic"):
        raise ValueError(f"penalty must be 'log' or 'quadratic', got {penalty!r}")
    sizes = _per_layer("sizes", sizes, k, positive=True)
    lower = _per_layer("lower", lower, k)
    upper = _per_layer("upper", upper, k)
    _check_bounds(lower, upper)
    if np.any(lower < 0) or np.any(upper >= 1):
        raise ValueError(f"sparsity bounds must satisfy 0 <= lower <= upper < 1, got lower min {lower.min():g}, "
                         f"upper max {upper.max():g}")
    sparsity = float(sparsity)
    if not (0 <= sparsity < 1):
        raise ValueError(f"sparsity {sparsity:g} must lie in [0, 1)")
    n = sizes / _pow2_scale(sizes)      # sizes of any magnitude: the means are unchanged by scaling n
    total = n.sum()
    _check_budget("sparsity", sparsity, float(n @ lower / total), float(n @ upper / total),
                  "the size-weighted mean of lower .. of upper")
    return PruningProblem(q=q, sparsity=sparsity, sizes=sizes, lower=lower, upper=upper, penalty=penalty)


def _check_method(method: str) -> None:
    if method not in ("bisection", "sorted"):
        raise ValueError(f"method must be 'bisection' or 'sorted', got {method!r}")


def _check_tol(tol: float) -> None:
    # a coarser stop would return an answer that misses the budget by more than verify() accepts
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.number)) or not 0 < tol <= _SPEND_RTOL:
        raise ValueError(f"tol is the relative width at which bisection on nu stops: it must lie in (0, "
                         f"{_SPEND_RTOL:g}], so the answer meets the budget as accurately as verify() certifies; "
                         f"got {tol!r} (the default is 1e-12)")


def allocate(q: ArrayLike, budget: float, *, cost: ArrayLike = 1.0, beta: ArrayLike = 1.0, lower: ArrayLike = 0.0,
             upper: ArrayLike = np.inf, integer: bool = False, tol: float = 1e-12, method: str = "bisection") -> Solution:
    """Capacity allocation, MDL program A (Amaefuna et al., arXiv 2603.00910, the allocation program).

    maximise sum_k q_k log(1 + r_k / beta_k)   s.t.  sum_k c_k r_k = B,  lower_k <= r_k <= upper_k
    KKT: r_k(nu) = clip(q_k / (nu c_k) - beta_k, lower_k, upper_k). The spend sum_k c_k r_k(nu) is
    non-increasing in nu, so bisection on nu (the taught path) or the sorted breakpoints
    (`method="sorted"`, exact) give the unique optimum. q is normalised to the simplex first.
    Special case beta -> 0, no bounds: r_k = B q_k / c_k.

    `integer=True` returns whole units (ranks, experts) with sum_k c_k r_k <= B: see `integer.greedy`.

    By hand, three layers, unit cost, beta = 1: while every layer is free, sum_k (q_k / nu - 1) = B, so
    nu = 1 / (B + 3). With B = 6: nu = 1/9 and r = 9 q - 1. With B = 1.5 the third layer would go below 0,
    so it stays at its lower bound and the other two share the budget: (0.5 + 0.3) / nu - 2 = 1.5, nu = 8/35.

    >>> sol = allocate([0.5, 0.3, 0.2], 6.0)
    >>> sol.x.round(12), round(sol.nu, 12)
    (array([3.5, 1.7, 0.8]), 0.111111111111)
    >>> sol = allocate([0.5, 0.3, 0.2], 1.5, method="sorted")
    >>> sol.x.round(12), round(sol.nu * 35, 12), sol.active_lower
    (array([1.1875, 0.3125, 0.    ]), 8.0, array([False, False,  True]))
    >>> allocate([0.5, 0.3, 0.2], 6, integer=True).x          # whole ranks: the largest marginal gains
    array([3., 2., 1.])
    """
    problem = allocation_problem(q, budget, cost=cost, beta=beta, lower=lower, upper=upper, integer=integer)
    _check_method(method)
    _check_tol(tol)
    budget, cost = problem.budget, problem.cost
    scale = _budget_scale(cost, budget)     # cost and budget scale together: x is unchanged
    scaled = problem if scale == 1.0 else replace(problem, budget=budget / scale, cost=_frozen(cost / scale))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):   # _answer judges extremes
        sol = _integer_greedy(scaled) if integer else _solve(scaled, method, tol)
        return _answer(_rescaled(sol, problem, scale), "A", tol)


def prune(q: ArrayLike, sparsity: float, *, sizes: ArrayLike = 1.0, lower: ArrayLike = 0.0, upper: ArrayLike = 0.99,
          penalty: str = "log", tol: float = 1e-12, method: str = "bisection") -> Solution:
    """Per-layer sparsity, MDL program B (Amaefuna et al., arXiv 2603.00910, the pruning program).

    minimise sum_k q_k phi(s_k)  s.t.  sum_k n_k s_k = S sum_k n_k,  lower_k <= s_k <= upper_k
    phi(s) = -log(1 - s) ("log": the code length of the kept fraction) or s^2 / 2 ("quadratic").
    KKT: log: s_k = clip(1 - q_k / (nu n_k)); quadratic: s_k = clip(nu n_k / q_k). The sparsity spent is
    non-decreasing in nu, so bisection on nu finds the unique optimum. Low-gain layers are pruned more;
    high-gain layers are protected.

    By hand, three layers of equal size, log penalty, S = 0.5: while every layer is free,
    sum_k (1 - q_k / nu) = 3 S, so nu = 1 / (3 (1 - S)) = 2/3 and s = 1 - 1.5 q.

    >>> sol = prune([0.5, 0.3, 0.2], 0.5)
    >>> sol.x.round(12), round(sol.nu, 12)
    (array([0.25, 0.55, 0.7 ]), 0.666666666667)
    >>> prune([0.5, 0.25, 0.25], 0.5, penalty="quadratic").x.round(12)   # s = nu / q, nu = 1.5 / sum(1/q) = 0.15
    array([0.3, 0.6, 0.6])
    """
    problem = pruning_problem(q, sparsity, sizes=sizes, lower=lower, upper=upper, penalty=penalty)
    _check_method(method)
    _check_tol(tol)
    scale = _pow2_scale(problem.sizes)  # the budget is a share of sum n_k: x is unchanged by scaling n
    scaled = problem if scale == 1.0 else replace(problem, sizes=_frozen(problem.sizes / scale))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        return _answer(_rescaled(_solve(scaled, method, tol), problem, scale), "B", tol)


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=float)
    arr.setflags(write=False)
    return arr


# ----------------------------------------------------------------------------- integer allocation

def _integer_greedy(problem: AllocationProblem) -> Solution:
    """Whole units by `integer.greedy`, warm-started at the continuous optimum (exact for equal costs)."""
    price = _solve(replace(problem, budget=min(problem.budget, float(problem.cost @ problem.upper))), "sorted", 1e-12).nu
    r, nu = greedy(problem, price)
    return Solution.at(problem, r, nu, integer=True)


# ----------------------------------------------------------------------------- certificate

def _kkt_residual(sol: Solution) -> float:
    """Largest relative violation: budget, bounds, dual sign, stationarity / slackness per layer."""
    p, x, nu = sol.problem, sol.x, sol.nu
    w = p.weights
    scale = max(1.0, abs(p.target), float(np.dot(w, np.abs(x))))
    budget = abs(_spend(p, x) - p.target) / scale
    bounds = max(0.0, float(np.max(p.lower - x)), float(np.max(x - p.upper)))
    if sol.integer:
        return max(0.0 if _spend(p, x) <= p.target * (1 + 1e-12) + 1e-12 else budget, bounds)
    # reduced gradient: stationarity says it is 0 on free layers and has the bound's sign on active ones
    sign = 1.0 if p.sense == "max" else -1.0
    red = sign * (p.gradient(x) - nu * w)
    # relative to the problem's gradient scale (a per-layer scale is ~0 when nu ~ 0 at a degenerate end)
    ref = max(float(np.max(np.abs(nu * w))), float(np.max(np.abs(p.gradient(x)))), 1e-300)
    viol = np.where(sol.active_lower, np.maximum(red, 0.0),          # pushing up would not pay
                    np.where(sol.active_upper, np.maximum(-red, 0.0),  # pushing down would not pay
                             np.abs(red))) / ref
    if nu == 0.0:   # degenerate branch: only zero-score layers may be free
        viol = np.where(p.q == 0, 0.0, viol)
    # np.max, not max(): Python's max drops a NaN that is not its first argument, and a NaN must fail
    return float(np.max([budget, bounds, max(0.0, -nu), np.max(viol)]))


def verify(solution: Solution) -> Solution:
    """Check the certificate of a solution on its own and raise naming the violated condition.

    Continuous: primal feasibility (budget, bounds), dual feasibility (nu >= 0) and stationarity with
    complementary slackness per layer (free: q_k phi'(x_k) = nu w_k; at a bound: the reduced gradient
    points out of the box). Integer: feasibility, integrality, and for equal costs no improving
    one-unit move between layers and no affordable improving unit (optimal, see `integer.greedy`).
    Returns the solution so calls chain.
    """
    p, x, nu = solution.problem, np.asarray(solution.x, float), solution.nu
    w = p.weights
    for name, value in (("q", p.q), ("cost or size vector", w), ("budget", p.target)):
        if not np.all(np.isfinite(value)):
            raise AssertionError(f"the problem's {name} is not finite (a non-finite problem is never certified)")
    if x.shape != p.q.shape:
        raise AssertionError(f"shape violated: x has shape {x.shape}, the problem has {p.q.size} layers")
    if not np.all(np.isfinite(x)):
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise AssertionError(f"x is not finite: x[{i}] = {x[i]} (a non-finite answer is never certified)")
    if not np.isfinite(nu):
        raise AssertionError(f"nu is not finite: nu = {nu} (a non-finite answer is never certified)")
    if not np.isfinite(solution.objective):
        raise AssertionError(f"the objective is not finite: {solution.objective} (a non-finite answer is never "
                             "certified)")
    if np.any(x < p.lower - 1e-9 * np.maximum(1, np.abs(p.lower))) or \
       np.any(x > p.upper + 1e-9 * np.maximum(1, np.abs(p.upper))):
        raise AssertionError("primal feasibility violated: some x_k lies outside [lower_k, upper_k]")
    spend, t = _spend(p, x), p.target
    if solution.integer:
        if np.any(x != np.round(x)):
            raise AssertionError("integrality violated: integer solution has fractional entries")
        if spend > t + 1e-9 * max(1.0, abs(t)):
            raise AssertionError(f"budget violated: spend {spend:g} > budget {t:g}")
        if np.ptp(w) == 0:
            check_swaps(p, x)
        return solution
    # relative to the budget itself (a budget of 3e-20 spent as 0 is violated, whatever its units)
    if _spend_error(p, x) > _SPEND_RTOL:
        raise AssertionError(f"budget violated: sum_k w_k x_k = {spend:.12g}, target {t:.12g}")
    if nu < 0:
        raise AssertionError(f"dual feasibility violated: nu = {nu} < 0")
    res = _kkt_residual(solution)
    if not res <= _KKT_RTOL:
        raise AssertionError(f"stationarity / complementary slackness violated: relative residual {res:.3g}")
    return solution


# ----------------------------------------------------------------------------- many instances at once

@dataclass(frozen=True)
class BatchAllocation:
    """Solutions of program A for n instances: x[i] and nu[i] solve row i (see `allocate_batch`)."""
    x: np.ndarray       # (n, K)
    nu: np.ndarray      # (n,)


def allocate_batch(q: ArrayLike, budget: ArrayLike, *, cost: ArrayLike = 1.0, beta: ArrayLike = 1.0,
                   lower: ArrayLike = 0.0, upper: ArrayLike = np.inf) -> BatchAllocation:
    """Program A for n score vectors (rows of q) and n budgets at once, exact, vectorised over instances.

    The routine of `allocate(method="sorted")` (`_sorted_levels`) on all rows together: one argsort of the
    (n, 2K) breakpoints and one cumulative sum give each row's nu in closed form. For slider sweeps,
    regret curves and bootstraps: thousands of instances cost about as much as a few single solves.
    Rows need every q_k > 0 and a budget strictly inside (sum c lower, sum c upper); bounds and costs
    are shared by the rows. No certificate: `verify(allocate(...))` certifies one instance.

    >>> allocate_batch([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], [6.0, 1.5]).x.round(12)   # see `allocate`
    array([[3.5   , 1.7   , 0.8   ],
           [0.    , 0.3125, 1.1875]])
    """
    q = np.atleast_2d(np.asarray(q, dtype=float))
    if q.ndim != 2 or not np.all(np.isfinite(q)) or np.any(q <= 0):
        raise ValueError("allocate_batch needs a 2-d array of finite, positive scores (rows = instances); "
                         "use allocate() for rows with zero scores")
    q = q / q.sum(axis=1, keepdims=True)
    n, k = q.shape
    cost, beta, lower, upper = _allocation_terms(k, cost, beta, lower, upper)
    budget = np.broadcast_to(np.asarray(budget, dtype=float), (n,))
    lo, hi = float(cost @ lower), float(cost @ upper)
    if not np.all((budget > lo) & (budget < hi)):
        i = int(np.flatnonzero(~((budget > lo) & (budget < hi)))[0])
        raise ValueError(f"budget[{i}] = {budget[i]:g} must lie strictly inside ({lo:g}, {hi:g}) for allocate_batch")
    problem = AllocationProblem(q=q, budget=budget, cost=cost, beta=beta, lower=lower, upper=upper)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nu = _sorted_levels(problem)
        x = problem.x_of_nu(nu[:, None])
    bad = ~(np.all(np.isfinite(x), axis=1) & np.isfinite(nu))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {i} of allocate_batch has no finite answer at this scale (budget {budget[i]:g}, "
                         f"sum_k c_k beta_k = {float(cost @ beta):g}): solve it with allocate(), which says why")
    return BatchAllocation(x=x, nu=nu)


# ----------------------------------------------------------------------------- teaching helpers

def bisection_trace(solution_or_problem: Solution | AllocationProblem | PruningProblem, *,
                    tol: float = 1e-12) -> list[tuple[float, float, float, float]]:
    """The bisection steps for a continuous problem: a list of (nu_lo, nu_hi, nu_mid, spend(nu_mid)).

    For the allocation widget: the bracket halves (in log nu) every step around the dual level.
    """
    p = getattr(solution_or_problem, "problem", solution_or_problem)
    steps: list[tuple[float, float, float, float]] = []
    lo_end, hi_end = _saturation(p)
    if (p.sense == "max" and p.target >= hi_end) or (p.sense == "min" and p.target <= lo_end):
        return steps
    _bisect(p, tol, trace=steps)
    return steps


def budget_curve(solution_or_problem: Solution | AllocationProblem | PruningProblem, nus: ArrayLike) -> np.ndarray:
    """sum_k w_k x_k(nu) for each nu: the monotone curve that bisection searches (water-filling picture)."""
    p = getattr(solution_or_problem, "problem", solution_or_problem)
    return np.array([_spend(p, p.x_of_nu(float(nu))) for nu in np.atleast_1d(nus)])


def __getattr__(name: str):
    """`mdl.regret_bound` and `mdl.Regret` live in `regret` (which imports this module): served lazily."""
    if name in ("Regret", "regret_bound"):
        from . import regret
        return getattr(regret, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
