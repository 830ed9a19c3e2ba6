"""Notebook 04's exercises: each shipped solution passes in a namespace holding only what the notebook
defines by then; a blank answer is "not answered"; typical wrong answers are "wrong" with a message
that says what differs; an answer that raises is contained."""
from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest

import layerq_nb as lq
from layerq_nb import exercises as ex


def namespace():
    return {"np": np, "lq": lq, "math": math, "cp": cp}


def verdict(key, answer):
    return ex.check(key, answer)


@pytest.mark.parametrize("key", ["04.1", "04.2", "04.3"])
def test_shipped_solution_passes(key):
    answer = ex.run_solution(key, namespace())
    v = ex.check(key, *answer)
    assert v, v.message
    assert v.points == 3


@pytest.mark.parametrize("key", ["04.1", "04.2", "04.3"])
def test_blank_is_unanswered(key):
    def stub(*args):
        raise NotImplementedError
    assert ex.check(key, None).status == "unanswered"
    assert ex.check(key, stub).status == "unanswered"
    assert ex.check(key, lambda *args: None).status == "unanswered"


def test_shipped_solution_of_04_2_gives_one_ninth_on_the_notebooks_instance():
    ns = namespace()
    (allocation_at,) = ex.run_solution("04.1", ns)
    (bisect_nu,) = ex.run_solution("04.2", ns)
    q, ones = np.array([0.2, 0.3, 0.5]), np.ones(3)
    nu = bisect_nu(lambda nu: float(ones @ allocation_at(nu, q, ones, ones, 0.0, np.inf)), 6.0)
    assert nu == pytest.approx(1 / 9, rel=1e-12)


# ----------------------------------------------------------------------------- 04.1

@pytest.mark.parametrize("wrong, fragment", [
    (lambda nu, q, c, beta, lower, upper: np.clip(q / (nu * c), lower, upper), "hidden instance 1"),    # forgot beta
    (lambda nu, q, c, beta, lower, upper: q / (nu * c) - beta, "hidden instance 1"),                   # forgot the clip
    (lambda nu, q, c, beta, lower, upper: np.clip(q * nu / c - beta, lower, upper), "expected"),        # nu upside down
])
def test_04_1_wrong_answers(wrong, fragment):
    v = verdict("04.1", wrong)
    assert v.status == "wrong" and fragment in v.message and "expected" in v.message


def test_04_1_an_answer_that_overwrites_the_scores_is_wrong():
    def in_place(nu, q, c, beta, lower, upper):     # would corrupt the notebook's q on every spend() call
        q /= nu * c
        q -= beta
        return np.clip(q, lower, upper)
    v = verdict("04.1", in_place)
    assert v.status == "wrong" and "changed its input `q` in place" in v.message


def test_04_1_and_04_3_want_the_numpy_arrays_the_notebook_computes_with():
    import torch
    v = verdict("04.1", lambda nu, q, c, beta, lower, upper: np.clip(q / (nu * c) - beta, lower, upper).tolist())
    assert v.status == "wrong" and "return a numpy array" in v.message
    v = verdict("04.1", lambda nu, q, c, beta, lower, upper: torch.as_tensor(np.clip(q / (nu * c) - beta, lower, upper)))
    assert v.status == "wrong" and "got a Tensor" in v.message
    solved = cvx(lambda r, q, beta: q @ cp.log1p(r / beta), all_bounds)
    v = verdict("04.3", lambda *args: solved(*args).reshape(1, -1))
    assert v.status == "wrong" and "cp.Variable(K)" in v.message


def test_04_2_wants_one_number():
    import torch
    ns = namespace()
    (allocation_at,) = ex.run_solution("04.1", ns)
    (bisect_nu,) = ex.run_solution("04.2", ns)
    v = verdict("04.2", lambda spend, budget: torch.tensor([bisect_nu(spend, budget)]))
    assert v.status == "wrong" and "one number" in v.message and ".item()" in v.message


def test_04_1_raising_answer_is_contained():
    v = verdict("04.1", lambda nu, q, c, beta, lower, upper: q / nu / c[5])
    assert v.status == "wrong" and "raised IndexError" in v.message


# ----------------------------------------------------------------------------- 04.2

def flipped(spend, budget):
    lo, hi = 1e-12, 1e12
    for _ in range(300):
        mid = math.sqrt(lo * hi)
        if spend(mid) > budget:
            hi = mid                       # wrong half
        else:
            lo = mid
    return math.sqrt(lo * hi)


def fixed_bracket(spend, budget):
    lo, hi = 1e-8, 1e8                     # never widened: misses nu far outside
    for _ in range(300):
        mid = math.sqrt(lo * hi)
        if spend(mid) > budget:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def few_steps(spend, budget):
    lo, hi = 1e-12, 1e12
    for _ in range(8):                     # stops far too early
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if spend(mid) > budget else (lo, mid)
    return math.sqrt(lo * hi)


def never_stops(spend, budget):
    lo, hi = 1e-12, 1e12
    while True:
        mid = (lo + hi) / 2
        if spend(mid) == budget:           # exact equality never happens in floating point here
            return mid
        lo, hi = (mid, hi) if spend(mid) > budget else (lo, mid)


def test_04_2_wrong_direction_says_which_way():
    v = verdict("04.2", flipped)
    assert v.status == "wrong" and "hidden instance 1" in v.message
    assert "expected nu = " in v.message and ("raise it" in v.message or "lower it" in v.message)


def test_04_2_bracket_that_never_widens_fails_far_out():
    v = verdict("04.2", fixed_bracket)
    assert v.status == "wrong" and "hidden instance 3" in v.message and "bracket" in v.message


def test_04_2_too_few_steps():
    v = verdict("04.2", few_steps)
    assert v.status == "wrong" and "expected nu" in v.message


def test_04_2_a_loose_stopping_rule_is_named():
    def loose(spend, budget):               # stops at nu_hi / nu_lo - 1 < 1e-7, not the 1e-12 asked for
        lo, hi = 1e-12, 1e12
        while hi / lo - 1 >= 1e-7:
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if spend(mid) > budget else (lo, mid)
        return math.sqrt(lo * hi)
    v = verdict("04.2", loose)
    assert v.status == "wrong" and "1e-12" in v.message


def test_04_2_endless_loop_is_stopped():
    v = verdict("04.2", never_stops)
    assert v.status == "wrong" and "does its loop" in v.message


def test_04_2_wrong_type_and_raise_are_contained():
    v = verdict("04.2", lambda spend, budget: (1.0, 2.0))
    assert v.status == "wrong" and "one number" in v.message
    v = verdict("04.2", lambda spend, budget: spend("a"))
    assert v.status == "wrong" and "raised" in v.message


# ----------------------------------------------------------------------------- 04.3

def cvx(objective_of, constraints_of, sense=cp.Maximize):
    def solve(q, budget, cost, beta, lower, upper):
        r = cp.Variable(len(q))
        cp.Problem(sense(objective_of(r, q, beta)), constraints_of(r, budget, cost, lower, upper)).solve(solver=cp.CLARABEL)
        return r.value
    return solve


def all_bounds(r, budget, cost, lower, upper):
    finite = np.isfinite(upper)
    return [cost @ r == budget, r >= lower, r[finite] <= upper[finite]]


def test_04_3_a_different_but_equivalent_formulation_passes():
    # log(beta + r) differs from log(1 + r / beta) by a constant; an inequality budget binds anyway
    def budget_le(r, budget, cost, lower, upper):
        finite = np.isfinite(upper)
        return [cost @ r <= budget, r >= lower, r[finite] <= upper[finite]]
    v = verdict("04.3", cvx(lambda r, q, beta: cp.sum(cp.multiply(q, cp.log(beta + r))), budget_le))
    assert v, v.message


def test_04_3_forgot_beta():
    v = verdict("04.3", cvx(lambda r, q, beta: q @ cp.log1p(r), all_bounds))
    assert v.status == "wrong" and "below the optimum" in v.message and "the 1 + and the scale" in v.message


def test_04_3_forgot_the_scores():
    v = verdict("04.3", cvx(lambda r, q, beta: cp.sum(cp.log1p(r / beta)), all_bounds))
    assert v.status == "wrong" and "below the optimum" in v.message


def test_04_3_forgot_the_bounds():
    v = verdict("04.3", cvx(lambda r, q, beta: q @ cp.log1p(r / beta),
                            lambda r, budget, cost, lower, upper: [cost @ r == budget]))
    assert v.status == "wrong" and ("lower bound" in v.message or "upper bound" in v.message)


def test_04_3_none_from_an_unsolved_problem_names_solve():
    def forgot_solve(q, budget, cost, beta, lower, upper):
        r = cp.Variable(len(q))
        cp.Problem(cp.Maximize(q @ cp.log1p(r / beta)), all_bounds(r, budget, cost, lower, upper))
        return r.value
    v = verdict("04.3", forgot_solve)
    assert v.status == "unanswered" and "problem.solve()" in v.message
    solved = cvx(lambda r, q, beta: q @ cp.log1p(r / beta), all_bounds)
    calls = []

    def none_later(*args):                          # e.g. infeasible on a later instance
        calls.append(1)
        return solved(*args) if len(calls) == 1 else None
    v = verdict("04.3", none_later)
    assert v.status == "wrong" and "instance 2" in v.message and "problem.status" in v.message


def test_04_3_not_dcp_is_contained():
    v = verdict("04.3", cvx(lambda r, q, beta: q @ cp.log1p(r / beta), all_bounds, sense=cp.Minimize))
    assert v.status == "wrong" and "raised" in v.message and "DCP" in v.message
