"""Checks for notebook 05 (pruning): MDL program B's closed form and its solve, the magnitude mask and the
Wanda mask of one matrix, each run on hidden instances against the package's own implementation."""
from __future__ import annotations

# cpu on purpose (module): hidden instances are small CPU tensors, graded against CPU references
import numpy as np

from ._core import Mismatch, call, close, exercise, instance_rng, whole_number

# ----------------------------------------------------------------------------- program B


def _program_b_instance(rng: np.random.Generator, k: int, *, zero: bool, equal_sizes: bool, scale: float = 1.0):
    """Scores (not normalised: the answer must not depend on their sum) and layer sizes."""
    q = rng.dirichlet(np.ones(k)) * scale
    if zero and k > 2:
        q[rng.integers(k)] = 0.0                       # a layer with no gain: only its upper bound holds it
    sizes = np.full(k, 1000.0) if equal_sizes else rng.integers(1, 40, size=k) * 1000.0
    return q, sizes


@exercise("05.1", title="Which layer does program B prune most?", answer="k", kind="number",
          hints=("At the optimum every free layer has s_k = 1 - q_k / (nu n_k) with one nu for all layers.",
                 "So the sparsity grows as q_k / n_k shrinks: the gain per weight, not the gain q_k alone, decides."))
def _most_pruned(k, q, sparsity, sizes) -> str:
    from ..mdl import prune
    s = prune(q, sparsity, sizes=sizes).x
    index = whole_number(k)
    if index is None:
        raise Mismatch(f"expected a layer index (a whole number), got {k!r}")
    k = index
    if not 0 <= k < s.size:
        raise Mismatch(f"layer {k} does not exist: the layers are 0 .. {s.size - 1}")
    if not np.isclose(s[k], s.max()):
        raise Mismatch(f"program B prunes layer {k} to s = {s[k]:.2f}, and another layer further")
    return (f"layer {k} has the smallest gain per weight q_k / n_k = {q[k] / sizes[k]:.3g}, so the largest "
            f"s_k = 1 - q_k / (nu n_k) = {s[k]:.2f}: per weight, not per layer, is what counts.")


@exercise("05.2", title="s(nu): program B's sparsity at a dual level nu", answer="sparsity_at",
          hints=("Write the Lagrangian sum_k q_k phi(s_k) + nu (S sum_k n_k - sum_k n_k s_k) and set its derivative "
                 "in s_k to zero, with phi'(s) = 1 / (1 - s).",
                 "That gives q_k / (1 - s_k) = nu n_k for a free layer: solve for s_k.",
                 "s_k = 1 - q_k / (nu n_k), then clip it into [lower, upper] (np.clip works element-wise, with "
                 "scalar or per-layer bounds); a zero score gives s_k = 1, which the upper bound catches."))
def _sparsity_at(sparsity_at) -> str:
    from ..mdl import PruningProblem
    cases = [(3, dict(zero=False, equal_sizes=True), 0.0, 0.99, 1.6),
             (6, dict(zero=True, equal_sizes=False), 0.4, 0.8, 1.0),
             (10, dict(zero=True, equal_sizes=False), "per-layer", "per-layer", 0.8),
             (1, dict(zero=False, equal_sizes=False), 0.0, 0.9, 3.0)]
    for i, (k, kind, lower, upper, factor) in enumerate(cases):
        rng = instance_rng("05.2", i)
        q, n = _program_b_instance(rng, k, **kind)
        if lower == "per-layer":
            lower = rng.uniform(0.0, 0.4, size=k).round(2)
            upper = (lower + rng.uniform(0.2, 0.5, size=k)).round(2)
        lo, hi = np.broadcast_to(lower, (k,)).astype(float), np.broadcast_to(upper, (k,)).astype(float)
        positive = q[q > 0] / n[q > 0]
        nu = factor * float(np.median(positive)) / 0.5          # s about 1 - 0.5 / factor in the middle
        expected = PruningProblem(q=q, sparsity=0.5, sizes=n, lower=lo, upper=hi, penalty="log").x_of_nu(nu)
        bounds = "per-layer bounds" if isinstance(lower, np.ndarray) else f"bounds [{lower}, {upper}]"
        where = (f"hidden instance {i + 1} (K = {k}, nu = {nu:.4g}, {bounds}"
                 f"{', a zero score' if np.any(q == 0) else ''}{', unequal sizes' if np.ptp(n) else ''})")
        got = call(sparsity_at, nu, q.copy(), n.copy(), lower, upper, where=where)
        close(got, expected, where=where, rtol=1e-9, atol=1e-12, what="sparsity")
    return "one dual level nu prices a pruned weight for every layer: s_k(nu) = clip(1 - q_k / (nu n_k), lower_k, upper_k)."


@exercise("05.3", title="Program B solved: bisection on nu", answer="prune_map",
          hints=("The spent sparsity sum_k n_k s_k(nu) never decreases as nu grows (each s_k(nu) is non-decreasing), "
                 "so exactly one level nu meets sum_k n_k s_k(nu) = S sum_k n_k.",
                 "Bracket it: start at lo = 0 and hi = 1 and double hi until the spend at hi reaches the target.",
                 "Then halve the bracket a hundred times or so (keep the half whose ends straddle the target), and "
                 "return sparsity_at at the final level; check that n @ s / n.sum() equals S."))
def _prune_map(prune_map, q=None, sparsity=None, sizes=None, band=0.1) -> str:
    from ..mdl import prune
    cases = [(4, dict(zero=False, equal_sizes=True), 0.5, 0.0, 0.99, 1.0),
             (8, dict(zero=True, equal_sizes=False), 0.6, 0.0, 0.95, 3.7),
             (12, dict(zero=True, equal_sizes=False), 0.7, 0.6, 0.8, 0.2),
             (30, dict(zero=False, equal_sizes=True), 0.5, 0.4, 0.6, 7.3),
             (5, dict(zero=False, equal_sizes=True), 0.9, 0.0, 0.99, 1e6)]     # nu ~ 1e3: above a bracket [0, 1]
    instances = []
    for i, (k, kind, s, lower, upper, scale) in enumerate(cases):
        qi, n = _program_b_instance(instance_rng("05.3", i), k, scale=scale, **kind)
        if i == 3:
            n = n * 3538.944                                   # a real model's 3.5 million weights per layer
        label = (f"hidden instance {i + 1} (K = {k}, S = {s}, bounds [{lower}, {upper}]"
                 f"{', a zero score' if np.any(qi == 0) else ''}{', unequal sizes' if np.ptp(n) else ''}"
                 f", scores summing to {qi.sum():g})")
        instances.append((label, qi, s, n, lower, upper))
    if q is not None and sizes is not None and sparsity is not None:
        values = np.asarray(getattr(q, "q", q), dtype=float)
        s = float(sparsity)
        instances.append((f"the model's scores (K = {values.size}, S = {s}, band +-{band})", values, s,
                          np.asarray(sizes, dtype=float), max(0.0, s - band), min(0.99, s + band)))
    for where, qi, s, n, lower, upper in instances:
        expected = prune(qi, s, sizes=n, lower=lower, upper=upper).x
        answer = call(prune_map, qi.copy(), s, n.copy(), lower, upper, where=where)
        try:
            if hasattr(answer, "detach"):         # the notebook then subtracts numpy arrays from it
                raise TypeError
            got = np.asarray(answer, dtype=float)
        except (TypeError, ValueError):
            raise Mismatch(f"{where}: return s, a numpy array of K numbers; got a {type(answer).__name__}") from None
        if got.shape == expected.shape and np.all(np.isfinite(got)):
            spent = float(n @ got / n.sum())
            if abs(spent - s) > 1e-6:
                raise Mismatch(f"{where}: your map prunes a fraction {spent:.6f} of all weights, not S = {s}: "
                               "the level nu must meet sum_k n_k s_k = S sum_k n_k")
            if np.any(got < lower - 1e-7) or np.any(got > upper + 1e-7):     # 1e-7: float32's rounding of a bound
                raise Mismatch(f"{where}: your map leaves [{lower}, {upper}] (from {got.min():.8g} to "
                               f"{got.max():.8g}): clip inside sparsity_at")
        close(got, expected, where=where, rtol=1e-6, atol=1e-7, what="per-layer sparsity")
    return ("the bisection finds the one nu whose closed form spends exactly S: the same map as lq.prune, "
            "with low-gain-per-weight layers pruned most.")


# ----------------------------------------------------------------------------- masks


def _as_mask(got, shape, where: str) -> np.ndarray:
    if hasattr(got, "detach"):
        got = got.detach().cpu().numpy()
    try:
        got = np.asarray(got)
    except (TypeError, ValueError, RuntimeError):
        raise Mismatch(f"{where}: return one boolean mask of W's shape; got a {type(got).__name__}") from None
    if got.shape != tuple(shape):
        hint = " (transposed?)" if got.shape == tuple(shape)[::-1] else ""
        raise Mismatch(f"{where}: expected a mask of shape {tuple(shape)}, got shape {got.shape}{hint}")
    if got.dtype != bool:
        raise Mismatch(f"{where}: return a boolean mask (True where pruned), got dtype {got.dtype}")
    return got


def _check_group(got, metric, count: int, where: str, group: str, what: str) -> None:
    """`got` prunes exactly `count` entries of the group and none it keeps scores lower than one it prunes
    (ties may be broken either way)."""
    n = int(got.sum())
    size = metric.size
    if n != count:
        raise Mismatch(f"{where}: {group} prunes {n} of {size} weights; it must prune exactly "
                       f"floor(s * {size}) = {count}")
    if 0 < count < size:
        pruned, kept = metric[got], metric[~got]
        worst, best = pruned.max(), kept.min()
        if worst > best + 1e-5 * max(abs(best), 1e-12):
            raise Mismatch(f"{where}: {group} prunes a weight with {what} {worst:.4g} but keeps one with "
                           f"{what} {best:.4g}: prune the lowest {what}s")


def _compare_masks(got, expected, metric, count: int, where: str, per_row: bool, what: str,
                   sparsity: float = 0.0) -> None:
    if np.array_equal(got, expected):
        return
    if per_row:
        counts = got.sum(1)
        bad = np.flatnonzero(counts != count)
        if bad.size:
            r = int(bad[0])
            extra = (" (pruned per input column instead of per output row?)"
                     if np.all(got.sum(0) == int(sparsity * got.shape[0])) else "")
            raise Mismatch(f"{where}: output row {r} prunes {int(counts[r])} of {got.shape[1]} weights; every "
                           f"row must prune exactly floor(s * d_in) = {count}{extra}")
        for r in range(got.shape[0]):
            _check_group(got[r], metric[r], count, where, f"output row {r}", what)
    else:
        _check_group(got.ravel(), metric.ravel(), count, where, "the matrix", what)


@exercise("05.4", title="The magnitude mask of one matrix", answer="magnitude",
          hints=("The comparison group is the whole matrix: rank all d_out * d_in values |W_ij| together.",
                 "Count = int(s * W.numel()) (a floor); s = 0 prunes nothing.",
                 "Flatten |W|, take the indices of the count smallest (an argsort along the flattened values), "
                 "set those entries of a flat boolean mask to True and reshape it to W's shape."))
def _magnitude(magnitude) -> str:
    import torch

    from ..pruning import magnitude_mask
    cases = [((4, 6), 0.5, "normal"), ((7, 3), 0.3, "normal"), ((5, 5), 0.0, "normal"),
             ((6, 10), 0.45, "ties"), ((3, 8), 0.9, "normal")]
    for i, (shape, s, kind) in enumerate(cases):
        rng = instance_rng("05.4", i)
        w = rng.integers(-3, 4, size=shape).astype(float) if kind == "ties" else rng.standard_normal(shape)
        W = torch.tensor(w, dtype=torch.float32)
        count = int(s * W.numel())
        where = f"hidden instance {i + 1} (W {shape[0]}x{shape[1]}, s = {s}{', tied values' if kind == 'ties' else ''})"
        got = _as_mask(call(magnitude, W.clone(), s, where=where), shape, where)
        expected = magnitude_mask(W, s).numpy()
        _compare_masks(got, expected, np.abs(w), count, where, per_row=False, what="|W|")
    return "the magnitude mask ranks every |W_ij| of the matrix together and prunes exactly floor(s * numel)."


def _wanda_instance(rng: np.random.Generator, shape, tokens: int, kind: str):
    import torch
    d_out, d_in = shape
    if kind == "ties":
        W = rng.integers(-2, 3, size=shape).astype(float)
        X = rng.integers(-1, 2, size=(tokens, d_in)).astype(float)
        X[:, rng.integers(d_in)] = 0.0                      # a dead input channel: its scores all tie at 0
    else:
        W = rng.standard_normal(shape)
        X = rng.standard_normal((tokens, d_in))
        if kind == "outlier":                               # one input feature 30x larger than the rest
            X[:, rng.integers(d_in)] *= 30.0
    return torch.tensor(W, dtype=torch.float32), torch.tensor(X, dtype=torch.float32)


@exercise("05.5", title="The Wanda mask of one matrix", answer="wanda",
          hints=("Wanda's score is S_ij = |W_ij| * ||X_j||_2, the norm of input feature j over all tokens: a "
                 "column norm of X (tokens, d_in), broadcast along the output rows.",
                 "The comparison group is one output row: each row prunes exactly int(s * d_in) of its own weights, "
                 "not a share of the whole matrix.",
                 "Argsort the scores along dim 1 (the inputs), take the first int(s * d_in) column indices of every "
                 "row and mark them True in a boolean mask of W's shape (scatter_ along dim 1, or fancy indexing)."))
def _wanda(wanda, weight=None, inputs=None, sparsity=None) -> str:

    from ..pruning import wanda_mask
    cases = [((4, 8), 20, 0.5, "normal"), ((6, 7), 9, 0.5, "normal"), ((5, 12), 10, 0.0, "normal"),
             ((8, 16), 12, 0.25, "ties"), ((3, 10), 15, 0.6, "outlier"), ((9, 5), 6, 0.8, "normal")]
    instances = []
    for i, (shape, tokens, s, kind) in enumerate(cases):
        W, X = _wanda_instance(instance_rng("05.5", i), shape, tokens, kind)
        extra = {"ties": ", tied scores and a dead input", "outlier": ", one outlier input feature"}.get(kind, "")
        instances.append((f"hidden instance {i + 1} (W {shape[0]}x{shape[1]}, X {tokens}x{shape[1]}, s = {s}{extra})",
                          W, X, s))
    if weight is not None and inputs is not None and sparsity is not None:
        W = weight.detach().float()
        instances.append((f"the model's matrix (W {W.shape[0]}x{W.shape[1]}, X {inputs.shape[0]} tokens, "
                          f"s = {sparsity})", W, inputs.detach().float(), float(sparsity)))
    for where, W, X, s in instances:
        got = _as_mask(call(wanda, W.clone(), X.clone(), s, where=where), W.shape, where)
        norm = X.double().norm(dim=0)
        expected = wanda_mask(W, norm.float(), s).numpy()
        metric = (W.double().abs() * norm[None, :]).numpy()
        _compare_masks(got, expected, metric, int(s * W.shape[1]), where, per_row=True, what="|W_ij| ||X_j||",
                       sparsity=s)
    return ("each output row keeps the weights that carry the most signal, |W_ij| ||X_j||_2, and prunes exactly "
            "floor(s * d_in) of the rest: the Wanda mask.")
