"""Shapley values of players (layers) for any value function over coalitions
(Zhang, Dong, Kawaguchi, "Investigating Layer Importance in Large Language Models", arXiv 2409.14381;
KernelSHAP: Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", arXiv 1705.07874).

    phi_k = sum_{S subset N \\ {k}} |S|! (K - |S| - 1)! / K! * [v(S u {k}) - v(S)]

Efficiency: sum_k phi_k = v(N) - v(empty). Every estimator below memoises v by bitmask (so revisited
coalitions are free), counts the value evaluations it really made, and returns standard errors.
`value_fn` takes a boolean array of shape (m, K), one coalition per row, and returns m values, so a
caller can evaluate many coalitions in one batched forward pass. Numpy only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import comb

import numpy as np

__all__ = ["ShapleyEstimate", "estimate", "METHODS", "exact_from_table", "check_budget"]

METHODS = ("exact", "permutation", "antithetic", "stratified", "kernel", "truncated")


@dataclass(frozen=True)
class ShapleyEstimate:
    values: np.ndarray          # phi_k
    stderr: np.ndarray          # standard error of each phi_k (0 for exact)
    evaluations: int            # distinct value-function evaluations made
    method: str
    v_full: float               # v(N)
    v_empty: float              # v(empty)

    @property
    def efficiency_gap(self) -> float:
        """sum_k phi_k - (v(N) - v(empty)); 0 for exact, permutation and kernel estimates."""
        return float(self.values.sum() - (self.v_full - self.v_empty))


class _Game:
    """Memoised value function keyed by bitmask; evaluates the misses of each request in one call."""

    def __init__(self, value_fn, k: int):
        self.value_fn, self.k, self.cache = value_fn, k, {}
        self.weights = 1 << np.arange(k, dtype=np.int64)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        masks = coalitions.astype(np.int64) @ self.weights
        todo = sorted({int(m) for m in masks if int(m) not in self.cache})
        if todo:
            rows = coalitions[[int(np.flatnonzero(masks == m)[0]) for m in todo]]
            values = np.asarray(self.value_fn(rows), dtype=float).reshape(-1)
            if values.size != len(todo) or not np.all(np.isfinite(values)):
                raise ValueError(f"value_fn must return {len(todo)} finite values, got {values}")
            self.cache.update(zip(todo, values.tolist()))
        return np.array([self.cache[int(m)] for m in masks])

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    def wants_more(self, budget: int, samples: int, least: int = 2) -> bool:
        """Sample again while under budget; stop once every coalition is known (small K)."""
        if samples < least:
            return True
        return self.evaluations < min(budget, 2 ** self.k) and samples < budget


def _shapley_weights(k: int) -> np.ndarray:
    """w(s) = s! (K - s - 1)! / K! for coalition sizes s = 0..K-1."""
    return np.array([1.0 / (k * comb(k - 1, s)) for s in range(k)])


def exact_from_table(table: np.ndarray) -> np.ndarray:
    """phi from all 2^K values v[mask] (bit k of mask set = player k present): exact enumeration."""
    table = np.asarray(table, dtype=float)
    k = int(np.log2(table.size))
    masks = np.arange(table.size)
    sizes = np.array([bin(m).count("1") for m in masks])
    w = _shapley_weights(k)
    phi = np.zeros(k)
    for j in range(k):
        without = masks[(masks >> j) & 1 == 0]
        phi[j] = np.sum(w[sizes[without]] * (table[without | (1 << j)] - table[without]))
    return phi


def _prefix_marginals(game: _Game, order: np.ndarray) -> np.ndarray:
    """Marginal contribution of each player when added in `order`: v(prefix + k) - v(prefix)."""
    k = order.size
    prefixes = np.zeros((k + 1, k), dtype=bool)
    for i, player in enumerate(order):
        prefixes[i + 1:, player] = True
    values = game(prefixes)
    out = np.empty(k)
    out[order] = np.diff(values)
    return out


def _mean_and_se(samples: list) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples)
    se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples)) if len(samples) > 1 else np.full(samples.shape[1], np.inf)
    return samples.mean(axis=0), se


def _permutation(game, k, budget, rng, antithetic):
    samples = []
    while game.wants_more(budget, len(samples)):
        order = rng.permutation(k)
        marg = _prefix_marginals(game, order)
        if antithetic:   # the reversed order: early and late marginals are anticorrelated
            marg = (marg + _prefix_marginals(game, order[::-1])) / 2
        samples.append(marg)
    return _mean_and_se(samples)


def _truncated(game, k, budget, rng, tol):
    """Remove players from N in random order; once v is within tol * |v(N) - v(empty)| of v(empty),
    the players still present get marginal 0 without being evaluated (biased; the "proximity" variant of
    arXiv 2409.14381)."""
    full, empty = game(np.ones((1, k), bool))[0], game(np.zeros((1, k), bool))[0]
    span = abs(full - empty)
    samples = []
    while game.wants_more(budget, len(samples)):
        order = rng.permutation(k)
        present = np.ones(k, bool)
        value, marg = full, np.zeros(k)
        for player in order:
            if abs(value - empty) <= tol * span:
                break
            present[player] = False
            smaller = game(present[None])[0]
            marg[player] = value - smaller
            value = smaller
        samples.append(marg)
    return _mean_and_se(samples)


def _stratified(game, k, budget, rng):
    """phi_k = (1/K) sum_s E_{|S|=s, k not in S}[v(S + k) - v(S)]: equal samples per (player, size) stratum."""
    per_stratum = max(2, budget // (2 * k * k))
    means, variances = np.zeros((k, k)), np.zeros((k, k))
    for player in range(k):
        others = np.delete(np.arange(k), player)
        for size in range(k):
            rows = np.zeros((per_stratum, k), bool)
            for r in range(per_stratum):
                rows[r, rng.choice(others, size, replace=False)] = True
            with_player = rows.copy()
            with_player[:, player] = True
            marg = game(with_player) - game(rows)
            means[player, size], variances[player, size] = marg.mean(), marg.var(ddof=1)
    return means.mean(axis=1), np.sqrt(variances.sum(axis=1) / per_stratum) / k


def _kernel(game, k, budget, rng, bootstrap=200):
    """Paired KernelSHAP with the efficiency constraint (Lundberg & Lee 2017; Covert & Lee 2021):
    z ~ p(z) prop. to the Shapley kernel, A = E[z z^T], b = E[z (v(z) - v(0))],
    phi = A^-1 (b - 1 (1^T A^-1 b - v(N) + v(0)) / (1^T A^-1 1)); standard errors by bootstrap over pairs."""
    if k < 2:
        raise ValueError("kernel SHAP needs at least 2 players")
    full, empty = game(np.ones((1, k), bool))[0], game(np.zeros((1, k), bool))[0]
    sizes = np.arange(1, k)
    p_size = (k - 1) / (sizes * (k - sizes))
    p_size /= p_size.sum()
    pairs = []
    while game.wants_more(budget, len(pairs), least=max(k, 2)):
        z = np.zeros(k, bool)
        z[rng.choice(k, rng.choice(sizes, p=p_size), replace=False)] = True
        both = np.stack([z, ~z])
        pairs.append((both, game(both) - empty))
    z = np.concatenate([p[0] for p in pairs]).astype(float)
    y = np.concatenate([p[1] for p in pairs])

    def solve(idx):
        zz, yy = z[idx], y[idx]
        a = zz.T @ zz / len(idx) + 1e-12 * np.eye(k)
        b = zz.T @ yy / len(idx)
        a_inv_b, a_inv_1 = np.linalg.solve(a, b), np.linalg.solve(a, np.ones(k))
        return a_inv_b - a_inv_1 * (a_inv_b.sum() - (full - empty)) / a_inv_1.sum()

    n = len(pairs)
    rows = lambda chosen: np.concatenate([[2 * i, 2 * i + 1] for i in chosen])
    phi = solve(np.arange(2 * n))
    boots = [solve(rows(rng.integers(0, n, n))) for _ in range(bootstrap)]
    return phi, np.std(boots, axis=0, ddof=1)


def check_budget(budget, n_players: int, method: str = "antithetic") -> int:
    """`budget` as an int, or a ValueError before any evaluation. It counts distinct value evaluations,
    and one permutation alone evaluates K + 1 coalitions (v(empty), each prefix, v(N)): the samplers
    always finish two samples, so a smaller budget (0, -5, or nan, which compares False) would not
    limit them, only mislead the caller. Exact enumeration ignores the budget."""
    least = 1 if method == "exact" else n_players + 1
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < least:
        why = ("exact enumeration ignores it" if method == "exact"
               else f"one permutation of K = {n_players} players alone evaluates K + 1 = {least}")
        raise ValueError(f"budget must be a whole number >= {least}, the number of distinct coalitions the "
                         f"{method!r} estimator may evaluate ({why}); got {budget!r}")
    return int(budget)


def estimate(value_fn: Callable[[np.ndarray], np.ndarray], n_players: int, method: str = "antithetic", *,
             budget: int = 2000, seed: int = 0, tol: float = 0.02) -> ShapleyEstimate:
    """Shapley values of `n_players` under `value_fn` (boolean (m, K) coalitions -> m values).

    method: exact (all 2^K coalitions; K <= 20), permutation, antithetic (each permutation with its
    reverse), stratified (by coalition size), kernel (paired KernelSHAP with the efficiency
    constraint) or truncated (removal order from N, stopped at v(empty) within `tol`). `budget` is
    the number of distinct value evaluations the sampling methods aim for (they finish the sample in
    progress, so they may go slightly over): a whole number >= n_players + 1 (`check_budget`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown Shapley method {method!r}: use one of {', '.join(METHODS)}")
    k = int(n_players)
    if k < 1:
        raise ValueError(f"n_players must be >= 1, got {n_players}")
    budget = check_budget(budget, k, method)
    game = _Game(value_fn, k)
    rng = np.random.default_rng(seed)
    if method == "exact":
        if k > 20:
            raise ValueError(f"exact enumeration needs 2^{k} evaluations: use a sampling method for K > 20")
        masks = np.arange(2 ** k)
        table = game(((masks[:, None] >> np.arange(k)) & 1).astype(bool))
        values, se = exact_from_table(table), np.zeros(k)
    elif method in ("permutation", "antithetic"):
        values, se = _permutation(game, k, budget, rng, antithetic=method == "antithetic")
    elif method == "truncated":
        values, se = _truncated(game, k, budget, rng, tol)
    elif method == "stratified":
        values, se = _stratified(game, k, budget, rng)
    else:
        values, se = _kernel(game, k, budget, rng)
    full, empty = game(np.ones((1, k), bool))[0], game(np.zeros((1, k), bool))[0]
    return ShapleyEstimate(values=np.asarray(values, float), stderr=np.asarray(se, float),
                           evaluations=game.evaluations, method=method, v_full=float(full), v_empty=float(empty))
