"""Widgets for the MDL side (numpy only): allocation, transfer regret, Shapley convergence."""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from .. import mdl
from .stepper import Step, Stepper
from .steps import allocation_steps, regret_curve, shapley_convergence
from .views import LayerStack, WaterFill

__all__ = ["Allocation", "TransferRegret", "ShapleyConvergence"]


def _values(scores):
    return np.asarray(getattr(scores, "values", scores), dtype=float)


def _names(scores, k):
    return list(getattr(scores, "names", None) or [f"layer {i}" for i in range(k)])


class Allocation(Stepper):
    """MDL program A step by step: the budget curve, bisection on nu, the water-filling picture, cvxpy.

    scores: LayerScores or per-layer gains (normalised to q on the simplex). Sliders: budget and beta
    (one beta for every layer); a toggle for whole units (ranks, experts).
    """

    def __init__(self, scores, budget: float, cost=1.0, beta: float = 1.0, lower=0.0, upper=np.inf,
                 with_reference: bool = True):
        self.q = mdl.normalise(np.clip(_values(scores), 0, None))
        self.cost, self.lower, self.upper, self.with_reference = cost, lower, upper, with_reference
        k = self.q.size
        lo = float(np.sum(np.broadcast_to(cost, k) * np.broadcast_to(lower, k)))
        self.budget = widgets.FloatSlider(budget, min=max(lo, 1e-3), max=max(4 * budget, lo + 1), step=budget / 50,
                                          description="budget B", continuous_update=False)
        self.beta = widgets.FloatLogSlider(beta, base=10, min=-2, max=2, step=0.1, description="beta",
                                           continuous_update=False)
        self.integer = widgets.Checkbox(False, description="whole units")
        self.waterfill = WaterFill()
        self.stack = LayerStack(_names(scores, k), self.q, label="q_k (normalised gains)")
        self.waterfill.observe(lambda c: setattr(self.stack, "selected", max(c["new"], 0)), names="selected")
        self.result: object = None
        self._solve()
        steps = [
            Step("The program", lambda: (
                f"Maximise sum_k q_k log(1 + r_k / beta) subject to sum_k c_k r_k = B = {self.budget.value:g}. "
                "Each layer's gain has diminishing returns; the budget couples them. KKT: q_k / (beta + r_k) = nu c_k, "
                "so r_k(nu) = clip(q_k / (nu c_k) - beta, lower, upper): one number nu prices a unit of capacity."),
                self._draw_curve),
            Step("Bisection on nu", self._bisection_text, self._draw_bisection),
            Step("Water-filling", lambda: (
                f"At nu = {self.result.solution.nu:.4g} every layer whose level q_k/(nu c_k) - beta is above its floor "
                "gets water up to that level; layers below get their lower bound. "
                f"Bounds active: {int(self.result.solution.active_lower.sum())} at lower, "
                f"{int(self.result.solution.active_upper.sum())} at upper."), self._draw_allocation),
            Step("Check against cvxpy", self._reference_text, self._draw_allocation),
        ]
        self.trace_step = widgets.IntSlider(0, 0, max(len(self.result.trace) - 1, 0), description="bisection",
                                            continuous_update=True)
        self.trace_step.observe(lambda _: self.redraw(), names="value")
        for control in (self.budget, self.beta, self.integer):
            control.observe(lambda _: self._changed(), names="value")
        super().__init__(steps, side=widgets.VBox([self.stack]),
                         controls=[widgets.HBox([self.budget, self.beta, self.integer]), self.trace_step, self.waterfill])

    def _solve(self):
        self.result = allocation_steps(self.q, self.budget.value, cost=self.cost, beta=self.beta.value, lower=self.lower,
                                       upper=self.upper, integer=self.integer.value,
                                       with_reference=self.with_reference)
        whole = self.result.integer
        self.waterfill.show(self.result.solution, x=None if whole is None else whole.x,
                            label="whole units" if whole is not None else "allocation")

    def _changed(self):
        self._solve()
        self.trace_step.max = max(len(self.result.trace) - 1, 0)
        self.trace_step.value = min(self.trace_step.value, self.trace_step.max)
        self.redraw()

    @property
    def allocation(self) -> np.ndarray:
        whole = self.result.integer
        return (whole if whole is not None else self.result.solution).x

    def _bisection_text(self):
        trace = self.result.trace
        if not trace:
            return "The budget saturates every bound: no bisection needed."
        lo, hi, mid, spend = trace[min(self.trace_step.value, len(trace) - 1)]
        return (f"Step {self.trace_step.value + 1} of {len(trace)}: nu in [{lo:.4g}, {hi:.4g}], try nu = {mid:.4g}: "
                f"spend {spend:.4g} vs budget {self.budget.value:g}. Spend falls as nu rises, so keep the half that "
                "brackets the budget. Move the 'bisection' slider to watch the bracket shrink.")

    def _reference_text(self):
        r = self.result
        gap = "skipped" if r.reference is None else f"{r.reference_gap:.2e} (cvxpy status: {r.reference.solver.status})"
        return (f"Closed form vs cvxpy (Clarabel): max |r_k - r_k(cvxpy)| = {gap}; nu = {r.solution.nu:.6g} vs "
                f"{r.reference.nu if r.reference is not None else float('nan'):.6g}. "
                f"KKT residual of the closed form: {r.kkt_residual:.1e}.")

    def _draw_curve(self, fig):
        p = self.result.solution.problem
        nus = np.logspace(np.log10(self.result.solution.nu) - 2, np.log10(self.result.solution.nu) + 2, 200)
        ax = fig.subplots()
        ax.semilogx(nus, mdl.budget_curve(p, nus), label="spend sum_k c_k r_k(nu)")
        ax.axhline(self.budget.value, color="C1", ls="--", label="budget B")
        ax.axvline(self.result.solution.nu, color="k", lw=0.8, label=f"nu* = {self.result.solution.nu:.3g}")
        ax.set(xlabel="nu (price of one unit of capacity)", ylabel="spend")
        ax.legend()

    def _draw_bisection(self, fig):
        self._draw_curve(fig)
        if self.result.trace:
            lo, hi, mid, spend = self.result.trace[min(self.trace_step.value, len(self.result.trace) - 1)]
            ax = fig.axes[0]
            ax.axvspan(lo, hi, color="C2", alpha=0.2, label="bracket")
            ax.plot([mid], [spend], "o", color="C3")
            ax.legend()

    def _draw_allocation(self, fig):
        ax = fig.subplots()
        k = np.arange(self.q.size)
        ax.bar(k, self.result.solution.x, color="C0", label="closed form r_k")
        if self.result.integer is not None:
            ax.step(k, self.result.integer.x, where="mid", color="C1", label="whole units")
        if self.result.reference is not None:
            ax.plot(k, self.result.reference.x, "x", color="C3", label="cvxpy")
        ax.set(xlabel="layer", ylabel="r_k")
        ax.legend()


class TransferRegret(Stepper):
    """Allocate with source-task scores, pay regret on the target task: regret <= C delta^2 (arXiv 2603.00910, transfer theorem)."""

    def __init__(self, q_source, q_target, budget: float, cost=1.0, beta: float = 1.0, lower=0.0, upper=np.inf):
        self.curve = regret_curve(_values(q_source), _values(q_target), budget, cost=cost, beta=beta, lower=lower,
                                  upper=upper)
        full = mdl.regret_bound(_values(q_source), _values(q_target), budget, cost=cost, beta=beta, lower=lower,
                                upper=upper)
        self.full = full
        self.point = widgets.SelectionSlider(options=[(f"{t:.3g}", i) for i, t in enumerate(self.curve.t)],
                                             value=len(self.curve.t) - 1, description="t (mix)")
        self.point.observe(lambda _: self.redraw(), names="value")
        steps = [
            Step("Two tasks, two allocations", lambda: (
                f"Scores from the source task differ from the target's by delta = ||q_T - q_S|| = {full.delta:.3g}. "
                f"Allocating with the source scores costs regret {full.regret:.3g} nats of objective on the target "
                f"(bound C delta^2 = {full.bound:.3g}, C = {full.constant:.3g})."), self._draw_points),
            Step("Regret is quadratic in delta", lambda: (
                f"Mixing q(t) = (1 - t) q_T + t q_S walks delta down to 0. The log-log slope of regret against delta "
                f"is {self.curve.slope():.2f} (theory: 2): a small score error costs a much smaller regret. "
                f"The target program's condition number is kappa = {self.curve.kappa:.3g}; the bound grows with it."),
                self._draw_curve),
        ]
        super().__init__(steps, controls=[self.point])

    def _draw_points(self, fig):
        ax = fig.subplots()
        i = self.point.value
        ax.loglog(self.curve.delta, self.curve.regret, "o-", label="regret")
        ax.loglog(self.curve.delta, self.curve.bound, "--", label="bound C delta^2")
        ax.plot(self.curve.delta[i], self.curve.regret[i], "s", color="C3", ms=9, label=f"t = {self.curve.t[i]:.3g}")
        ax.set(xlabel="delta = ||q_T - q(t)||", ylabel="regret")
        ax.legend()

    def _draw_curve(self, fig):
        self._draw_points(fig)
        ax = fig.axes[0]
        d = self.curve.delta[self.curve.delta > 0]
        ref = self.curve.regret[-1] * (d / self.curve.delta[-1]) ** 2
        ax.loglog(d, ref, ":", color="k", label="slope 2")
        ax.legend()


class ShapleyConvergence(Stepper):
    """Sampling estimators of layer Shapley values against exact enumeration, as the budget grows."""

    def __init__(self, value_fn, n_players: int, names=None, methods=("permutation", "antithetic", "stratified", "kernel"),
                 budgets=(32, 64, 128, 256), seed: int = 0):
        self.result = shapley_convergence(value_fn, n_players, methods=methods, budgets=budgets, seed=seed)
        names = list(names) if names is not None else [f"player {i}" for i in range(n_players)]
        self.stack = LayerStack(names, self.result.exact, label="exact Shapley values")
        self.method = widgets.Dropdown(options=list(methods), description="method")
        self.budget = widgets.SelectionSlider(options=list(budgets), value=budgets[-1], description="budget")
        for control in (self.method, self.budget):
            control.observe(lambda _: self.redraw(), names="value")
        steps = [
            Step("Exact values", lambda: (
                f"2^{n_players} = {2 ** n_players} coalitions, each one forward pass with a subset of layers active. "
                f"phi sums to v(N) - v(empty) = {self.result.exact.sum():.4g} (efficiency)."), self._draw_exact),
            Step("Error against the budget", self._error_text, self._draw_errors),
        ]
        super().__init__(steps, side=self.stack, controls=[widgets.HBox([self.method, self.budget])])

    def _error(self) -> float:
        return float(self.result.errors[self.method.value][self.result.budgets.index(self.budget.value)])

    def _error_text(self) -> str:
        """The error at the chosen budget and each estimator's fitted rate (computed from the errors drawn)."""
        r = self.result

        def rate(method):
            fitted = r.rate(method)
            if np.isfinite(fitted):
                return f"{method} n^{fitted:.2f}"
            if r.exact_at(method).all():
                return f"{method} exact at every budget"
            return f"{method} no rate (fewer than two budgets below 2^{r.exact.size} evaluations with an error left)"
        return (f"{self.method.value} at {self.budget.value} evaluations: max error {self._error():.3g}. "
                "Error ~ n^slope, the slope fitted by least squares to the points drawn (log error against log "
                "distinct evaluations, leaving out errors at rounding level and budgets that reach all "
                f"2^{r.exact.size} coalitions): " + "; ".join(rate(m) for m in r.errors) +
                ". A plain Monte-Carlo average would give n^-0.50; a few budgets on one game make these rough.")

    def _draw_exact(self, fig):
        ax = fig.subplots()
        ax.bar(np.arange(self.result.exact.size), self.result.exact)
        ax.set(xlabel="player (layer)", ylabel="phi_k")

    def _draw_errors(self, fig):
        ax = fig.subplots()
        for method, errors in self.result.errors.items():
            ax.loglog(self.result.evaluations[method], np.maximum(errors, 1e-12), "o-", label=method,
                      lw=2.5 if method == self.method.value else 1)
        ax.set(xlabel="distinct evaluations", ylabel="max_k |phi_k - exact|")
        ax.legend()
        self.stack.show(self.result.estimates[self.method.value][self.result.budgets.index(self.budget.value)],
                        label=f"{self.method.value} @ {self.budget.value}")
