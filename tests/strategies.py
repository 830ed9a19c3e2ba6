"""Hypothesis strategies for the MDL programs: random and degenerate instances (ties, zeros, bounds)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def scores(draw, min_k=1, max_k=12):
    """Non-negative scores with at least one positive entry; some exact zeros and ties."""
    k = draw(st.integers(min_k, max_k))
    palette = draw(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=3))   # few values -> ties
    entry = st.one_of(st.just(0.0), st.sampled_from(palette), st.floats(0.01, 1.0))
    q = np.array(draw(st.lists(entry, min_size=k, max_size=k)))
    if q.sum() == 0:
        q[draw(st.integers(0, k - 1))] = draw(st.floats(0.01, 1.0))
    return q


def per_layer(draw, k, elements):
    """Either one scalar or one value per layer."""
    if draw(st.booleans()):
        return draw(elements)
    return np.array(draw(st.lists(elements, min_size=k, max_size=k)))


@st.composite
def allocation_instances(draw, max_k=12):
    q = draw(scores(max_k=max_k))
    k = q.size
    cost = per_layer(draw, k, st.floats(0.5, 3.0))
    beta = per_layer(draw, k, st.floats(0.2, 2.0))
    lower = per_layer(draw, k, st.sampled_from([0.0, 0.5, 1.0]))
    width = per_layer(draw, k, st.one_of(st.just(np.inf), st.floats(0.5, 10.0)))
    upper = np.broadcast_to(lower, (k,)) + np.broadcast_to(width, (k,))
    c = np.broadcast_to(cost, (k,))
    lo = float(c @ np.broadcast_to(lower, (k,)))
    hi = float(c @ upper) if np.all(np.isfinite(upper)) else lo + 20.0 * k
    budget = lo + draw(st.floats(0.02, 0.98)) * (hi - lo)
    return dict(q=q, budget=budget, cost=cost, beta=beta, lower=lower, upper=upper)


@st.composite
def pruning_instances(draw, max_k=12):
    q = draw(scores(max_k=max_k))
    k = q.size
    sizes = per_layer(draw, k, st.floats(1.0, 10.0))
    lower = per_layer(draw, k, st.sampled_from([0.0, 0.1, 0.2]))
    upper = per_layer(draw, k, st.sampled_from([0.6, 0.8, 0.95, 0.99]))
    n = np.broadcast_to(sizes, (k,))
    lo = float(n @ np.broadcast_to(lower, (k,)) / n.sum())
    hi = float(n @ np.broadcast_to(upper, (k,)) / n.sum())
    sparsity = lo + draw(st.floats(0.02, 0.98)) * (hi - lo)
    penalty = draw(st.sampled_from(["log", "quadratic"]))
    return dict(q=q, sparsity=sparsity, sizes=sizes, lower=lower, upper=upper, penalty=penalty)
