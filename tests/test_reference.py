"""`reference` answers are `mdl.Solution`s of the same problem, so `mdl.verify` certifies cvxpy's answer
(after the active-set polish) exactly as it certifies the closed form; the solver's report rides along."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from layerq_nb import mdl, reference


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="cvxpy")
        return fn(*args, **kw)


def _random_allocation(rng):
    k = int(rng.integers(1, 25))
    q = rng.uniform(0.01, 1.0, k)
    q[rng.random(k) < 0.2] = 0.0                     # zero scores sit at a bound in the optimum
    q[rng.integers(k)] = rng.uniform(0.1, 1.0)
    cost, beta = rng.uniform(0.5, 3.0, k), rng.uniform(0.2, 2.0, k)
    lower = rng.choice([0.0, 0.5, 1.0], k)
    upper = lower + np.where(rng.random(k) < 0.4, np.inf, rng.uniform(0.5, 10.0, k))
    lo = cost @ lower
    hi = cost @ upper if np.all(np.isfinite(upper)) else lo + 20.0 * k
    return dict(q=q, budget=float(lo + rng.uniform(0.02, 0.98) * (hi - lo)), cost=cost, beta=beta,
                lower=lower, upper=upper)


def _random_pruning(rng):
    k = int(rng.integers(1, 25))
    q = rng.uniform(0.01, 1.0, k)
    q[rng.random(k) < 0.2] = 0.0
    q[rng.integers(k)] = rng.uniform(0.1, 1.0)
    sizes = rng.uniform(1.0, 10.0, k)
    lower, upper = rng.choice([0.0, 0.1, 0.2], k), rng.choice([0.6, 0.8, 0.95, 0.99], k)
    lo, hi = sizes @ lower / sizes.sum(), sizes @ upper / sizes.sum()
    return dict(q=q, sparsity=float(lo + rng.uniform(0.02, 0.98) * (hi - lo)), sizes=sizes, lower=lower,
                upper=upper, penalty=str(rng.choice(["log", "quadratic"])))


@pytest.mark.parametrize("seed", range(20))
def test_verify_certifies_the_reference_allocation(seed):
    inst = _random_allocation(np.random.default_rng(seed))
    ref = mdl.verify(_quiet(reference.allocate, **inst))
    assert type(ref) is mdl.Solution and ref.solver.polished
    ours = mdl.allocate(**inst)
    pos = ours.problem.q > 0                          # x is flat where q = 0: any split there is optimal
    np.testing.assert_allclose(ref.x[pos], ours.x[pos], rtol=1e-6, atol=1e-6 * max(1.0, float(np.max(ours.x))))


@pytest.mark.parametrize("seed", range(20))
def test_verify_certifies_the_reference_pruning(seed):
    inst = _random_pruning(np.random.default_rng(1000 + seed))
    ref = mdl.verify(_quiet(reference.prune, **inst))
    assert type(ref) is mdl.Solution and ref.solver.polished
    pos = ref.problem.q > 0
    np.testing.assert_allclose(ref.x[pos], mdl.prune(**inst).x[pos], rtol=1e-6, atol=1e-6)


def test_the_solver_report_rides_along():
    ref = _quiet(reference.allocate, [0.5, 0.3, 0.2], 6.0)
    report = ref.solver
    assert report.name == "CLARABEL" and report.status.startswith("optimal")
    assert report.build_seconds > 0 and report.solve_seconds > 0 and report.polished
    assert report.objective_solver == pytest.approx(ref.objective, rel=1e-6)
    # the names notebooks 04 and 05 read on the former ReferenceSolution
    assert (ref.status, ref.polished) == (report.status, report.polished) and ref.x_solver is report.x_solver
    with pytest.raises(AttributeError, match="solver report"):
        _ = mdl.allocate([0.5, 0.5], 2.0).status
    raw = _quiet(reference.allocate, [0.5, 0.3, 0.2], 6.0, polish=False)
    assert not raw.solver.polished
    np.testing.assert_array_equal(raw.x, raw.solver.x_solver)   # no bound is near: x is the solver's own


def test_reference_rejects_bad_input_as_mdl_does():
    """One check of the data (`mdl.allocation_problem` / `pruning_problem`) for both solvers."""
    for call in (mdl.allocate, reference.allocate):
        with pytest.raises(ValueError, match=r"budget 100 is infeasible: it must lie in \[0, 20\]"):
            call([0.5, 0.5], 100, upper=10)
    for call in (mdl.prune, reference.prune):
        with pytest.raises(ValueError, match="penalty must be"):
            call([0.5, 0.5], 0.5, penalty="cubic")


def test_options_are_keyword_only():
    for fn in (mdl.allocate, mdl.prune, reference.allocate, reference.prune, mdl.allocate_batch):
        with pytest.raises(TypeError):
            fn([0.5, 0.5], 0.5, 1.0)


@pytest.mark.parametrize("penalty", ["log", "quadratic"])
def test_the_polish_repairs_an_iterate_just_off_a_binding_bound_or_stuck_on_a_loose_one(penalty):
    # the case hypothesis found in the widget test: Clarabel stopped 2.8e-7 above a lower bound that binds
    # (beyond the polish's 1e-7 snap), so Newton on the free set crossed it and the polish gave up
    rng = np.random.default_rng(264)
    k, S = 38, 0.474609375
    q, sizes = rng.random(k) ** 3 + 1e-3, rng.integers(100, 5000, k).astype(float)
    lower, upper = np.full(k, S - 0.05), np.full(k, S + 0.05)
    exact = mdl.prune(q, S, sizes=sizes, lower=lower, upper=upper, penalty=penalty)
    p = exact.problem
    at_lower = np.flatnonzero(np.isclose(exact.x, lower))
    free = np.flatnonzero((exact.x > lower + 1e-6) & (exact.x < upper - 1e-6))
    assert at_lower.size and free.size
    for moved in (+3e-7, None):
        x = exact.x.copy()
        if moved is None:                 # a free layer left on its lower bound, where it does not belong
            x[free[0]] = lower[free[0]]
        else:                             # a binding layer left just off its bound
            x[at_lower[0]] += moved
        x[free] += (p.target - p.weights @ x) / p.weights[free].sum()      # keep the budget
        kind = "log" if penalty == "log" else "quadratic"
        polished = reference._polish(kind, p.q, x, p.weights, p.target, p.lower, p.upper)
        assert polished is not None
        np.testing.assert_allclose(polished[0], exact.x, rtol=0, atol=1e-12)
        assert polished[1] == pytest.approx(exact.nu, rel=1e-9)
