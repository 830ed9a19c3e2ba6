"""MDL programs A and B: closed form + bisection against cvxpy, brute force, and the theory's identities."""
from __future__ import annotations

import itertools
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import allocation_instances, pruning_instances, scores

from layerq_nb import mdl, reference

# LAYERQ_EXAMPLES=2000 for a thorough run; CI keeps the default lean
EXAMPLES = int(os.environ.get("LAYERQ_EXAMPLES", 60))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="cvxpy")   # "solution may be inaccurate" on easy instances
        warnings.simplefilter("error", RuntimeWarning)      # but numpy's own (inf - inf, ...) are errors
        return fn(*args, **kw)


def assert_matches_reference(ours, ref, scale):
    """Objectives to 1e-7 relative; x to 1e-6 of its scale on layers with a score (x is flat where q = 0).

    Clarabel's own x is only as accurate as its duality gap allows (up to ~4e-6 relative on instances it
    calls optimal), so it is checked to 1e-4; the reference then polishes it (Newton steps on the active
    set Clarabel found, `reference._polish`), and that must agree to 1e-6 (measured over 1,500 draws of
    both programs: 1.3e-10 at worst, where Clarabel's own x was up to 4.7e-6 off). Draws where Clarabel reports an inaccurate solution are discarded (`assume`).
    """
    assert ours.objective == pytest.approx(ref.objective, rel=1e-7, abs=1e-9)
    pos = ours.problem.q > 0
    np.testing.assert_allclose(ours.x[pos], ref.x_solver[pos], rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.x[pos], ref.x[pos], rtol=1e-6, atol=1e-6 * scale)


# ----------------------------------------------------------------------------- against cvxpy

@SETTINGS
@given(allocation_instances())
def test_allocate_matches_cvxpy(inst):
    ours = mdl.verify(mdl.allocate(**inst))
    ref = _quiet(reference.allocate, **inst)
    assume(ref.status == "optimal")
    scale = max(1.0, float(np.max(np.abs(ours.x))))
    assert_matches_reference(ours, ref, scale)
    if ours.nu > 0 and not (ours.active_lower | ours.active_upper).all():
        assert ours.nu == pytest.approx(ref.nu, rel=1e-4)   # dual level is unique when a layer is free


@SETTINGS
@given(pruning_instances())
def test_prune_matches_cvxpy(inst):
    ours = mdl.verify(mdl.prune(**inst))
    ref = _quiet(reference.prune, **inst)
    assume(ref.status == "optimal")
    assert_matches_reference(ours, ref, 1.0)
    if ours.nu > 0 and not (ours.active_lower | ours.active_upper).all():
        assert ours.nu == pytest.approx(ref.nu, rel=1e-4)


def test_reference_polish_reaches_the_optimum_and_repairs_a_wrong_active_set():
    """The polish starts from the solver's active set: from Clarabel's x it reaches the optimum (to 1e-12,
    where Clarabel alone is ~1e-6 off); from a point whose active set is wrong (every layer free, where the
    optimum has layers at both bounds) Newton breaks a bound, the active-set rounds fix and free layers
    until every multiplier has its sign, and it lands on the same optimum."""
    q = np.array([0.02, 0.3, 1.0, 0.05, 0.6])
    ours = mdl.allocate(q, budget=12.0, upper=5.0)
    assert ours.active_upper.any() and ours.active_lower.any()
    ref = _quiet(reference.allocate, q, budget=12.0, upper=5.0)
    assert ref.polished
    np.testing.assert_allclose(ref.x, ours.x, atol=1e-12)
    assert ref.nu == pytest.approx(ours.nu, rel=1e-12)
    qn, everywhere_free = q / q.sum(), np.full(5, 12.0 / 5)
    ones = np.ones(5)
    repaired = reference._polish("allocate", qn, everywhere_free, ones, 12.0, 0 * ones, 5 * ones, beta=ones)
    assert repaired is not None
    np.testing.assert_allclose(repaired[0], ours.x, atol=1e-12)
    assert repaired[1] == pytest.approx(ours.nu, rel=1e-9)                   # mdl normalises q as qn


@pytest.mark.parametrize("k", [1, 300, 5000])
def test_large_and_single_layer_instances_match_cvxpy(k):
    """No hypothesis here, so an inaccurate reference would fail the test instead of being discarded."""
    rng = np.random.default_rng(k)
    q = rng.uniform(0.01, 1.0, k)
    q[rng.random(k) < 0.1] = 0.0
    q[0] = 1.0
    cost = rng.uniform(1, 3, k)
    a = mdl.verify(mdl.allocate(q, budget=4.0 * k, cost=cost, upper=10.0))
    ref = _quiet(reference.allocate, q, budget=4.0 * k, cost=cost, upper=10.0)
    assert_matches_reference(a, ref, 10.0)
    b = mdl.verify(mdl.prune(q, 0.6, sizes=cost))
    ref = _quiet(reference.prune, q, 0.6, sizes=cost)
    assert_matches_reference(b, ref, 1.0)


# ----------------------------------------------------------------------------- the two solution paths

@SETTINGS
@given(allocation_instances(max_k=40))
def test_bisection_equals_sorted_breakpoints_allocation(inst):
    a = mdl.allocate(**inst, method="bisection")
    b = mdl.allocate(**inst, method="sorted")
    np.testing.assert_allclose(a.x, b.x, rtol=1e-9, atol=1e-9)
    assert b.iterations == 0 and a.iterations > 0 or a.nu == 0
    mdl.verify(b)


@SETTINGS
@given(allocation_instances(max_k=40), st.integers(1, 6), st.integers(0, 2**31))
def test_batch_equals_one_by_one(inst, n, seed):
    """allocate_batch on n instances (perturbed positive scores, spread budgets) equals n calls of allocate."""
    rng = np.random.default_rng(seed)
    q = np.maximum(inst["q"], 0.05) * rng.uniform(0.5, 1.5, size=(n, inst["q"].size))
    k = q.shape[1]
    c, lower = np.broadcast_to(inst["cost"], (k,)), np.broadcast_to(inst["lower"], (k,))
    upper = np.broadcast_to(inst["upper"], (k,))
    lo = float(c @ lower)
    hi = float(c @ upper) if np.all(np.isfinite(upper)) else lo + 20.0 * k
    budgets = lo + rng.uniform(0.02, 0.98, size=n) * (hi - lo)
    batch = mdl.allocate_batch(q, budgets, cost=inst["cost"], beta=inst["beta"], lower=inst["lower"], upper=inst["upper"])
    for i in range(n):
        one = mdl.allocate(q[i], budgets[i], cost=inst["cost"], beta=inst["beta"], lower=inst["lower"],
                           upper=inst["upper"], method="sorted")
        np.testing.assert_allclose(batch.x[i], one.x, rtol=1e-9, atol=1e-9)
        assert batch.nu[i] == one.nu            # one routine (`_sorted_levels`) behind both: the same float


@SETTINGS
@given(allocation_instances(max_k=40))
def test_sorted_levels_meet_the_budget(inst):
    """The shared sorted-breakpoint routine, checked against the spend evaluated directly at its nu (zero
    scores, ties, infinite bounds included): the closed form x(nu) spends the budget to rounding."""
    problem = mdl.allocation_problem(**inst)
    lo_end, hi_end = mdl._saturation(problem)
    assume(lo_end < problem.budget < hi_end)
    nu = mdl._sorted_levels(problem)
    assert nu.shape == (1,) and np.isfinite(nu[0]) and nu[0] > 0
    spend = problem.cost @ problem.x_of_nu(nu[0])
    assert spend == pytest.approx(problem.budget, rel=1e-12, abs=1e-12)


def test_batch_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="positive scores"):
        mdl.allocate_batch([[0.5, 0.0]], 1.0)
    with pytest.raises(ValueError, match="strictly inside"):
        mdl.allocate_batch([[0.5, 0.5]], 2.0, upper=1.0)


@SETTINGS
@given(pruning_instances(max_k=40))
def test_bisection_equals_sorted_breakpoints_pruning(inst):
    a = mdl.prune(**inst, method="bisection")
    b = mdl.verify(mdl.prune(**inst, method="sorted"))
    np.testing.assert_allclose(a.x, b.x, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- identities

def test_proportional_special_case():
    """beta -> 0 and no bounds: r_k = B q_k / c_k (the KKT point of sum q log r)."""
    q, c, budget = np.array([1.0, 2.0, 5.0]), np.array([1.0, 2.0, 0.5]), 40.0
    sol = mdl.allocate(q, budget, cost=c, beta=1e-12)
    np.testing.assert_allclose(sol.x, budget * (q / q.sum()) / c, rtol=1e-9)


def test_water_filling_by_hand():
    """q = (0.1, 0.3, 0.6), B = 10, beta = 1: nu = 1/13, r = (0.3, 2.9, 6.8)."""
    sol = mdl.allocate([0.1, 0.3, 0.6], 10)
    np.testing.assert_allclose(sol.x, [0.3, 2.9, 6.8], atol=1e-12)
    assert sol.nu == pytest.approx(1 / 13, rel=1e-12)
    assert not sol.active_lower.any() and not sol.active_upper.any()


def test_zero_score_layer_gets_the_bound_that_protects_nothing():
    a = mdl.allocate([0.0, 1.0], 5)
    assert a.x[0] == 0 and a.active_lower[0]
    p = mdl.prune([0.0, 1.0], 0.5, upper=0.9)
    assert p.x[0] == 0.9 and p.active_upper[0]          # a layer with no gain is pruned first


@given(q=scores(min_k=2), factor=st.floats(0.1, 100.0), seed=st.integers(0, 1000))
@settings(max_examples=EXAMPLES // 2, deadline=None)
def test_invariances(q, factor, seed):
    """Scaling q changes nothing (it is normalised); permuting layers permutes the answer."""
    base = mdl.allocate(q, 3.0 * q.size, upper=8.0)
    np.testing.assert_allclose(mdl.allocate(factor * q, 3.0 * q.size, upper=8.0).x, base.x, atol=1e-9)
    perm = np.random.default_rng(seed).permutation(q.size)
    np.testing.assert_allclose(mdl.allocate(q[perm], 3.0 * q.size, upper=8.0).x, base.x[perm], atol=1e-9)
    pr = mdl.prune(q, 0.5)
    np.testing.assert_allclose(mdl.prune(q[perm], 0.5).x, pr.x[perm], atol=1e-9)


def test_monotone_in_score():
    """Higher q: more capacity under A, less sparsity under B."""
    q = np.array([0.05, 0.1, 0.2, 0.3, 0.35])
    assert np.all(np.diff(mdl.allocate(q, 12).x) > 0)
    assert np.all(np.diff(mdl.prune(q, 0.5).x) < 0)


def test_verify_rejects_a_wrong_solution():
    from dataclasses import replace
    sol = mdl.allocate([0.2, 0.8], 4.0)
    with pytest.raises(AssertionError, match="budget"):
        mdl.verify(replace(sol, x=sol.x + 0.1))
    with pytest.raises(AssertionError, match="stationarity"):
        mdl.verify(replace(sol, x=sol.x[::-1].copy()))
    with pytest.raises(AssertionError, match="dual feasibility"):
        mdl.verify(replace(sol, nu=-1.0))
    with pytest.raises(AssertionError, match="primal feasibility"):
        mdl.verify(replace(sol, x=np.array([-1.0, 5.0])))


def test_verify_never_certifies_a_non_finite_objective_or_problem():
    from dataclasses import replace
    with pytest.raises(AssertionError, match="objective is not finite"):
        mdl.verify(replace(mdl.allocate([0.5, 0.3, 0.2], 6.0), objective=np.nan))
    ones = np.ones(3)
    edge = mdl.PruningProblem(q=np.array([0.5, 0.3, 0.2]), sparsity=2 / 3, sizes=ones, lower=0 * ones, upper=ones,
                              penalty="log")
    with np.errstate(divide="ignore", invalid="ignore"):    # s = 1 keeps nothing: -log(1 - s) = inf
        with pytest.raises(AssertionError, match="objective is not finite: inf"):
            mdl.verify(mdl.Solution.at(edge, [1.0, 0.5, 0.5], 1.0))
        with pytest.raises(AssertionError, match="q is not finite"):
            mdl.verify(mdl.Solution.at(replace(edge, q=np.array([np.nan, 0.5, 0.5]), upper=0.99 * ones),
                                       [0.9, 0.5, 0.6], 1.0))


@pytest.mark.parametrize("tol", [1.0, 1e-6, 0.0, -1e-12, float("nan"), True, "1e-12"])
def test_a_tolerance_coarser_than_the_certificate_is_refused(tol):
    # tol=1.0 used to return [4, 4, 2.5]: 10.5 spent of a budget of 10, without a word
    for solve in (lambda: mdl.allocate([0.7, 0.2, 0.1], 10, upper=4, tol=tol), lambda: mdl.prune([0.5, 0.5], 0.5, tol=tol)):
        with pytest.raises(ValueError, match="tol is the relative width"):
            solve()


# ----------------------------------------------------------------------------- integer allocation

def _brute_force(q, budget, cost, upper):
    best, best_r = -np.inf, None
    for r in itertools.product(*[range(int(u) + 1) for u in upper]):
        r = np.array(r, float)
        if cost @ r <= budget + 1e-9:
            value = np.sum(q * np.log1p(r))
            if value > best + 1e-12:
                best, best_r = value, r
    return best, best_r


@settings(max_examples=EXAMPLES, deadline=None)
@given(q=scores(min_k=1, max_k=4), budget=st.integers(0, 8), upper=st.integers(1, 6))
def test_integer_greedy_is_optimal_for_equal_costs(q, budget, upper):
    budget = min(budget, upper * q.size)
    sol = mdl.verify(mdl.allocate(q, budget, upper=upper, integer=True))
    best, _ = _brute_force(q / q.sum(), budget, np.ones(q.size), [upper] * q.size)
    assert sol.objective == pytest.approx(best, abs=1e-12)
    assert sol.x.sum() == budget                              # the whole budget is spent when reachable


@settings(max_examples=EXAMPLES, deadline=None)
@given(q=scores(min_k=1, max_k=4), budget=st.integers(1, 10), costs=st.lists(st.integers(1, 3), min_size=4, max_size=4))
def test_integer_greedy_with_unequal_costs_is_feasible_and_maximal(q, budget, costs):
    cost = np.array(costs[: q.size], float)
    sol = mdl.verify(mdl.allocate(q, budget, cost=cost, upper=5, integer=True))
    assert cost @ sol.x <= budget
    room = budget - cost @ sol.x
    addable = (sol.x < 5) & (cost <= room) & (q > 0)
    assert not addable.any()                                  # no further improving unit fits
    best, _ = _brute_force(q / q.sum(), budget, cost, [5] * q.size)
    assert sol.objective <= best + 1e-12                      # documented: not always optimal here


def test_integer_keeps_lower_bounds_and_budget():
    sol = mdl.allocate([0.7, 0.2, 0.1], 10, lower=1, upper=6, integer=True)
    assert sol.x.sum() == 10 and sol.x.min() >= 1 and sol.x.max() <= 6
    assert np.array_equal(sol.x, np.round(sol.x))


# ----------------------------------------------------------------------------- teaching helpers

def test_bisection_trace_brackets_the_dual_level():
    sol = mdl.allocate([0.1, 0.3, 0.6], 10)
    steps = mdl.bisection_trace(sol)
    assert len(steps) == sol.iterations
    widths = [hi / lo for lo, hi, _, _ in steps]
    assert all(b < a for a, b in zip(widths, widths[1:]))    # the bracket shrinks every step
    lo, hi, _, _ = steps[-1]
    assert lo <= sol.nu * (1 + 1e-9) and sol.nu <= hi * (1 + 1e-9)


def test_budget_curve_is_monotone_and_hits_the_budget_at_nu():
    sol = mdl.allocate([0.1, 0.3, 0.6], 10, cost=[1, 2, 3])
    nus = np.logspace(-3, 1, 50)
    curve = mdl.budget_curve(sol, nus)
    assert np.all(np.diff(curve) <= 1e-12)
    assert mdl.budget_curve(sol, [sol.nu])[0] == pytest.approx(10.0, rel=1e-10)
    pr = mdl.prune([0.1, 0.3, 0.6], 0.5)
    assert np.all(np.diff(mdl.budget_curve(pr, nus)) >= -1e-12)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: mdl.allocate([0.5, 0.5], 100, upper=10), r"budget 100 is infeasible: it must lie in \[0, 20\]"),
    (lambda: mdl.allocate([0.5, 0.5], -1), r"infeasible"),
    (lambda: mdl.allocate([0.5, -0.1], 1), r"q\[1\] = -0.1"),
    (lambda: mdl.allocate([0.5, np.nan], 1), r"finite"),
    (lambda: mdl.allocate([0.0, 0.0], 1), r"all zero"),
    (lambda: mdl.allocate([0.5, 0.5], 1, lower=2, upper=1), r"bounds cross at layer 0"),
    (lambda: mdl.allocate([0.5, 0.5], 1, cost=[1, -1]), r"cost\[1\] = -1.0 must be > 0"),
    (lambda: mdl.allocate([0.5, 0.5], 1, cost=[1, 1, 1]), r"one value per layer"),
    (lambda: mdl.prune([0.5, 0.5], 1.0), r"sparsity 1 must lie in \[0, 1\)"),
    (lambda: mdl.prune([0.5, 0.5], 0.5, upper=0.3), r"sparsity 0.5 is infeasible: it must lie in \[0, 0.3\]"),
    (lambda: mdl.prune([0.5, 0.5], 0.5, sizes=[1, np.inf]), r"sizes\[1\] = inf is not finite"),
    (lambda: mdl.prune([0.5, 0.5], 0.5, penalty="cubic"), r"penalty must be"),
    (lambda: mdl.allocate([0.5, 0.5], 1, lower=0.2, upper=0.8, integer=True), r"no whole number"),
])
def test_bad_input_names_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()
