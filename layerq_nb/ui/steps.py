"""The pure step functions behind the widgets: plain data in, small frozen dataclasses out.

Each function computes everything one widget shows, so the widget only draws, and pytest checks
the numbers without a kernel or a browser. The MDL steps (allocation, pruning program B, transfer
regret, Shapley convergence) need numpy only; the model steps import torch when they run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import mdl
from ..pruning.maps import map_kind

__all__ = [
    "Isolation", "gradient_isolation", "CurvatureStudy", "curvature_study", "NewtonLine", "newton_line",
    "DampingSweep", "damping_sweep", "AllocationSteps", "allocation_steps", "RegretCurve", "regret_curve",
    "Convergence", "shapley_convergence", "band_bounds", "kkt_residual", "PruningProgram", "pruning_program",
    "SparsityMaps", "sparsity_maps", "LayerInputs", "layer_inputs", "MatrixMask", "matrix_mask",
    "PruneEvaluation", "prune_evaluation", "map_kind",
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


def gradient_isolation(model, blocks, *, batch_size: int = 1, layers_per_pass: int | None = 10) -> Isolation:
    """L = mean NLL; g = dL/dtheta by one backward pass; g_k = the block of g on layer k's linear
    weights (arXiv 2603.00910, section 3: gradient isolation). Only the norms are kept, so the gradients
    are taken `layers_per_pass` layers at a time (None: all in one pass) and dropped once squared: the
    same numbers with a third of the memory of every layer's gradient at once."""
    from ..evaluate import mean_loss
    from ..models import layers
    from ..scoring import layer_gradients, layer_groups
    found = layers(model)
    loss = mean_loss(model, blocks, batch_size=batch_size, progress=False)
    norm2 = {}
    for only in layer_groups(len(found), layers_per_pass):
        grads = layer_gradients(model, blocks, batch_size=batch_size, progress=False, only=only)
        norm2.update({key: float((g.double() ** 2).sum()) for key, g in grads.items()})
        del grads
    modules = tuple({m: norm2[(layer.index, m)] for m in layer.linears} for layer in found)
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

    def rank_agreement(self, curvature: str, damping: float) -> tuple[float, int, int]:
        """(Spearman rho of zeta^2 against ||g||^2 over the scored layers, top layer by zeta^2, top layer by
        ||g||^2); rho is NaN with fewer than three layers (no rank correlation to speak of)."""
        from scipy.stats import spearmanr
        z = self.at(curvature, damping)
        rho = float(spearmanr(z, self.grad_norm2)[0]) if z.size > 2 else float("nan")
        return rho, int(self.layers[int(np.argmax(z))]), int(self.layers[int(np.argmax(self.grad_norm2))])


def _quantiles(values, n: int = 200) -> np.ndarray:
    v = np.sort(np.asarray(values, dtype=float).ravel())[::-1]
    return v if v.size <= n else v[np.linspace(0, v.size - 1, n).round().astype(int)]


def curvature_study(model, blocks, *, layers=None, curvatures=("identity", "diag", "kfac", "ekfac"),
                    dampings=DAMPINGS, exact: bool = False, exact_damping: float = 0.1, spectrum_module: str | None = None,
                    batch_size: int = 1, seed: int = 0, progress: bool = False) -> CurvatureStudy:
    """zeta^2 under each curvature at every damping of the grid, from one statistics pass per curvature.

    In the eigenbasis of H~ = Q diag(e) Q^T: zeta^2(lam) = sum_i (Q^T g)_i^2 / (e_i + lam), so each
    solve rotates the gradient once and sums for every lam (`Solve.zeta2_grid`). `exact=True` adds the
    dense / CG Gauss-Newton block of each layer (tiny models).
    """
    from ..models import layers as find_layers
    from ..scoring import module_solves, score
    found = find_layers(model)
    chosen = tuple(range(len(found))) if layers is None else tuple(int(i) for i in layers)
    dampings = np.asarray(dampings, dtype=float)
    zeta2, spectra, gnorm = {}, {}, None
    for curvature in curvatures:
        fitted = module_solves(model, blocks, curvature, batch_size=batch_size, seed=seed, progress=progress,
                               only=chosen, gradients=True)
        grads, table = fitted.gradients, np.zeros((dampings.size, len(chosen)))
        if gnorm is None:
            gnorm = np.array([sum(float((grads[(i, m)].double() ** 2).sum()) for m in found[i].linears) for i in chosen])
        for j, i in enumerate(chosen):
            for m in found[i].linears:
                table[:, j] += fitted.solves[(i, m)].zeta2_grid(grads[(i, m)], dampings)
        module = {i: spectrum_module if spectrum_module in found[i].linears else next(iter(found[i].linears))
                  for i in chosen}
        spectra[curvature] = {i: (module[i], _quantiles(fitted.solves[(i, module[i])].spectrum().double().cpu().numpy()))
                              for i in chosen}
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


def newton_line(model, blocks, layer: int, *, curvature: str = "kfac", damping: float = 0.1,
                scales=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0), batch_size: int = 1, seed: int = 0) -> NewtonLine:
    """Measure L(theta + t Delta) on `blocks` for each t; the quadratic model (with H~ in place of the
    Hessian) predicts L(theta) - (t - t^2/2) zeta^2, lowest at t = 1 with decrease zeta^2 / 2.
    Weights are restored after every step (also on errors)."""
    from ..evaluate import mean_loss
    from ..scoring import loss_after_step, module_solves
    steps, zeta2 = module_solves(model, blocks, curvature, damping=damping, only={layer}, gradients=True,
                                 batch_size=batch_size, seed=seed, progress=False).newton()
    scales = np.asarray(scales, dtype=float)
    by_name = {m: step for (_, m), step in steps.items()}
    losses = [loss_after_step(model, blocks, layer, by_name, scale=float(t), batch_size=batch_size) for t in scales]
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


def damping_sweep(model, blocks, layer: int, *, curvature: str = "kfac", dampings=(1.0, 1e2, 1e4),
                  batch_size: int = 1, seed: int = 0) -> DampingSweep:
    """One curvature fit, then for each relative damping the step Delta = -(H~ + lam I)^-1 g_k on layer
    k alone: the quadratic model predicts a decrease of zeta^2/2; the loss is measured (weights restored)."""
    from ..evaluate import mean_loss
    from ..scoring import loss_after_step, module_solves
    fitted = module_solves(model, blocks, curvature, only={layer}, gradients=True, batch_size=batch_size, seed=seed,
                           progress=False)
    before = mean_loss(model, blocks, batch_size=batch_size, progress=False)
    predicted, actual = [], []
    for damping in dampings:
        steps, zeta2 = fitted.with_damping(float(damping), "relative").newton()
        deltas = {m: step for (_, m), step in steps.items()}
        actual.append(before - loss_after_step(model, blocks, layer, deltas, batch_size=batch_size))
        predicted.append(zeta2 / 2)
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
    """Program A (arXiv 2603.00910): max sum_k q_k log(1 + r_k/beta_k) s.t. sum_k c_k r_k = B, lower <= r <= upper."""
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


REGRET_CURVE_TS = tuple(np.logspace(-3, 0, 13))     # where along q_T -> q_S the curve is sampled


def regret_curve(q_source, q_target, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf,
                 ts=REGRET_CURVE_TS) -> RegretCurve:
    """mdl.regret_bound along the segment from q_T to q_S (arXiv 2603.00910, transfer theorem: regret = O(delta^2))."""
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

    def exact_at(self, method: str, floor: float = 1e-9) -> np.ndarray:
        """Per budget: is the error at rounding level (below floor x max(1, max |phi|))?"""
        return np.asarray(self.errors[method], float) <= floor * max(1.0, float(np.max(np.abs(self.exact))))

    def rate(self, method: str, floor: float = 1e-9) -> float:
        """Least-squares slope of log(error) against log(distinct evaluations) for one method (-0.5 would be
        the Monte-Carlo 1/sqrt(n)), over the budgets where the error is above rounding (`exact_at`) and the
        evaluations stay below the 2^K coalitions there are. NaN when fewer than two such budgets remain."""
        err, n = np.asarray(self.errors[method], float), np.asarray(self.evaluations[method], float)
        ok = ~self.exact_at(method, floor) & (n > 0) & (n < 2 ** self.exact.size)
        if np.unique(n[ok]).size < 2:
            return float("nan")
        return float(np.polyfit(np.log(n[ok]), np.log(err[ok]), 1)[0])


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


# ----------------------------------------------------------------------------- pruning: program B (numpy)

def band_bounds(sparsity: float, band: float | None = 0.1, upper: float = 0.99) -> tuple[float, float]:
    """The bounds `pruning.sparsity_map("mdl", ...)` gives program B: s_k within S -/+ band, inside [0, upper]."""
    lo = 0.0 if band is None else max(0.0, sparsity - band)
    hi = upper if band is None else min(upper, sparsity + band)
    return lo, hi


def kkt_residual(problem, x, nu: float, tol: float = 1e-7) -> float:
    """The KKT conditions of an MDL program at any (x, nu), e.g. cvxpy's answer: the largest relative
    violation of the budget, the bounds, nu >= 0, and stationarity with complementary slackness (a free
    layer has phi-gradient = nu w_k; at a bound the reduced gradient points out of the box). Layers
    within `tol` of a bound count as at it."""
    x = np.asarray(x, dtype=float)
    w, lower, upper = problem.weights, problem.lower, problem.upper
    scale = max(1.0, abs(problem.target), float(w @ np.abs(x)))
    budget = abs(float(w @ x) - problem.target) / scale
    bounds = max(0.0, float(np.max(lower - x)), float(np.max(x - upper)))
    grad = problem.gradient(np.clip(x, lower, upper))
    reduced = (1.0 if problem.sense == "max" else -1.0) * (grad - nu * w)
    at_lower = x <= lower + tol * np.maximum(1.0, np.abs(lower))
    at_upper = ~at_lower & (x >= upper - tol * np.maximum(1.0, np.abs(upper)))
    ref = max(float(np.max(np.abs(nu * w))), float(np.max(np.abs(grad))), 1e-300)
    viol = np.where(at_lower, np.maximum(reduced, 0.0),
                    np.where(at_upper, np.maximum(-reduced, 0.0), np.abs(reduced))) / ref
    return float(max(budget, bounds, max(0.0, -nu), np.max(viol)))


@dataclass(frozen=True)
class PruningProgram:
    """MDL program B solved by (traced) bisection on nu and by cvxpy, each with its KKT residual."""
    solution: mdl.Solution
    trace: tuple                  # (nu_lo, nu_hi, nu_mid, sum_k n_k s_k(nu_mid)) per bisection step
    reference: object | None      # reference.ReferenceSolution (nu in the closed form's units), None if skipped or failed
    kkt_residual: float           # of the closed form
    reference_kkt_residual: float  # the same conditions at cvxpy's (s, nu); NaN without a reference
    reference_error: str = ""     # why cvxpy gave no answer, when it failed

    @property
    def problem(self):
        return self.solution.problem

    @property
    def reference_gap(self) -> float:
        """max_k |s_k - s_k(cvxpy)|: the closed form against an independent solver."""
        return float("nan") if self.reference is None else float(np.max(np.abs(self.solution.x - self.reference.x)))

    def s_of_nu(self, nu: float) -> np.ndarray:
        """s_k(nu) = clip(1 - q_k / (nu n_k), lo_k, hi_k) (log penalty) or clip(nu n_k / q_k, ...) (quadratic)."""
        return self.problem.x_of_nu(float(nu))

    def global_sparsity(self, nu: float) -> float:
        """sum_k n_k s_k(nu) / sum_k n_k: non-decreasing in nu, so bisection finds the nu that gives S."""
        n = self.problem.sizes
        return float(n @ self.s_of_nu(nu) / n.sum())

    def bracket(self, i: int) -> tuple[float, float, float, float]:
        """Bisection step i: (nu_lo, nu_hi, nu_mid, global sparsity at nu_mid)."""
        lo, hi, mid, spend = self.trace[int(np.clip(i, 0, len(self.trace) - 1))]
        return lo, hi, mid, spend / float(self.problem.sizes.sum())


def pruning_program(q, sparsity: float, sizes, lower=0.0, upper=0.99, penalty: str = "log",
                    with_reference: bool = True) -> PruningProgram:
    """Program B (Amaefuna et al., arXiv 2603.00910): min sum_k q_k phi(s_k) s.t. sum_k n_k s_k = S sum_k n_k,
    lower <= s <= upper, solved as `mdl.prune` solves it (bisection on nu), certified, and by cvxpy.

    cvxpy gets the sizes divided by their mean: the same program (the budget is homogeneous in n), but
    with millions of weights per layer Clarabel's tight tolerances otherwise fail on some instances; its
    nu is scaled back (q phi'(s) = nu n = (nu c)(n / c)). A solver failure is reported, not raised."""
    import dataclasses
    solution = mdl.verify(mdl.prune(q, sparsity, sizes=sizes, lower=lower, upper=upper, penalty=penalty))
    reference, ref_kkt, ref_error = None, float("nan"), ""
    if with_reference:
        from .. import reference as ref
        scale = float(np.mean(solution.problem.sizes))
        try:
            reference = ref.prune(q, sparsity, sizes=solution.problem.sizes / scale, lower=lower, upper=upper,
                                  penalty=penalty)
            reference = dataclasses.replace(reference, nu=reference.nu / scale)
            ref_kkt = kkt_residual(solution.problem, reference.x, reference.nu)
        except Exception as error:       # cvxpy's SolverError and the like: the closed form still stands
            ref_error = f"{type(error).__name__}: {error}"
    return PruningProgram(solution=solution, trace=tuple(mdl.bisection_trace(solution)), reference=reference,
                          kkt_residual=solution.kkt_residual, reference_kkt_residual=ref_kkt,
                          reference_error=ref_error)


# ----------------------------------------------------------------------------- pruning: the per-layer maps

@dataclass(frozen=True)
class SparsityMaps:
    """Every offered map's per-layer sparsity s_k at one global sparsity S."""
    sparsity: float
    sizes: np.ndarray
    per_layer: dict               # name -> (K,) s_k, for the maps that reach S
    errors: dict                  # name -> why the map cannot reach S (some s_k outside [0, 0.99])

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.errors:
            raise ValueError(self.errors[name])
        return self.per_layer[name]

    def global_sparsity(self, name: str) -> float:
        """sum_k n_k s_k / sum_k n_k: equal to S for every map (the sizes weigh the layers)."""
        return float(self.sizes @ self[name] / self.sizes.sum())


def sparsity_maps(specs: dict, sparsity: float, sizes, band: float | None = 0.1, penalty: str = "log") -> SparsityMaps:
    """specs: name -> None ("uniform"), per-layer scores for the map kind the name says (`map_kind`;
    "-reverse" mirrors it), or a function sparsity -> s_k (as `pruning.map_functions` returns)."""
    from ..pruning import sparsity_map
    sizes = np.asarray(sizes, dtype=float)
    per_layer, errors = {}, {}
    for name, spec in specs.items():
        try:
            if callable(spec):
                s = np.asarray(spec(sparsity), dtype=float)
            else:
                s = sparsity_map(map_kind(name), sparsity, sizes, spec, band=band, penalty=penalty,
                                 reverse=name.endswith("-reverse"))
            per_layer[name] = s
        except ValueError as error:
            errors[name] = str(error)
    return SparsityMaps(sparsity=float(sparsity), sizes=sizes, per_layer=per_layer, errors=errors)


# ----------------------------------------------------------------------------- pruning: one matrix's mask

@dataclass(frozen=True, eq=False)
class LayerInputs:
    """Calibration statistics of one decoder layer's linear maps, from the dense model's inputs to it
    (summed exactly as `pruning.pruned` sums them, so layer 0 matches it bit for bit)."""
    layer: int
    hessian: dict                 # module -> (d_in, d_in) float32 H = sum_t a_t a_t^T over unpadded tokens
    sq_norm: dict                 # module -> (d_in,) float32 sum_t a_t^2 (Wanda's ||X_j||^2)
    tokens: int

    def input_norm(self, module: str):
        """||X_j||_2 per input feature of `module` (Wanda's activation statistic)."""
        return self.sq_norm[module].sqrt()


def layer_inputs(model, blocks, layer: int, batch_size: int = 1) -> LayerInputs:
    """One pass over `blocks` that stops after decoder layer `layer` and sums, for each of its linear maps,
    a_t a_t^T and a_t^2 over the unpadded tokens (a_t: the map's input)."""
    from ..models import layers as find_layers
    from ..pruning import StopForward, forward_until_stopped
    target = find_layers(model)[layer]
    hessian, sq_norm, state = {}, {}, {"tokens": 0}

    def hook_for(name):
        def hook(module, inputs, output):
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[state["mask"]].float()
            sq_norm[name] = sq_norm.get(name, 0) + (a * a).sum(0)
            hessian[name] = hessian.get(name, 0) + a.T @ a
        return hook

    def stop(module, inputs, output):
        raise StopForward

    def note_tokens(batch):
        state["mask"] = batch["attention_mask"].reshape(-1).bool().to(device)
        state["tokens"] += int(state["mask"].sum())
    handles = [m.register_forward_hook(hook_for(n)) for n, m in target.linears.items()]
    handles.append(target.module.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        forward_until_stopped(model, blocks, batch_size, before_batch=note_tokens)
    finally:
        for handle in handles:
            handle.remove()
    return LayerInputs(layer=layer, hessian=hessian, sq_norm=sq_norm, tokens=state["tokens"])


@dataclass(frozen=True, eq=False)
class MatrixMask:
    """One matrix pruned by one method: its mask, the matrix left behind, and what it costs the outputs."""
    layer: int
    module: str
    method: str
    sparsity: float
    mask: object                  # (d_out, d_in) bool torch tensor, True = pruned
    weight: object                # (d_out, d_in) float32: the matrix as pruning leaves it (SparseGPT updates survivors)
    output_error: float           # ||(W - W') X||_F^2 / ||W X||_F^2 on the calibration inputs (NaN without them)
    input_norm: np.ndarray | None  # ||X_j|| per input column (None without calibration statistics)

    @property
    def pruned_fraction(self) -> float:
        return float(self.mask.float().mean())

    @property
    def row_fraction(self) -> np.ndarray:
        """Fraction pruned in each output row (Wanda: the same in every row)."""
        return self.mask.float().mean(1).numpy()

    @property
    def column_fraction(self) -> np.ndarray:
        """Fraction pruned in each input column (Wanda and SparseGPT spare the columns with large inputs)."""
        return self.mask.float().mean(0).numpy()


def matrix_mask(weight, method: str, sparsity: float, inputs: LayerInputs | None = None, module: str | None = None,
                layer: int = -1) -> MatrixMask:
    """The mask `method` gives one (d_out, d_in) matrix at sparsity s, with the public functions of
    `pruning`: magnitude_mask (whole matrix), wanda_mask (|W_ij| ||X_j|| per output row) or sparsegpt
    (OBS on H = sum_t a_t a_t^T, which also updates the surviving weights)."""
    from ..pruning import PRUNE_METHODS, magnitude_mask, sparsegpt, wanda_mask
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}: use one of {', '.join(PRUNE_METHODS)}")
    have = inputs is not None and module in inputs.hessian
    if method != "magnitude" and not have:
        raise ValueError(f"{method} needs calibration statistics of the matrix: pass inputs=layer_inputs(...) "
                         "and its module name")
    W = weight.detach().float()
    if method == "magnitude":
        mask = magnitude_mask(W, sparsity)
        after = W.masked_fill(mask, 0.0)
    elif method == "wanda":
        mask = wanda_mask(W, inputs.input_norm(module), sparsity)
        after = W.masked_fill(mask, 0.0)
    else:
        after, mask = sparsegpt(W, inputs.hessian[module], sparsity)
        after = after.masked_fill(mask, 0.0)           # as pruned() leaves it
    error, norm = float("nan"), None
    if have:
        H, w, d = inputs.hessian[module].double(), W.double(), (W - after).double()
        base = float(((w @ H) * w).sum())
        error = float(((d @ H) * d).sum()) / base if base > 0 else float("nan")
        norm = inputs.input_norm(module).cpu().numpy()
    # on the CPU for the widgets' pixels and plots, wherever the model lives
    return MatrixMask(layer=layer, module=module or "", method=method, sparsity=float(sparsity), mask=mask.cpu(),
                      weight=after.cpu(), output_error=error, input_norm=norm)


# ----------------------------------------------------------------------------- pruning: perplexity

@dataclass(frozen=True)
class PruneEvaluation:
    """Held-out perplexity of the dense model and of the model pruned inside `pruned()`, and the proof
    that the weights came back: the fingerprint before and after."""
    method: str
    target: np.ndarray            # requested s_k
    achieved: np.ndarray          # zeros counted per layer while pruned
    sizes: np.ndarray
    dense_perplexity: float
    perplexity: float
    fingerprint_before: str
    fingerprint_after: str
    seconds: float

    @property
    def global_sparsity(self) -> float:
        return float(self.sizes @ self.achieved / self.sizes.sum())

    @property
    def requested_sparsity(self) -> float:
        return float(self.sizes @ self.target / self.sizes.sum())

    @property
    def restored(self) -> bool:
        return self.fingerprint_before == self.fingerprint_after


STAGES = 5


def prune_evaluation(model, calibration, evaluation, per_layer, method: str, dense_perplexity: float | None = None,
                     batch_size: int = 1, on_stage=None, progress: bool = False) -> PruneEvaluation:
    """Fingerprint, prune with `per_layer` and `method` inside `pruning.pruned`, measure the perplexity on
    `evaluation`, leave the block (every weight copied back), fingerprint again. Synchronous on purpose:
    while it runs nothing else can use the pruned model. on_stage(i, STAGES, text) reports the stage;
    progress=True adds the core's per-layer and per-block bars."""
    import time

    from ..evaluate import perplexity
    from ..pruning import pruned, weight_fingerprint

    def stage(i, text):
        if on_stage is not None:
            on_stage(i, STAGES, text)
    start = time.perf_counter()
    if dense_perplexity is None:
        stage(0, "measuring the dense perplexity")
        dense_perplexity = perplexity(model, evaluation, batch_size=batch_size, progress=progress)
    stage(1, "fingerprinting the weights")
    before = weight_fingerprint(model)
    stage(2, f"pruning ({method})")
    with pruned(model, per_layer, method, blocks=calibration, batch_size=batch_size, progress=progress) as report:
        stage(3, "measuring the pruned perplexity")
        ppl = perplexity(model, evaluation, batch_size=batch_size, progress=progress)
        stage(4, "restoring the weights")
    after = weight_fingerprint(model)
    stage(5, "done")
    return PruneEvaluation(method=method, target=np.asarray(report.target, float), achieved=report.achieved,
                           sizes=report.sizes, dense_perplexity=float(dense_perplexity), perplexity=float(ppl),
                           fingerprint_before=before, fingerprint_after=after, seconds=time.perf_counter() - start)
