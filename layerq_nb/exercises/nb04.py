"""Checks for notebook 04 (allocation, MDL program A of Amaefuna et al., arXiv 2603.00910).

The learner builds the solver in three pieces, each checked on hidden instances against `mdl.allocate`:
04.1 the KKT allocation r(nu) at a given price nu, 04.2 the bisection on nu that spends the budget
exactly, 04.3 the same program stated in cvxpy and solved by an interior-point method (Clarabel).
"""
from __future__ import annotations

import numpy as np

from ._core import Mismatch, NotAnswered, ReturnedNone, call, close, exercise, instance_rng, one_number


def _program_a_instance(rng: np.random.Generator, k: int):
    q = rng.dirichlet(np.ones(k))
    if k > 2:
        q[rng.integers(k)] = 0.0                       # a layer with no gain: its floor must hold
        q /= q.sum()
    cost = rng.uniform(0.5, 3.0, size=k)
    beta = rng.uniform(0.2, 2.0, size=k)
    return q, cost, beta


def _package_x_of_nu(nu, q, cost, beta, lower, upper):
    from ..mdl import AllocationProblem
    k = len(q)
    return AllocationProblem(q=q, budget=0.0, cost=cost, beta=beta, lower=np.broadcast_to(lower, k).astype(float),
                             upper=np.broadcast_to(upper, k).astype(float)).x_of_nu(nu)


# ----------------------------------------------------------------------------- 04.1 r(nu)

@exercise("04.1", title="r(nu): the KKT allocation at a price nu", answer="allocation_at",
          hints=("Differentiate the Lagrangian q_k log(1 + r_k / beta_k) - nu c_k r_k in r_k and set it to zero.",
                 "That gives q_k / (beta_k + r_k) = nu c_k: solve for r_k.",
                 "Then clip to [lower, upper] with np.clip: the bounds are where complementary slackness acts."))
def _allocation_at(allocation_at) -> str:
    cases = [(3, 0.1, 0.0, 4.0), (7, 0.02, 0.0, 50.0), (12, 0.5, 1.0, 3.0), (1, 0.3, 0.0, np.inf), (40, 0.05, None, None)]
    for i, (k, nu, lower, upper) in enumerate(cases):
        rng = instance_rng("04.1", i)
        q, cost, beta = _program_a_instance(rng, k)
        if lower is None:                              # per-layer bounds, some layers unbounded above
            lower = rng.uniform(0.0, 1.0, size=k)
            upper = np.where(rng.random(k) < 0.5, np.inf, lower + rng.uniform(0.5, 5.0, size=k))
            bounds = "per-layer bounds, some upper = inf"
        else:
            bounds = f"bounds [{lower}, {upper}]"
        expected = _package_x_of_nu(nu, q, cost, beta, lower, upper)
        where = f"hidden instance {i + 1} (K = {k}, nu = {nu}, {bounds})"
        got = call(allocation_at, nu, q, cost, beta, lower, upper, where=where)
        if not isinstance(got, np.ndarray):       # the notebook's later cells mask and multiply it with arrays
            raise Mismatch(f"{where}: return a numpy array (np.clip gives one), got a {type(got).__name__}")
        close(got, expected, where=where, rtol=1e-9, atol=1e-9, what="allocation")
    return ("one dual price nu sets every layer's allocation: r_k(nu) = clip(q_k / (nu c_k) - beta_k, lower_k, upper_k), "
            "a zero-score layer stays at its lower bound.")


# ----------------------------------------------------------------------------- 04.2 bisection on nu

def _bisection_instances():
    """(description, q, cost, beta, lower, upper, budget): a small one, bounds active with a zero score,
    a large K with LoRA-sized costs (nu ~ 1e-8), and two whose nu lies far outside [1e-8, 1e8]."""
    out = []
    rng = instance_rng("04.2", 0)
    q, cost, beta = _program_a_instance(rng, 3)
    out.append(("K = 3, no upper bounds", q, cost, beta, np.zeros(3), np.full(3, np.inf),
                float(cost @ rng.uniform(1.0, 4.0, 3))))
    rng = instance_rng("04.2", 1)
    q, cost, beta = _program_a_instance(rng, 12)
    lower, upper = np.ones(12), np.full(12, 3.0)
    out.append(("K = 12, a zero score, bounds [1, 3] active", q, cost, beta, lower, upper, float(cost @ np.full(12, 2.0))))
    rng = instance_rng("04.2", 2)
    q, cost, beta = _program_a_instance(rng, 2000)
    cost = np.round(cost * 1e4)
    out.append(("K = 2000, LoRA-sized costs (about 1e4 per unit)", q, cost, np.ones(2000), np.zeros(2000),
                np.full(2000, 16.0), float(4 * cost.sum())))
    rng = instance_rng("04.2", 3)
    q, cost, beta = _program_a_instance(rng, 6)
    cost = cost * 1e5
    out.append(("K = 6, costs about 1e5, a large budget (nu far below 1e-8)", q, cost, beta, np.zeros(6),
                np.full(6, np.inf), float(cost @ rng.uniform(1e3, 5e3, 6))))
    rng = instance_rng("04.2", 4)
    q, cost, beta = _program_a_instance(rng, 5)
    cost, beta = cost * 1e-8, beta * 1e-4
    out.append(("K = 5, costs about 1e-8, beta about 1e-4 (nu far above 1e8)", q, cost, beta, np.zeros(5),
                np.full(5, np.inf), float(cost @ rng.uniform(1e-4, 1e-3, 5))))
    return out


_MAX_CALLS = 20_000


@exercise("04.2", title="Bisection on nu: spend exactly the budget", answer="bisect_nu",
          hints=(("The spend S(nu) = sum_k c_k r_k(nu) never increases with nu. First find lo < hi with "
                  "S(lo) >= B >= S(hi), starting anywhere (nu = 1) and halving lo / doubling hi until that holds."),
                 ("Then halve the bracket at its geometric mean sqrt(lo * hi) (bisection in log nu: nu can be 1e-10 "
                  "or 1e10), keeping the half whose ends still straddle B."),
                 ("Stop when hi / lo - 1 is below about 1e-12 (or after a fixed number of halvings, e.g. 200). "
                  "If S(mid) > B, the price is too low: mid becomes the new lo.")))
def _bisect_nu(bisect_nu) -> str:
    from ..mdl import allocate
    for i, (what, q, cost, beta, lower, upper, budget) in enumerate(_bisection_instances()):
        where = f"hidden instance {i + 1} ({what}; budget {budget:.6g})"
        sol = allocate(q, budget, cost=cost, beta=beta, lower=lower, upper=upper)
        calls = [0]

        def spend(nu, q=q, cost=cost, beta=beta, lower=lower, upper=upper, calls=calls, where=where):
            calls[0] += 1
            if calls[0] > _MAX_CALLS:
                raise Mismatch(f"{where}: your function called spend more than {_MAX_CALLS:,} times: does its loop "
                               "stop? (Stop when hi / lo is within 1e-12 of 1, or after a fixed number of halvings.)")
            return float(cost @ _package_x_of_nu(float(nu), q, cost, beta, lower, upper))

        nu = one_number(call(bisect_nu, spend, budget, where=where), where=where, what="nu")
        if not np.isfinite(nu) or nu <= 0:
            raise Mismatch(f"{where}: nu must be a finite positive price, got {nu}")
        spent = spend(nu)
        # 1e-10: the stopping rule asked for (nu_hi / nu_lo - 1 < 1e-12) lands far inside it, and the
        # notebook's comparison with lq.allocate asserts 1e-9 on the real scores
        if not np.isclose(nu, sol.nu, rtol=1e-10, atol=0.0):
            direction = ("too much: nu is too low, raise it" if spent > budget
                         else "too little: nu is too high, lower it")
            close_enough = np.isclose(nu, sol.nu, rtol=1e-4, atol=0.0)
            raise Mismatch(f"{where}: expected nu = {sol.nu:.14g}, got {nu:.14g}; at your nu the spend is "
                           f"{spent:.10g} against the budget {budget:.10g}, {direction}. "
                           + ("(Close: does your loop run until nu_hi / nu_lo - 1 < 1e-12?)" if close_enough else
                              "(Does your bracket reach this nu, and do you keep the half that straddles the budget?)"))
        close(_package_x_of_nu(nu, q, cost, beta, lower, upper), sol.x, where=where, rtol=1e-5,
              atol=1e-9 * max(1.0, float(np.max(np.abs(sol.x)))), what="allocation r(nu) at your nu")
    return ("your bisection brackets nu* wherever it lies and halves the bracket in log nu until the spend "
            "equals the budget: O(K log 1/eps) work, as in Algorithm 1 of the MDL paper.")


# ----------------------------------------------------------------------------- 04.3 cvxpy

def _cvxpy_instances():
    """(description, q, cost, beta, lower, upper, budget) for the cvxpy formulation."""
    out = []
    q, cost, beta = np.array([0.2, 0.3, 0.5]), np.ones(3), np.ones(3)
    out.append(("K = 3, unit costs, beta = 1, no upper bound", q, cost, beta, np.zeros(3), np.full(3, np.inf), 6.0))
    rng = instance_rng("04.3", 1)
    q, cost, beta = _program_a_instance(rng, 8)
    out.append(("K = 8, a zero score, upper bounds 2 (some active)", q, cost, beta, np.zeros(8), np.full(8, 2.0),
                float(cost @ np.full(8, 1.2))))
    rng = instance_rng("04.3", 2)
    q, cost, beta = _program_a_instance(rng, 10)
    lower = np.ones(10)
    upper = np.where(rng.random(10) < 0.5, np.inf, rng.uniform(2.0, 4.0, 10))
    out.append(("K = 10, lower bounds 1 (some active), per-layer upper bounds, some inf", q, cost, beta, lower, upper,
                float(cost @ np.full(10, 2.0))))
    rng = instance_rng("04.3", 3)
    q, cost, beta = _program_a_instance(rng, 30)
    cost = np.round(cost * 1e4)
    out.append(("K = 30, LoRA-sized costs, ranks in [0, 16]", q, cost, np.ones(30), np.zeros(30), np.full(30, 16.0),
                float(4 * cost.sum())))
    return out


@exercise("04.3", title="Program A in cvxpy, solved by Clarabel", answer="program_a_cvxpy",
          hints=(("r = cp.Variable(K). The objective is a weighted sum of concave atoms: cp.log1p of an affine "
                  "expression of r, weighted by q_k >= 0, inside cp.Maximize."),
                 ("Constraints: the budget as an equality (cost @ r == budget), r >= lower, and r <= upper only "
                  "where upper is finite (index both with np.isfinite(upper))."),
                 ("Solve with problem.solve(solver=cp.CLARABEL) and return r.value (a numpy array). Clarabel "
                  "reports 'optimal' within a small duality gap: expect r to agree with the closed form to ~1e-4.")))
def _program_a_cvxpy(program_a_cvxpy) -> str:
    from ..mdl import allocate
    for i, (what, q, cost, beta, lower, upper, budget) in enumerate(_cvxpy_instances()):
        where = f"hidden instance {i + 1} ({what}; budget {budget:.6g})"
        sol = allocate(q, budget, cost=cost, beta=beta, lower=lower, upper=upper)
        try:
            got = call(program_a_cvxpy, q.copy(), budget, cost.copy(), beta.copy(), lower.copy(), upper.copy(),
                       where=where)
        except NotAnswered as why:
            if "returned None" not in str(why):
                raise
            raise NotAnswered(f"{why}. In cvxpy r.value is also None until problem.solve() has run, and after a "
                              "solve that did not reach 'optimal' (problem.status says which)") from None
        except ReturnedNone:
            raise Mismatch(f"{where}: your function returned None: r.value is None when problem.solve() did not "
                           "reach 'optimal' (print problem.status: infeasible? unbounded?)") from None
        if not isinstance(got, np.ndarray):
            raise Mismatch(f"{where}: return r.value, a numpy array of K numbers; got a {type(got).__name__}")
        if got.shape != sol.x.shape:              # r.value of cp.Variable(K); the notebook computes cost @ r
            raise Mismatch(f"{where}: expected r of shape {sol.x.shape} (cp.Variable(K)), got {got.shape}")
        r = got.astype(float)
        if not np.all(np.isfinite(r)):
            raise Mismatch(f"{where}: r has nan or inf: did the solve succeed (problem.status == 'optimal')?")
        scale = max(1.0, float(np.max(np.abs(sol.x))))
        spent = float(cost @ r)
        if not np.isclose(spent, budget, rtol=1e-6):
            raise Mismatch(f"{where}: your r spends sum_k c_k r_k = {spent:.8g}, not the budget {budget:.8g}")
        if np.any(r < lower - 1e-6 * scale):
            k = int(np.argmax(lower - r))
            raise Mismatch(f"{where}: r[{k}] = {r[k]:.6g} is below its lower bound {lower[k]:g}")
        finite = np.isfinite(upper)
        if np.any(r[finite] > upper[finite] + 1e-6 * scale):
            k = int(np.flatnonzero(finite)[np.argmax(r[finite] - upper[finite])])
            raise Mismatch(f"{where}: r[{k}] = {r[k]:.6g} is above its upper bound {upper[k]:g}")
        with np.errstate(invalid="ignore", divide="ignore"):
            value = float(np.sum(q * np.log1p(np.maximum(r, lower) / beta)))
        if not value >= sol.objective - 1e-6 * max(1.0, abs(sol.objective)):
            raise Mismatch(f"{where}: your r is feasible, but sum_k q_k log(1 + r_k / beta_k) = {value:.8g} is below "
                           f"the optimum {sol.objective:.8g}: it maximises another objective (check each term "
                           "q_k log(1 + r_k / beta_k): the weight q_k, the 1 + and the scale 1 / beta_k)")
        close(r, sol.x, where=where, rtol=1e-3, atol=1e-3 * scale, what="r")
    return ("cvxpy states program A as a convex problem (exponential cones) and Clarabel solves it by an interior-point "
            "method: the same r as the closed form, to the solver's tolerance.")
