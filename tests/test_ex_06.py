"""Notebook 06's exercises (transfer regret): each shipped solution passes in a namespace holding only what
the notebook defines by then; a blank answer is "not answered"; typical wrong answers are "wrong" with a
message that says what differs; an answer that raises is contained. Also the two bound constants of
`layerq_nb.regret_constants` against `mdl.regret_bound`. Numpy only: no model needed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.exercises import nb06
from layerq_nb.regret_constants import package_bound, paper_bound


def namespace(**names):
    return {"np": np, "torch": torch, "lq": lq, "math": math, **names}


@pytest.fixture(scope="module")
def scores():
    """Stand-ins for the notebook's prose (source) and arithmetic (target) raw zeta^2 values."""
    rng = np.random.default_rng(7)
    return rng.gamma(2.0, 1e-6, size=30), rng.gamma(2.0, 1e-6, size=30)


def _F(q, x, beta=1.0):
    return float(np.sum(q * np.log1p(x / beta)))


# ----------------------------------------------------------------------------- 06.1

def test_06_1_solution_blank_and_wrong(scores):
    raw_s, raw_t = scores

    class Scores:
        def __init__(self, values):
            self.values = values
    (delta,) = ex.run_solution("06.1", namespace(q={"prose": Scores(raw_s), "arithmetic": Scores(raw_t)}))
    v = ex.check("06.1", delta, q_source=raw_s, q_target=raw_t)
    assert v and v.points == 1, v.message
    assert math.isclose(delta, lq.regret_bound(raw_s, raw_t, 120.0).delta)
    assert ex.check("06.1", None, q_source=raw_s, q_target=raw_t).status == "unanswered"
    v = ex.check("06.1", float(np.linalg.norm(raw_t - raw_s)), q_source=raw_s, q_target=raw_t)
    assert v.status == "wrong" and "divide each vector by its sum" in v.message
    v = ex.check("06.1", delta**2, q_source=raw_s, q_target=raw_t)
    assert v.status == "wrong" and "not its square" in v.message
    assert ex.check("06.1", "0.05", q_source=raw_s, q_target=raw_t).status == "wrong"
    assert ex.check("06.1", [1, 2], q_source=raw_s, q_target=raw_t).status == "wrong"
    v = ex.check("06.1", 1.5 * delta, q_source=raw_s, q_target=raw_t)     # a number exercise hides the number
    assert v.status == "wrong" and f"{delta:.6g}" not in v.message and f"{delta:.4g}" not in v.message
    with pytest.raises(TypeError, match="q_source=..., q_target="):
        ex.check("06.1", delta)


# ----------------------------------------------------------------------------- 06.2

def _regret_variant(kind):
    def realised_regret(q_source, q_target, budget, beta=1.0, upper=np.inf):
        x_S = lq.allocate(q_source, budget, beta=beta, upper=upper).x
        x_T = lq.allocate(q_target, budget, beta=beta, upper=upper).x
        q_t = np.asarray(q_target, float) / np.sum(q_target)
        q_s = np.asarray(q_source, float) / np.sum(q_source)
        if kind == "sign":
            return _F(q_t, x_S, beta) - _F(q_t, x_T, beta)
        if kind == "raw":                                   # forgot to normalise q_T
            return _F(np.asarray(q_target, float), x_T, beta) - _F(np.asarray(q_target, float), x_S, beta)
        if kind == "source":                                # paid on the source objective
            return _F(q_s, x_S, beta) - _F(q_s, x_T, beta)
        if kind == "log":                                   # log(x / beta) instead of log(1 + x / beta)
            return float(np.sum(q_t * np.log((x_T + 1e-9) / beta)) - np.sum(q_t * np.log((x_S + 1e-9) / beta)))
        if kind == "float32":                               # right formula, float32 arithmetic
            q32, xs, xt = q_t.astype(np.float32), x_S.astype(np.float32), x_T.astype(np.float32)
            return float(np.sum(q32 * np.log1p(xt / np.float32(beta))) - np.sum(q32 * np.log1p(xs / np.float32(beta))))
        if kind == "raises":
            raise ValueError("shapes do not match")
        raise AssertionError(kind)
    return realised_regret


def test_06_2_solution_passes_with_the_notebooks_scores(scores):
    raw_s, raw_t = scores
    q_S, q_T = raw_s / raw_s.sum(), raw_t / raw_t.sum()
    (fn,) = ex.run_solution("06.2", namespace(q_S=q_S, q_T=q_T, budget=120.0))
    v = ex.check("06.2", fn, q_source=q_S, q_target=q_T, budget=120.0)
    assert v and v.points == 3, v.message
    assert math.isclose(fn([0.5, 0.5], [0.6, 0.4], 2.0), 0.6 * math.log(2.4) + 0.4 * math.log(1.6) - math.log(2))
    assert ex.check("06.2", fn)                            # without the notebook's context too


def test_06_2_blank_and_wrong_answers():
    def blank(q_source, q_target, budget, beta=1.0, upper=np.inf):
        raise NotImplementedError
    assert ex.check("06.2", blank).status == "unanswered"
    assert ex.check("06.2", lambda *a, **k: None).status == "unanswered"
    v = ex.check("06.2", _regret_variant("sign"))
    assert v.status == "wrong" and "sign is flipped" in v.message
    v = ex.check("06.2", _regret_variant("raw"))
    assert v.status == "wrong" and "normalise q_T" in v.message and "raw scores" in v.message
    v = ex.check("06.2", _regret_variant("source"))
    assert v.status == "wrong" and "source objective" in v.message
    v = ex.check("06.2", _regret_variant("log"))
    assert v.status == "wrong" and "expected regret" in v.message
    v = ex.check("06.2", _regret_variant("float32"))
    assert v.status == "wrong" and "float32 precision" in v.message
    v = ex.check("06.2", _regret_variant("raises"))
    assert v.status == "wrong" and "raised ValueError" in v.message
    v = ex.check("06.2", lambda *a, **k: np.zeros(3))
    assert v.status == "wrong" and "one number" in v.message


# ----------------------------------------------------------------------------- 06.3

def _curve_variant(kind):
    def regret_curve(q_target, direction, deltas, budget, beta=1.0, upper=np.inf):
        q_t = np.asarray(q_target, float) / np.sum(q_target)
        d = np.asarray(direction, float)
        u = d - d.mean()
        if kind == "no_mean":
            u = d
        if kind != "no_unit":
            u = u / np.linalg.norm(u)
        if kind == "no_upper":                              # forgets to pass the upper bound on
            upper = np.inf
        regrets = []
        for delta in deltas:
            q_s = q_t + delta * u
            if kind == "swapped":
                regrets.append(lq.regret_bound(q_t, q_s, budget, beta=beta, upper=upper).regret)
            else:
                regrets.append(lq.regret_bound(q_s, q_t, budget, beta=beta, upper=upper).regret)
        regrets = np.array(regrets)
        if kind == "linear_fit":
            return regrets, np.polyfit(deltas, regrets, 1)[0]
        if kind == "one_value":
            return regrets
        return regrets, np.polyfit(np.log(deltas), np.log(regrets), 1)[0]
    return regret_curve


def test_06_3_solution_passes_and_slopes_are_two(scores):
    raw_s, raw_t = scores
    q_T = raw_t / raw_t.sum()
    ns = namespace(q_T=q_T, budget=120.0)
    ex.run_solution("06.2", ns)                             # 06.3's solution uses the learner's 06.2
    (fn,) = ex.run_solution("06.3", ns)
    v = ex.check("06.3", fn, q_target=q_T, budget=120.0)
    assert v and v.points == 3, v.message
    assert "slopes" in v.message
    for _, q_t, d, deltas, b, beta, upper in nb06._curve_instances(q_T, 120.0):
        _, slope = nb06.package_curve(q_t, d, deltas, b, beta=beta, upper=upper)
        assert abs(slope - 2) < 0.15
        assert np.all(q_t / q_t.sum() + deltas[-1] * nb06._unit_tangent(d) >= 0)   # the deltas stay feasible


def test_06_3_blank_and_wrong_answers():
    def blank(q_target, direction, deltas, budget, beta=1.0, upper=np.inf):
        raise NotImplementedError
    assert ex.check("06.3", blank).status == "unanswered"
    v = ex.check("06.3", _curve_variant("no_mean"))
    assert v.status == "wrong" and "leave the simplex" in v.message
    v = ex.check("06.3", _curve_variant("no_unit"))
    assert v.status == "wrong" and "not unit length" in v.message
    v = ex.check("06.3", _curve_variant("swapped"))
    assert v.status == "wrong" and "swapped" in v.message
    v = ex.check("06.3", _curve_variant("linear_fit"))
    assert v.status == "wrong" and "slope" in v.message and "log regret against log delta" in v.message
    v = ex.check("06.3", _curve_variant("one_value"))
    assert v.status == "wrong" and "(regrets, slope)" in v.message
    v = ex.check("06.3", _curve_variant("no_upper"))     # its diagnosis tries slips whose scores go negative
    assert v.status == "wrong" and "upper bound 3" in v.message
    fn = _curve_variant("right")
    v = ex.check("06.3", lambda *a, **k: (torch.as_tensor(fn(*a, **k)[0]), fn(*a, **k)[1]))
    assert v.status == "wrong" and "numpy array (or a list)" in v.message
    v = ex.check("06.3", lambda *a, **k: (fn(*a, **k)[0], np.array([fn(*a, **k)[1]])))
    assert v.status == "wrong" and "slope should be one number" in v.message
    v = ex.check("06.2", lambda *a, **k: torch.tensor([_regret_variant("float32")(*a, **k)]))
    assert v.status == "wrong" and "regret should be one number" in v.message
    v = ex.check("06.3", lambda *a, **k: 1 / 0)
    assert v.status == "wrong" and "ZeroDivisionError" in v.message


# ----------------------------------------------------------------------------- the two constants

@pytest.mark.parametrize("beta,upper", [(1.0, np.inf), (0.5, 16.0), (16.0, 16.0)])
def test_both_bounds_hold_and_match_regret_bound(scores, beta, upper):
    raw_s, raw_t = scores
    r = lq.regret_bound(raw_s, raw_t, 120.0, beta=beta, upper=upper)
    ours = package_bound(r.delta, mu=r.mu, lipschitz_q=r.lipschitz_q)
    papers = paper_bound(r.delta, mu=r.mu, smoothness=r.smoothness, lipschitz_q=r.lipschitz_q)
    assert math.isclose(ours, r.bound, rel_tol=1e-12) and math.isclose(papers, r.paper_bound, rel_tol=1e-12)
    assert math.isclose(papers / ours, r.kappa / 2, rel_tol=1e-12)
    assert r.regret <= ours and r.regret <= papers


def test_paper_bound_edge_cases():
    assert paper_bound(0.1, mu=0.0, smoothness=1.0, lipschitz_q=1.0) == math.inf
    assert package_bound(0.1, mu=0.0, lipschitz_q=1.0) == math.inf
    with pytest.raises(ValueError, match="below mu_T"):
        paper_bound(0.1, mu=2.0, smoothness=1.0, lipschitz_q=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        paper_bound(0.1, mu=-1.0, smoothness=1.0, lipschitz_q=1.0)
