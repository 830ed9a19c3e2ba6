"""Whole units (LoRA ranks, LoRA-MoE experts) for MDL program A: a greedy and its optimality check.

Program A of Amaefuna, Vaidya, Chhabra, Mali, "Curvature-Weighted Capacity Allocation" (arXiv 2603.00910)
restricted to integers r_k, with sum_k c_k r_k <= B. `mdl.allocate(..., integer=True)` calls `greedy`
with the continuous optimum as warm start; `mdl.verify` calls `check_swaps` for equal costs. Numpy only.
"""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .mdl import AllocationProblem

__all__ = ["greedy", "check_swaps"]


def greedy(problem: AllocationProblem, price: float) -> tuple[np.ndarray, float]:
    """Whole units r and the last gain taken (nu), by greedy marginal gain per cost, warm-started with
    every unit whose gain per cost is at least `price` (the continuous optimum's nu is a good guess).

    Each step adds one unit to the layer with the largest gain per cost
    Delta_k(r) / c_k = q_k [log(beta_k + r + 1) - log(beta_k + r)] / c_k among those whose unit still fits.

    Exactly optimal for equal costs. Proof: each f_k(r) = q_k log(1 + r/beta_k) is concave, so its
    marginal gains Delta_k(0) >= Delta_k(1) >= ... decrease. A feasible integer point with sum r = m is
    a choice of m units, and its value is the sum of the chosen gains, provided each layer's units are
    taken as a prefix -- which decreasing gains make optimal. So the best value is the sum of the m
    largest gains over all layers, which is what greedy picks (exchange argument: swapping a chosen unit
    for a larger unchosen one never lowers the value). The warm start keeps optimality: it takes exactly the
    units with Delta_k(r) / c_k >= t, in closed form r <= 1 / expm1(t c_k / q_k) - beta_k, raising t until
    they fit, so it is a set of largest gains greedy itself would take first. (Flooring the continuous
    optimum x* is not: a layer with 0 < x*_k < 1 gets no unit although its first unit, worth up to
    f'_k(0), can beat the last unit of a layer with large x*: found by a hypothesis test.)
    With unequal costs this is the classic greedy for a concave knapsack: feasible and maximal (no
    further unit fits), but not always optimal; tests compare it with brute force.
    """
    q, beta, c, B = problem.q, problem.beta, problem.cost, problem.budget
    lo = np.ceil(problem.lower - 1e-9)
    hi = np.floor(problem.upper + 1e-9)
    if np.any(lo > hi):
        i = np.flatnonzero(lo > hi)[0]
        raise ValueError(f"no whole number between lower[{i}] = {problem.lower[i]} and upper[{i}] = {problem.upper[i]}")
    if c @ lo > B * (1 + 1e-12):
        raise ValueError(f"budget {B:g} cannot pay the whole-unit lower bounds (needs {c @ lo:g})")
    t = float(price) if np.isfinite(price) and price > 0 else 1.0
    r = _units_worth(problem, t, lo, hi)
    while c @ r > B * (1 + 1e-12):        # too many units at this price: raise it (r falls to lo, which fits)
        t *= 2.0
        r = _units_worth(problem, t, lo, hi)

    def gain(i):
        return q[i] * (np.log(beta[i] + r[i] + 1) - np.log(beta[i] + r[i])) / c[i]

    heap = [(-gain(i), i) for i in range(q.size) if r[i] < hi[i]]
    heapq.heapify(heap)
    left = B - c @ r
    nu = 0.0
    while heap:
        g, i = heapq.heappop(heap)
        if c[i] > left + 1e-9 * B:         # relative: at B = 3e-300 an absolute 1e-9 lets every unit fit, forever
            continue                       # this unit no longer fits; cheaper ones may
        r[i] += 1
        left -= c[i]
        nu = -g
        if r[i] < hi[i]:
            heapq.heappush(heap, (-gain(i), i))
    return r, nu


def _units_worth(problem: AllocationProblem, t: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per layer, how many first units have gain per cost Delta_k(r) / c_k = q_k log(1 + 1/(beta_k + r)) / c_k
    >= t: the units r = 0 .. floor(1 / expm1(t c_k / q_k) - beta_k), clipped to the bounds."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        last = np.floor(1.0 / np.expm1(t * problem.cost / problem.q) - problem.beta)
    return np.clip(np.nan_to_num(last + 1, nan=0.0, posinf=np.inf, neginf=0.0), lo, hi)


def check_swaps(p: AllocationProblem, x: np.ndarray) -> None:
    """Equal costs: no one-unit move between two layers and no affordable extra unit improves the objective
    (the optimality `greedy` guarantees there); raises AssertionError naming the violation."""
    def f(i, r):
        return p.q[i] * np.log1p(r / p.beta[i])
    k = np.arange(x.size)
    gain_up = np.where(x + 1 <= p.upper, f(k, x + 1) - f(k, x), -np.inf)
    loss_dn = np.where(x - 1 >= p.lower, f(k, x) - f(k, np.maximum(x - 1, p.lower)), np.inf)
    # best move between two *different* layers: compare the top-2 gains with the bottom-2 losses
    up, dn = np.argsort(-gain_up)[:2], np.argsort(loss_dn)[:2]
    best = max((gain_up[i] - loss_dn[j] for i in up for j in dn if i != j), default=-np.inf)
    if best > 1e-12:
        raise AssertionError("integer optimality violated: moving one unit between layers improves the objective")
    if float(p.cost @ x) + p.cost[0] <= p.target * (1 + 1e-12) and gain_up.max() > 0:
        raise AssertionError("integer optimality violated: an improving unit still fits in the budget")
