"""Transfer regret of program A (`layerq_nb.regret`): the bound holds, the regret is second order in delta,
and the two constants agree with their formulas. Numpy only."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import scores

from layerq_nb import mdl, regret, regret_constants

EXAMPLES = int(os.environ.get("LAYERQ_EXAMPLES", 60))


@settings(max_examples=EXAMPLES, deadline=None)
@given(qs=scores(min_k=2, max_k=10), seed=st.integers(0, 10_000), scale=st.floats(1e-3, 0.5))
def test_regret_never_exceeds_bound(qs, seed, scale):
    qs = qs + 0.05        # strictly positive: mu_T > 0 makes the bound finite
    qt = np.abs(qs + scale * np.random.default_rng(seed).normal(size=qs.size)) + 0.01
    r = regret.regret_bound(qs, qt, budget=2.0 * qs.size, upper=6.0)
    assert 0 <= r.regret <= r.bound * (1 + 1e-9) + 1e-15
    assert r.kappa >= 1 and r.constant == pytest.approx(r.kappa * r.lipschitz_q**2 / r.smoothness)
    assert r.bound == r.constant * r.delta**2                  # the package's route: C delta^2, C = L_q^2 / mu_T
    assert r.paper_bound == pytest.approx(r.kappa * r.lipschitz_q**2 / (2 * r.mu) * r.delta**2, rel=1e-15)


def test_regret_is_second_order_in_delta():
    """log-log slope of regret against delta is 2 for small delta (active set unchanged)."""
    rng = np.random.default_rng(0)
    qs = rng.uniform(0.2, 1.0, 8)
    direction = rng.normal(size=8)
    ts = np.logspace(-4, -2, 6)
    out = [regret.regret_bound(qs, qs / qs.sum() + t * direction / 8, budget=16.0) for t in ts]
    slope = np.polyfit(np.log([o.delta for o in out]), np.log([o.regret for o in out]), 1)[0]
    assert slope == pytest.approx(2.0, abs=0.05)
    assert all(o.regret <= o.paper_bound for o in out)       # smoothness route holds: no bound is active


def test_regret_by_hand():
    """Two layers, beta = 1, B = 2, no bounds: r = (B + 2) q - 1 and F_T(r) = sum_k q_k log((B + 2) q_k)
    at its own optimum, so the regret of using q_S on q_T = (1/2, 1/2) is a difference of logs."""
    q_s, q_t = np.array([0.6, 0.4]), np.array([0.5, 0.5])
    r = regret.regret_bound(q_s, q_t, budget=2.0)
    x_s = 4 * q_s - 1
    expected = float(np.sum(q_t * np.log1p(4 * q_t - 1)) - np.sum(q_t * np.log1p(x_s)))
    assert r.regret == pytest.approx(expected, rel=1e-12)
    assert r.delta == pytest.approx(np.sqrt(0.02), rel=1e-15)


def test_old_homes_serve_the_same_objects():
    assert mdl.regret_bound is regret.regret_bound and mdl.Regret is regret.Regret
    assert regret_constants.paper_bound is regret.paper_bound
    assert regret_constants.package_bound is regret.package_bound
    with pytest.raises(AttributeError):
        mdl.no_such_name    # noqa: B018


def test_regret_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="same number of layers"):
        regret.regret_bound([0.5, 0.5], [0.2, 0.3, 0.5], budget=3.0)
