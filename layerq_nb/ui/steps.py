"""The pure step functions behind the widgets: plain data in, small frozen dataclasses out.

Each function computes everything one widget shows, so the widget only draws, and pytest checks
the numbers without a kernel or a browser. The MDL steps (allocation, transfer regret, Shapley
convergence) need numpy only; the model steps import torch when they run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import mdl

__all__ = [
    "Isolation", "gradient_isolation", "CurvatureStudy", "curvature_study", "NewtonLine", "newton_line",
    "DampingSweep", "damping_sweep", "AllocationSteps", "allocation_steps", "RegretCurve", "regret_curve", "Convergence", "shapley_convergence",
]

DAMPINGS = tuple(float(d) for d in np.logspace(-3, 1, 17))   # relative damping grid of the slider


# ----------------------------------------------------------------------------- gradient isolation

@dataclass(frozen=True)
class Isolation:
    """One forward/backward pass, and the gradient g_k of each layer k isolated from it."""
    loss: float                  # mean next-token loss L over the blocks' targets (nats)
    tokens: int                  # targets the loss averages over
    names: tuple                 # layer names
    layer_norm2: np.ndarray      # ||g_k||^2 per layer
    module_norm2: tuple          # per layer: {module name: ||g_k,m||^2}
    layer_params: np.ndarray     # parameters per layer (its linear modules)

    @property
    def total_norm2(self) -> float:
        return float(self.layer_norm2.sum())

    def share(self, layer: int) -> float:
        """Fraction of the squared gradient norm (over the decoder layers) that lives in layer k."""
        return float(self.layer_norm2[layer] / self.total_norm2)


def gradient_isolation(model, blocks, batch_size: int = 1) -> Isolation:
    """L = mean NLL; g = dL/dtheta by one backward pass; g_k = the block of g on layer k's linear
    weights (seed 003, section 3: gradient isolation)."""
    from ..evaluate import mean_loss
    from ..models import layers
    from ..scoring import layer_gradients
    found = layers(model)
    loss = mean_loss(model, blocks, batch_size=batch_size, progress=False)
    grads = layer_gradients(model, blocks, batch_size=batch_size, progress=False)
    modules = tuple({m: float((grads[(layer.index, m)].double() ** 2).sum()) for m in layer.linears} for layer in found)
    return Isolation(loss=loss, tokens=int(blocks.n_targets), names=tuple(layer.name for layer in found),
                     layer_norm2=np.array([sum(m.values()) for m in modules]), module_norm2=modules,
                     layer_params=np.array([layer.n_params for layer in found], dtype=float))


# ----------------------------------------------------------------------------- curvature

@dataclass(frozen=True)
class CurvatureStudy:
    """zeta_k^2 = g_k^T (H~_kk + lam I)^-1 g_k for several curvatures and a grid of dampings.

    lam = damping * mean eigenvalue of H~ ("relative" damping, the scoring default). The gradient is
    rotated into each curvature's eigenbasis once, so moving the damping slider costs no pass.
    """
    names: tuple
    layers: tuple                # indices scored
    dampings: np.ndarray         # (D,) relative damping grid
    zeta2: dict                  # curvature -> (D, len(layers))
    grad_norm2: np.ndarray       # (len(layers),) ||g_k||^2
    spectra: dict                # curvature -> {layer: (module name, eigenvalues sorted descending, subsampled)}
    exact: np.ndarray | None     # (D?, len(layers)) exact Gauss-Newton zeta^2 at `exact_damping`, when asked
    exact_damping: float | None

    def at(self, curvature: str, damping: float) -> np.ndarray:
        """zeta^2 per scored layer at the grid damping nearest (in log) to `damping`."""
        i = int(np.argmin(np.abs(np.log(self.dampings) - np.log(damping))))
        return self.zeta2[curvature][i]


def _quantiles(values, n: int = 200) -> np.ndarray:
    v = np.sort(np.asarray(values, dtype=float).ravel())[::-1]
    return v if v.size <= n else v[np.linspace(0, v.size - 1, n).round().astype(int)]


def curvature_study(model, blocks, layers=None, curvatures=("identity", "diag", "kfac", "ekfac"),
                    dampings=DAMPINGS, exact: bool = False, exact_damping: float = 0.1, spectrum_module: str | None = None,
                    batch_size: int = 1, seed: int = 0, progress: bool = False) -> CurvatureStudy:
    """zeta^2 under each curvature at every damping of the grid, from one statistics pass per curvature.

    In the eigenbasis of H~ = Q diag(e) Q^T: zeta^2(lam) = sum_i (Q^T g)_i^2 / (e_i + lam), so the
    rotated gradient r = Q^T g is kept and the sum is taken for every lam. `exact=True` adds the
    dense / CG Gauss-Newton block of each layer (tiny models).
    """
    import torch

    from ..models import layers as find_layers
    from ..scoring import module_solves, score
    found = find_layers(model)
    chosen = tuple(range(len(found))) if layers is None else tuple(int(i) for i in layers)
    dampings = np.asarray(dampings, dtype=float)
    zeta2, spectra, gnorm = {}, {}, None
    for curvature in curvatures:
        solves, grads = module_solves(model, blocks, curvature, batch_size=batch_size, seed=seed, progress=progress,
                                      only=set(chosen), gradients=True)
        table = np.zeros((dampings.size, len(chosen)))
        spectra[curvature] = {}
        if gnorm is None:
            gnorm = np.array([sum(float((grads[(i, m)].double() ** 2).sum()) for m in found[i].linears) for i in chosen])
        for j, i in enumerate(chosen):
            for m in found[i].linears:
                s, g = solves[(i, m)], grads[(i, m)].double()
                rotated = g if s.q_a is None else s.q_g.T.double() @ g @ s.q_a.double()
                if s.eig.dim():
                    eig = s.eig.double().expand_as(rotated)
                    mean_eig = float(eig.mean())
                else:        # identity: H~ = lam I with lam = damping, as in scoring.score
                    eig, mean_eig = torch.zeros_like(rotated), 1.0
                r2, flat_eig = (rotated ** 2).ravel(), eig.ravel()
                for d, damping in enumerate(dampings):
                    table[d, j] += float((r2 / (flat_eig + damping * mean_eig)).sum())
            module = spectrum_module if spectrum_module in found[i].linears else next(iter(found[i].linears))
            s = solves[(i, module)]
            spectra[curvature][i] = (module, _quantiles(s.eig.double().numpy()) if s.eig.dim() else np.ones(1))
        zeta2[curvature] = table
    exact_values = None
    if exact:
        ex = score(model, blocks, curvature="exact", damping=exact_damping, batch_size=batch_size, seed=seed,
                   progress=progress)
        exact_values = ex.values[list(chosen)]
    return CurvatureStudy(names=tuple(found[i].name for i in chosen), layers=chosen, dampings=dampings, zeta2=zeta2,
                          grad_norm2=gnorm, spectra=spectra, exact=exact_values,
                          exact_damping=exact_damping if exact else None)


@dataclass(frozen=True)
class NewtonLine:
    """The loss along layer k's damped Newton direction Delta = -H~^-1 g_k, against its quadratic model."""
    layer: int
    curvature: str
    zeta2: float
    scales: np.ndarray           # t: the step taken is t * Delta
    loss: np.ndarray             # measured L(theta + t Delta)
    model: np.ndarray            # quadratic model L(theta) - (t - t^2 / 2) zeta^2

    @property
    def best_scale(self) -> float:
        return float(self.scales[int(np.argmin(self.loss))])


def newton_line(model, blocks, layer: int, curvature: str = "kfac", damping: float = 0.1,
                scales=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0), batch_size: int = 1, seed: int = 0) -> NewtonLine:
    """Measure L(theta + t Delta) on `blocks` for each t; the quadratic model (with H~ in place of the
    Hessian) predicts L(theta) - (t - t^2/2) zeta^2, lowest at t = 1 with decrease zeta^2 / 2.
    Weights are restored after every step (also on errors)."""
    from ..evaluate import mean_loss
    from ..models import layers as find_layers
    from ..scoring import loss_after_step, module_solves
    target = find_layers(model)[layer]
    solves, grads = module_solves(model, blocks, curvature, damping, only={layer}, gradients=True,
                                  batch_size=batch_size, seed=seed, progress=False)
    keys = [(layer, m) for m in target.linears]
    steps = {k: solves[k].solve(grads[k]) for k in keys}
    zeta2 = float(sum((grads[k].double() * steps[k].double()).sum() for k in keys))
    scales = np.asarray(scales, dtype=float)
    by_name = {m: step for (_, m), step in steps.items()}
    losses = [loss_after_step(model, blocks, layer, by_name, float(t), batch_size) for t in scales]
    base = losses[int(np.flatnonzero(scales == 0)[0])] if np.any(scales == 0) else mean_loss(model, blocks, progress=False)
    return NewtonLine(layer=layer, curvature=curvature, zeta2=zeta2, scales=scales, loss=np.array(losses),
                      model=base - (scales - scales**2 / 2) * zeta2)


@dataclass(frozen=True)
class DampingSweep:
    """Layer k's full Newton step at several dampings: predicted zeta^2 / 2 against the measured decrease."""
    layer: int
    curvature: str
    dampings: np.ndarray
    predicted: np.ndarray        # zeta^2(lam) / 2
    actual: np.ndarray           # L(theta) - L(theta + Delta(lam))

    @property
    def ratio(self) -> np.ndarray:
        """actual / predicted: 1 where the quadratic model can be trusted for a whole step."""
        return self.actual / self.predicted


def damping_sweep(model, blocks, layer: int, curvature: str = "kfac", dampings=(1.0, 1e2, 1e4),
                  batch_size: int = 1, seed: int = 0) -> DampingSweep:
    """One curvature fit, then for each relative damping the step Delta = -(H~ + lam I)^-1 g_k on layer
    k alone: the quadratic model predicts a decrease of zeta^2/2; the loss is measured (weights restored)."""
    import dataclasses

    from ..evaluate import mean_loss
    from ..scoring import loss_after_step, module_solves
    solves, grads = module_solves(model, blocks, curvature, 1.0, only={layer}, gradients=True,
                                  batch_size=batch_size, seed=seed, progress=False)
    before = mean_loss(model, blocks, batch_size=batch_size, progress=False)
    predicted, actual = [], []
    for damping in dampings:
        z2, deltas = 0.0, {}
        for (i, m), solve in solves.items():
            mean_eig = float(solve.eig.double().mean()) if solve.eig.dim() else 1.0
            step = dataclasses.replace(solve, lam=float(damping) * mean_eig).solve(grads[(i, m)])
            z2 += float((grads[(i, m)].double() * step.double()).sum())
            deltas[m] = step
        actual.append(before - loss_after_step(model, blocks, layer, deltas, 1.0, batch_size))
        predicted.append(z2 / 2)
    return DampingSweep(layer=layer, curvature=curvature, dampings=np.asarray(dampings, float),
                        predicted=np.array(predicted), actual=np.array(actual))


# ----------------------------------------------------------------------------- allocation (numpy)

@dataclass(frozen=True)
class AllocationSteps:
    """MDL program A solved three ways: bisection (traced), the cvxpy reference, whole units."""
    solution: mdl.Solution
    trace: tuple                 # (nu_lo, nu_hi, nu_mid, spend at nu_mid) per bisection step
    reference: object | None     # reference.ReferenceSolution, or None when cvxpy is skipped
    integer: mdl.Solution | None
    kkt_residual: float

    @property
    def reference_gap(self) -> float:
        """max_k |r_k - r_k(cvxpy)|: the closed form against an independent solver."""
        return float("nan") if self.reference is None else float(np.max(np.abs(self.solution.x - self.reference.x)))


def allocation_steps(q, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf, integer: bool = False,
                     with_reference: bool = True) -> AllocationSteps:
    """Program A (seed 003): max sum_k q_k log(1 + r_k/beta_k) s.t. sum_k c_k r_k = B, lower <= r <= upper."""
    solution = mdl.verify(mdl.allocate(q, budget, cost=cost, beta=beta, lower=lower, upper=upper))
    reference = None
    if with_reference:
        from .. import reference as ref
        reference = ref.allocate(q, budget, cost=cost, beta=beta, lower=lower, upper=upper)
    whole = mdl.allocate(q, budget, cost=cost, beta=beta, lower=lower, upper=upper, integer=True) if integer else None
    return AllocationSteps(solution=solution, trace=tuple(mdl.bisection_trace(solution)), reference=reference,
                           integer=whole, kkt_residual=solution.kkt_residual)


# ----------------------------------------------------------------------------- transfer regret (numpy)

@dataclass(frozen=True)
class RegretCurve:
    """Regret of allocating with q(t) = (1 - t) q_T + t q_S on the target program, against its bound."""
    t: np.ndarray
    delta: np.ndarray            # ||q_T - q(t)||_2
    regret: np.ndarray
    bound: np.ndarray            # C delta^2
    kappa: float                 # condition number of the target program

    def slope(self) -> float:
        """Least-squares slope of log regret against log delta (2 for a quadratic regret)."""
        ok = (self.delta > 0) & (self.regret > 0)
        return float(np.polyfit(np.log(self.delta[ok]), np.log(self.regret[ok]), 1)[0])


def regret_curve(q_source, q_target, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf,
                 ts=tuple(np.logspace(-3, 0, 13))) -> RegretCurve:
    """mdl.regret_bound along the segment from q_T to q_S (seed 003, transfer theorem: regret = O(delta^2))."""
    qs, qt = mdl.normalise(q_source), mdl.normalise(q_target)
    rows = [mdl.regret_bound((1 - t) * qt + t * qs, qt, budget, cost=cost, beta=beta, lower=lower, upper=upper)
            for t in ts]
    return RegretCurve(t=np.asarray(ts, float), delta=np.array([r.delta for r in rows]),
                       regret=np.array([r.regret for r in rows]), bound=np.array([r.bound for r in rows]),
                       kappa=rows[0].kappa)


# ----------------------------------------------------------------------------- Shapley convergence (numpy)

@dataclass(frozen=True)
class Convergence:
    """Each estimator's error against the exact Shapley values, as its evaluation budget grows."""
    exact: np.ndarray
    budgets: tuple
    errors: dict                 # method -> (len(budgets),) max_k |phi_k - phi_k(exact)|
    evaluations: dict            # method -> (len(budgets),) distinct value evaluations made
    estimates: dict              # method -> list of values per budget


def shapley_convergence(value_fn, n_players: int, methods=("permutation", "antithetic", "stratified", "kernel"),
                        budgets=(32, 64, 128, 256), seed: int = 0) -> Convergence:
    """Run each sampler at each budget on a memoised game; compare with exact enumeration (K <= 14).

    All calls share one cache of v(S), so the exact table pays for every coalition once.
    """
    from ..shapley import estimate
    if n_players > 14:
        raise ValueError(f"exact enumeration of 2^{n_players} coalitions is too slow for a convergence plot: "
                         "pass players= (at most 14 layers)")
    cache: dict = {}
    weights = 1 << np.arange(n_players)

    def cached(coalitions):
        keys = np.asarray(coalitions, bool).astype(np.int64) @ weights
        todo = [i for i, key in enumerate(keys) if int(key) not in cache]
        if todo:
            for i, v in zip(todo, np.asarray(value_fn(np.asarray(coalitions)[todo]), float).reshape(-1)):
                cache[int(keys[i])] = float(v)
        return np.array([cache[int(key)] for key in keys])
    exact = estimate(cached, n_players, method="exact").values
    errors, evaluations, estimates = {}, {}, {}
    for method in methods:
        runs = [estimate(cached, n_players, method=method, budget=b, seed=seed) for b in budgets]
        errors[method] = np.array([np.max(np.abs(r.values - exact)) for r in runs])
        evaluations[method] = np.array([r.evaluations for r in runs])
        estimates[method] = [r.values for r in runs]
    return Convergence(exact=exact, budgets=tuple(budgets), errors=errors, evaluations=evaluations, estimates=estimates)
