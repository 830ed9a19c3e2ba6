"""Checks for notebook 04 (allocation, MDL program A)."""
from __future__ import annotations

import numpy as np

from ._core import call, close, exercise, instance_rng


def _program_a_instance(rng: np.random.Generator, k: int):
    q = rng.dirichlet(np.ones(k))
    if k > 2:
        q[rng.integers(k)] = 0.0                       # a layer with no gain: its floor must hold
        q /= q.sum()
    cost = rng.uniform(0.5, 3.0, size=k)
    beta = rng.uniform(0.2, 2.0, size=k)
    return q, cost, beta


@exercise("04.1", title="r(nu): the KKT allocation at a price nu", answer="allocation_at",
          hints=("Differentiate the Lagrangian q_k log(1 + r_k / beta_k) - nu c_k r_k in r_k and set it to zero.",
                 "That gives q_k / (beta_k + r_k) = nu c_k: solve for r_k.",
                 "Then clip to [lower, upper] with np.clip: the bounds are where complementary slackness acts."))
def _allocation_at(allocation_at) -> str:
    from ..mdl import allocate
    for i, (k, nu, lower, upper) in enumerate([(3, 0.1, 0.0, 4.0), (7, 0.02, 0.0, 50.0), (12, 0.5, 1.0, 3.0),
                                               (1, 0.3, 0.0, np.inf)]):
        q, cost, beta = _program_a_instance(instance_rng("04.1", i), k)
        expected = allocate(q, float(cost @ np.full(k, lower)) + 1.0, cost=cost, beta=beta, lower=lower,
                            upper=upper).problem.x_of_nu(nu)
        where = f"hidden instance {i + 1} (K = {k}, nu = {nu}, bounds [{lower}, {upper}])"
        got = call(allocation_at, nu, q, cost, beta, lower, upper, where=where)
        close(got, expected, where=where, rtol=1e-9, atol=1e-9, what="allocation")
    return "one dual level nu sets every layer's allocation: r_k(nu) = clip(q_k / (nu c_k) - beta_k, lower, upper)."
