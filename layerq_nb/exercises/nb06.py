"""Checks for notebook 06 (transfer regret: what a score from the wrong task costs).

Program A (`mdl.allocate`) allocates with source scores q_S; the regret is paid on the target objective
F_T(x) = sum_k q_T,k log(1 + x_k / beta_k): R = F_T(x*(q_T)) - F_T(x*(q_S)) >= 0, and R = O(delta^2)
with delta = ||q_T - q_S||_2 on the simplex (Amaefuna et al., arXiv 2603.00910, Theorem 4). The checks
compare with `mdl.regret_bound`, the package's own regret.
"""
from __future__ import annotations

import math

import numpy as np

from ._core import Mismatch, MissingContext, call, close, exercise, instance_rng, one_number


def _simplex(q) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    return q / q.sum()


def _objective(q, x, beta) -> float:
    return float(np.sum(q * np.log1p(np.asarray(x, float) / beta)))


# ----------------------------------------------------------------------------- 06.1 delta (number)

@exercise("06.1", title="delta: the score error on the simplex", answer="delta", kind="number",
          hints=("Program A only sees q / sum(q): two score vectors that differ by a factor allocate the same way.",
                 "Divide each raw vector by its own sum, then take the Euclidean (2-)norm of the difference."))
def _delta(delta, q_source=None, q_target=None) -> str:
    from ..mdl import normalise
    if q_source is None or q_target is None:
        raise MissingContext('ex.check("06.1", delta, q_source=..., q_target=...): pass both raw score vectors')
    expected = float(np.linalg.norm(normalise(q_target) - normalise(q_source)))
    try:
        got = float(delta)
    except (TypeError, ValueError):
        raise Mismatch(f"delta should be one number, got a {type(delta).__name__}") from None
    if math.isclose(got, expected, rel_tol=1e-6):
        return f"delta = {expected:.5f}: the scores' distance on the simplex, the x-axis of the regret bound."
    raw = float(np.linalg.norm(np.asarray(q_target, float) - np.asarray(q_source, float)))
    if math.isclose(got, raw, rel_tol=1e-6):
        raise Mismatch(f"you took the distance of the raw scores ({raw:.4g}); program A normalises them first: "
                       "divide each vector by its sum")
    if math.isclose(got, expected**2, rel_tol=1e-6):
        raise Mismatch(f"got delta^2 ({got:.4g}); delta is the norm itself, not its square")
    # a number exercise: the expected value would be the answer to paste, so it is not shown
    raise Mismatch(f"got {got:.6g}, which is not the 2-norm of the difference of the two score vectors, each "
                   "divided by its own sum")


# ----------------------------------------------------------------------------- 06.2 realised regret (build)

def _regret_instances(q_source_real=None, q_target_real=None, budget_real=None):
    """(name, q_S, q_T, budget, beta, upper) hidden instances: raw scales, a zero score, an active upper
    bound, per-layer beta, identical scores; and the notebook's real scores when given."""
    out = []
    rng = instance_rng("06.2", 0)
    q_t = rng.dirichlet(np.ones(5)) * 40.0                          # raw scale: sum 40, not 1
    q_s = q_t * rng.uniform(0.5, 1.5, 5)
    out.append(("K = 5, raw scores (not on the simplex)", q_s, q_t, 10.0, 1.0, np.inf))
    rng = instance_rng("06.2", 1)
    q_t = rng.dirichlet(np.ones(12))
    q_s = rng.dirichlet(np.ones(12))
    q_s[3] = 0.0                                                    # a source layer with no gain: its floor binds
    out.append(("K = 12, a zero source score, upper bound 3 active", q_s, q_t, 20.0, 1.0, 3.0))
    rng = instance_rng("06.2", 2)
    q_t = rng.dirichlet(np.full(8, 0.7)) * 1e-6                     # zeta^2-sized scores
    q_s = rng.dirichlet(np.full(8, 0.7)) * 3e-6
    out.append(("K = 8, per-layer beta, tiny raw scores", q_s, q_t, 6.0, rng.uniform(0.3, 3.0, 8), np.inf))
    rng = instance_rng("06.2", 3)
    q_t = rng.dirichlet(np.ones(6)) * 7.0
    out.append(("K = 6, source = target (times 3)", 3.0 * q_t, q_t, 12.0, 2.0, np.inf))
    if q_source_real is not None and q_target_real is not None:
        out.append(("the notebook's real scores", np.asarray(q_source_real, float), np.asarray(q_target_real, float),
                    float(budget_real if budget_real is not None else 4.0 * len(q_target_real)), 1.0, 16.0))
    return out


@exercise("06.2", title="The realised regret of one source/target pair", answer="realised_regret",
          hints=(("Two allocations with lq.allocate (same budget, beta, upper): one from the source scores, one from "
                 "the target scores. Both are scored on the target's objective."),
                 ("F_T(x) = sum_k q_T,k log(1 + x_k / beta_k) with q_T divided by its sum (allocate normalises its own "
                 "copy, your objective must do the same); np.log1p is the accurate log(1 + .)."),
                 "Return F_T(x_T) - F_T(x_S): the target's best minus what the source allocation achieves on it (>= 0)."))
def _realised_regret(realised_regret, q_source=None, q_target=None, budget=None) -> str:
    from ..mdl import allocate, regret_bound
    for name, q_s, q_t, b, beta, upper in _regret_instances(q_source, q_target, budget):
        where = f"hidden instance '{name}'"
        expected = regret_bound(q_s, q_t, b, beta=beta, upper=upper).regret
        got = one_number(call(realised_regret, q_s.copy(), q_t.copy(), b, beta=beta, upper=upper, where=where),
                         where=where, what="regret")
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
            continue
        x_s = allocate(q_s, b, beta=beta, upper=upper).x
        x_t = allocate(q_t, b, beta=beta, upper=upper).x
        raw_t = np.asarray(q_t, float)
        on_source = _objective(_simplex(q_s), x_s, beta) - _objective(_simplex(q_s), x_t, beta)
        if expected > 0 and math.isclose(got, -expected, rel_tol=1e-6):
            raise Mismatch(f"{where}: expected {expected:.6g}, got {got:.6g}: the sign is flipped (the target's own "
                           "allocation is the better one on F_T, so the regret is F_T(x_T) - F_T(x_S) >= 0)")
        if expected > 0 and not math.isclose(raw_t.sum(), 1.0) and math.isclose(got, expected * raw_t.sum(), rel_tol=1e-6):
            raise Mismatch(f"{where}: your regret is sum(q_T) = {raw_t.sum():.3g} times the expected {expected:.6g}: "
                           "normalise q_T to the simplex before evaluating F_T")
        if math.isclose(got, on_source, rel_tol=1e-6, abs_tol=1e-12):
            raise Mismatch(f"{where}: expected {expected:.6g}, got {got:.6g}, which is the regret measured on the source "
                           "objective F_S; the regret is paid on the target: weight the logs with q_T")
        if math.isclose(got, expected, rel_tol=1e-4):
            raise Mismatch(f"{where}: expected regret {expected:.10g}, got {got:.10g}: equal to about float32 precision "
                           "only; the regret is a small difference of two objectives, so compute in float64")
        raise Mismatch(f"{where}: expected regret {expected:.6g}, got {got:.6g}")
    return ("R = F_T(x*(q_T)) - F_T(x*(q_S)) on every instance, 0 when the scores agree up to scale: the price of "
            "allocating with scores from the wrong task.")


# ----------------------------------------------------------------------------- 06.3 the slope (build)

def _unit_tangent(direction) -> np.ndarray:
    u = np.asarray(direction, float) - np.mean(direction)
    return u / np.linalg.norm(u)


def max_step(q_target, direction) -> float:
    """The largest delta with q_T + delta u >= 0 (u: the direction made sum-zero and unit length)."""
    q, u = _simplex(q_target), _unit_tangent(direction)
    neg = u < 0
    return float(np.min(q[neg] / -u[neg])) if np.any(neg) else np.inf


def package_curve(q_target, direction, deltas, budget, beta=1.0, upper=np.inf):
    """The package's answer to 06.3 (what the check compares with): regrets along q_T + delta u, and the slope."""
    from ..mdl import regret_bound
    q, u = _simplex(q_target), _unit_tangent(direction)
    regrets = np.array([regret_bound(q + d * u, q, budget, beta=beta, upper=upper).regret for d in deltas])
    ok = regrets > 0
    slope = float(np.polyfit(np.log(np.asarray(deltas, float)[ok]), np.log(regrets[ok]), 1)[0])
    return regrets, slope


def _curve_instances(q_target_real=None, budget_real=None):
    out = []
    for i, (k, budget, beta, upper, kind) in enumerate([(6, 12.0, 1.0, np.inf, "random"),
                                                        (10, 20.0, 0.5, np.inf, "early-late"),
                                                        (16, 24.0, 1.0, 3.0, "random"),
                                                        (4, 4.0, 2.0, np.inf, "one-hot")]):
        rng = instance_rng("06.3", i)
        q_t = (rng.dirichlet(np.full(k, 3.0)) + 0.02) * rng.choice([1.0, 50.0, 1e-5])   # raw scale, no layer near 0
        if kind == "random":
            d = rng.normal(size=k)
        elif kind == "early-late":
            d = np.linspace(1.0, -1.0, k)
        else:
            d = np.eye(k)[rng.integers(k)]
        top = 0.5 * max_step(q_t, d)
        out.append((f"K = {k}, {kind} direction" + (f", upper bound {upper:g}" if np.isfinite(upper) else ""),
                    q_t, d, top * np.logspace(-3, 0, 7), budget, beta, upper))
    if q_target_real is not None:
        q_t = np.asarray(q_target_real, float)
        d = instance_rng("06.3", 9).normal(size=q_t.size)
        b = float(budget_real if budget_real is not None else 4.0 * q_t.size)
        out.append(("the notebook's real target scores, a random direction", q_t, d,
                    0.5 * max_step(q_t, d) * np.logspace(-3, 0, 7), b, 1.0, 16.0))
    return out


@exercise("06.3", title="Regret against delta on your own perturbations: the slope", answer="regret_curve",
          hints=(("Work on the simplex: q = q_target / sum. A perturbation that keeps sum(q) = 1 moves along a direction "
                 "whose entries sum to zero; make it unit length so that ||q_S - q|| is exactly delta."),
                 ("For each delta: q_S = q + delta * u is the source, q is the target; the regret is your "
                 "realised_regret(q_S, q, ...) from 06.2."),
                 ("The slope of a power law R = C delta^p is p in log-log coordinates: a degree-1 least-squares fit of "
                 "log R against log delta (np.polyfit), leading coefficient.")))
def _regret_curve(regret_curve, q_target=None, budget=None) -> str:
    slopes = []
    for name, q_t, d, deltas, b, beta, upper in _curve_instances(q_target, budget):
        where = f"hidden instance '{name}'"
        expected, slope = package_curve(q_t, d, deltas, b, beta=beta, upper=upper)
        out = call(regret_curve, q_t.copy(), np.array(d, float), deltas.copy(), b, beta=beta, upper=upper, where=where)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Mismatch(f"{where}: return a pair (regrets, slope): one regret per delta and the fitted slope")
        regrets, got_slope = out
        try:
            if hasattr(regrets, "detach"):        # the notebook then compares them with numpy arrays
                raise TypeError
            regrets = np.asarray(regrets, dtype=float)
        except (TypeError, ValueError):
            raise Mismatch(f"{where}: return the regrets as a numpy array (or a list), one per delta; got a "
                           f"{type(regrets).__name__}") from None
        got_slope = one_number(got_slope, where=where, what="slope")
        if regrets.shape != expected.shape:
            raise Mismatch(f"{where}: expected {expected.size} regrets (one per delta), got shape {regrets.shape}")
        try:
            close(regrets, expected, where=where, rtol=1e-5, atol=1e-13, what="regrets")
        except Mismatch as why:
            raise Mismatch(f"{why}. {_curve_diagnosis(regrets, q_t, d, deltas, b, beta, upper)}".rstrip(". ") + ".") from None
        if not math.isclose(got_slope, slope, rel_tol=0, abs_tol=1e-6):
            raise Mismatch(f"{where}: your regrets are right, but the slope is {got_slope:.4g}; the least-squares slope of "
                           f"log regret against log delta is {slope:.4f}")
        slopes.append(slope)
    if max(abs(s - 2.0) for s in slopes) > 0.15:        # a property of the instances, not of the answer
        raise Mismatch(f"the hidden instances' slopes {np.round(slopes, 3)} should be near 2: report this as a bug")
    return (f"slopes {', '.join(f'{s:.3f}' for s in slopes)} on {len(slopes)} hidden perturbations: regret is quadratic "
            "in the score error, as Theorem 4 of arXiv 2603.00910 says.")


def _curve_diagnosis(regrets, q_t, d, deltas, b, beta, upper) -> str:
    """Name the usual slip when one of them reproduces the learner's regrets."""
    from ..mdl import regret_bound
    q, u = _simplex(q_t), _unit_tangent(d)
    raw_u = np.asarray(d, float) / np.linalg.norm(d)

    def regret(source, target) -> float:
        """The regret of a candidate slip, NaN where its scores went negative (no allocation exists there)."""
        if np.any(np.asarray(source) < 0) or np.any(np.asarray(target) < 0):
            return np.nan
        return regret_bound(source, target, b, beta=beta, upper=upper).regret

    candidates = {
        "the perturbed scores leave the simplex: subtract the direction's mean so its entries sum to zero":
            [regret(q + x * raw_u, q) for x in deltas],
        "the direction is not unit length, so ||q_S - q_T|| is not delta: divide it by its norm":
            [regret(q + x * (u * np.linalg.norm(np.asarray(d) - np.mean(d))), q) for x in deltas],
        "source and target are swapped: allocate with the perturbed scores, evaluate on q_target":
            [regret(q, q + x * u) for x in deltas],
        "q_target was perturbed before it was normalised: divide it by its sum first":
            [regret(np.asarray(q_t, float) + x * u, q_t) for x in deltas],
    }
    for advice, values in candidates.items():
        values = np.asarray(values, float)
        if np.all(np.isfinite(values)) and np.allclose(regrets, values, rtol=1e-5, atol=1e-13):
            return advice[0].upper() + advice[1:]
    return ""
