"""Widgets on a real model: gradient isolation, curvature, pruning. They compute with the pure step
functions of `steps.py` (once on creation, on a button press, or cached per setting), then only draw."""
from __future__ import annotations

from collections import OrderedDict

import ipywidgets as widgets
import numpy as np
from IPython import get_ipython

from . import steps as st
from .stepper import Step, Stepper
from .steps import curvature_study, gradient_isolation, newton_line
from .views import LayerStack, MaskHeatmap

__all__ = ["GradientIsolation", "Curvature", "Pruning"]


class GradientIsolation(Stepper):
    """forward -> loss -> backward -> isolate g_k: pick a layer on the stack to see its modules."""

    def __init__(self, model, blocks, batch_size: int = 1):
        self.result = r = gradient_isolation(model, blocks, batch_size=batch_size)
        self.stack = LayerStack(r.names, r.layer_norm2, label="||g_k||^2 per layer")
        self.stack.observe(lambda _: self.redraw(), names="selected")
        k = lambda: self.stack.selected     # noqa: E731  (the layer the student picked)
        steps = [
            Step("Forward", f"The model reads {len(blocks)} blocks of {blocks.block_size} tokens of "
                 f"'{blocks.task}' and predicts every next token: {r.tokens} predictions are scored."),
            Step("Loss", f"The mean next-token loss is L = {r.loss:.4f} nats, a perplexity of {np.exp(r.loss):.2f}. "
                 "This one number is what every layer is judged by."),
            Step("Backward", f"One backward pass gives dL/dW for every weight. Summed over the decoder layers, "
                 f"||g||^2 = {r.total_norm2:.4g}."),
            Step("Isolate g_k", lambda: (
                f"g_k keeps only the gradient on layer {k()}'s linear maps ({int(r.layer_params[k()]):,} weights). "
                f"Layer {k()} holds {100 * r.share(k()):.1f}% of the squared gradient norm; its modules below."),
                self._draw_modules),
            Step("All layers", "||g_k||^2 for every layer: where a small step would change the loss most. "
                 "Curvature (next widget) turns this into the gain zeta^2 that a Newton step can realise.",
                 self._draw_layers),
        ]
        super().__init__(steps, side=self.stack)

    def _draw_modules(self, fig):
        modules = self.result.module_norm2[self.stack.selected]
        ax = fig.subplots()
        ax.barh(list(modules), list(modules.values()), color="C1")
        ax.set(xlabel="||g_k,m||^2", title=f"layer {self.stack.selected}")

    def _draw_layers(self, fig):
        ax = fig.subplots()
        ax.bar(np.arange(len(self.result.names)), self.result.layer_norm2)
        ax.bar([self.stack.selected], [self.result.layer_norm2[self.stack.selected]], color="C1")
        ax.set(xlabel="layer", ylabel="||g_k||^2", yscale="log")


class Curvature(Stepper):
    """Factor spectra, damping, zeta^2 under several curvatures side by side, and the Newton step."""

    def __init__(self, model, blocks, layers=None, curvatures=("identity", "diag", "kfac", "ekfac"), exact: bool = False,
                 batch_size: int = 1):
        self.model, self.blocks, self.batch_size = model, blocks, batch_size
        self.study = s = curvature_study(model, blocks, layers=layers, curvatures=curvatures, exact=exact,
                                         batch_size=batch_size)
        self.curvature = widgets.Dropdown(options=list(curvatures), value=curvatures[-1], description="curvature")
        self.damping = widgets.SelectionSlider(options=[(f"{d:.3g}", d) for d in s.dampings],
                                               value=s.dampings[int(np.argmin(abs(np.log(s.dampings / 0.1))))],
                                               description="damping", continuous_update=False)
        self.stack = LayerStack(s.names, s.at(self.curvature.value, self.damping.value), label="zeta^2")
        self.newton_button = widgets.Button(description="Newton step on the selected layer", icon="play",
                                            layout=widgets.Layout(width="280px"))
        self.newton_button.on_click(lambda _: self.run_newton())
        self.line = None
        for control in (self.curvature, self.damping):
            control.observe(lambda _: self._changed(), names="value")
        self.stack.observe(lambda _: self.redraw(), names="selected")
        steps = [
            Step("Factor spectra", lambda: (
                f"The eigenvalues of H~ for {self._spectrum()[0]} of {s.names[self.stack.selected]}: K-FAC takes the "
                "Kronecker product of two small factors (inputs x output gradients); EK-FAC refits the diagonal in that "
                "eigenbasis; diag keeps only the diagonal. A long tail of small eigenvalues is why damping matters."),
                self._draw_spectra),
            Step("Damping", lambda: (
                f"zeta^2 = g^T (H~ + lam I)^-1 g with lam = {self.damping.value:.3g} x mean eigenvalue. Small lam "
                "trusts the flat directions (zeta^2 grows); large lam turns zeta^2 into ||g||^2 / lam."), self._draw_damping),
            Step("Curvatures side by side", self._side_text, self._draw_side),
            Step("The quadratic model against the real loss", self._newton_text, self._draw_newton),
        ]
        super().__init__(steps, side=self.stack,
                         controls=[widgets.HBox([self.curvature, self.damping]), self.newton_button])

    def _spectrum(self):
        layer = self.study.layers[self.stack.selected]
        return self.study.spectra[self.curvature.value][layer]

    def _changed(self):
        self.stack.show(self.study.at(self.curvature.value, self.damping.value), label=f"zeta^2 [{self.curvature.value}]")
        self.redraw()

    def _draw_spectra(self, fig):
        ax = fig.subplots()
        layer = self.study.layers[self.stack.selected]
        for name, spectra in self.study.spectra.items():
            module, eig = spectra[layer]
            if eig.size > 1:
                ax.semilogy(np.linspace(0, 1, eig.size), np.maximum(eig, 1e-12), label=name,
                            lw=2.5 if name == self.curvature.value else 1)
        ax.set(xlabel="eigenvalue rank (fraction)", ylabel="eigenvalue of H~", title=self._spectrum()[0])
        ax.legend()

    def _draw_damping(self, fig):
        ax = fig.subplots()
        j = self.stack.selected
        for name, table in self.study.zeta2.items():
            ax.loglog(self.study.dampings, table[:, j], label=name, lw=2.5 if name == self.curvature.value else 1)
        ax.axvline(self.damping.value, color="k", lw=0.8)
        ax.set(xlabel="relative damping", ylabel=f"zeta^2 of {self.study.names[j]}")
        ax.legend()

    def _side_text(self):
        rho, top_zeta, top_grad = self.study.rank_agreement(self.curvature.value, self.damping.value)
        if not np.isfinite(rho):
            verdict = "too few layers scored for a rank correlation."
        elif rho >= 0.9:
            verdict = "at this damping the curvature keeps the gradient-norm order of the layers almost unchanged."
        elif rho >= 0.5:
            verdict = "the curvature keeps the broad order of the layers but moves some of them."
        else:
            verdict = "the curvature reorders the layers."
        top = (f"both put layer {top_zeta} first" if top_zeta == top_grad else
               f"zeta^2 puts layer {top_zeta} first, ||g||^2 layer {top_grad}")
        text = (f"Each curvature's zeta^2 normalised to q (sums to 1). Spearman rank correlation of "
                f"{self.curvature.value} zeta^2 against ||g||^2: {rho:.2f}: {verdict} ({top}.)")
        if self.study.exact is not None:
            text += f" Exact Gauss-Newton (damping {self.study.exact_damping}) is drawn as black crosses."
        return text

    def _draw_side(self, fig):
        ax = fig.subplots()
        x = np.arange(len(self.study.layers))
        width = 0.8 / (len(self.study.zeta2) + 1)
        for i, name in enumerate(self.study.zeta2):
            v = self.study.at(name, self.damping.value)
            ax.bar(x + i * width, v / v.sum(), width, label=name)
        g = self.study.grad_norm2
        ax.bar(x + len(self.study.zeta2) * width, g / g.sum(), width, label="||g||^2", color="0.6")
        if self.study.exact is not None:
            ax.plot(x + 0.4, self.study.exact / self.study.exact.sum(), "kx", label="exact")
        ax.set(xlabel="layer", ylabel="q_k", xticks=x + 0.4, xticklabels=[str(i) for i in self.study.layers])
        ax.legend(fontsize=8)

    def run_newton(self, scales=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)):
        """Measure the loss along the selected layer's Newton step (a few forward passes)."""
        self.newton_button.disabled = True
        try:
            self.line = newton_line(self.model, self.blocks, self.study.layers[self.stack.selected],
                                    curvature=self.curvature.value if self.curvature.value != "identity" else "kfac",
                                    damping=self.damping.value, scales=scales, batch_size=self.batch_size)
        finally:
            self.newton_button.disabled = False
        self.go(3)
        self.redraw()
        return self.line

    def _newton_text(self):
        if self.line is None:
            return "Press 'Newton step on the selected layer' to measure the loss along Delta = -H~^-1 g_k."
        ln = self.line
        actual = ln.loss[0] - ln.loss[list(ln.scales).index(1.0)] if 1.0 in ln.scales else float("nan")
        return (f"Layer {ln.layer}, {ln.curvature}: the quadratic model predicts a decrease of zeta^2/2 = {ln.zeta2 / 2:.4g} "
                f"at t = 1; the real loss fell by {actual:.4g}. The real loss is lowest at t = {ln.best_scale:g}.")

    def _draw_newton(self, fig):
        if self.line is None:
            return
        ax = fig.subplots()
        ax.plot(self.line.scales, self.line.loss, "o-", label="real loss L(theta + t Delta)")
        ax.plot(self.line.scales, self.line.model, "--", label="quadratic model")
        ax.set(xlabel="t (fraction of the Newton step)", ylabel="loss (nats)")
        ax.legend()


MAP_NOTES = {
    "uniform": "uniform: s_k = S in every layer.",
    "mdl": ("mdl: program B's solution (step 1): low gain per weight, more sparsity; high-q layers are protected "
            "(MDL's convention: a high score means a layer worth keeping)."),
    "owl": ("OWL (Yin et al., arXiv 2310.05175): the more outlier weights (|W_ij| ||X_j|| above 5x the layer's mean) "
            "a layer has, the less it is pruned: s_k = S - (D_k - mean D), D_k scaled into [0, 2 x 0.08]."),
    "alphapruning": ("AlphaPruning (Lu et al., arXiv 2410.10912): the heavy-tail exponent alpha of each layer's "
                     "weight spectrum, mapped linearly into [0.7, 1.3] x S: a higher alpha (a less trained layer) "
                     "is pruned more."),
    "layerif": ("LayerIF (Askari et al., arXiv 2505.23811): |S(k)| min-max normalised and smoothed, then the "
                "AlphaPruning map: a high S(k) (a less trained layer, in the paper's convention) is pruned more."),
}
METHOD_NOTES = {
    "magnitude": "magnitude: the floor(s x d_out x d_in) smallest |W_ij| of the whole matrix.",
    "wanda": ("Wanda (Sun et al., arXiv 2306.11695): in each output row, the floor(s x d_in) smallest |W_ij| ||X_j||, "
              "||X_j|| the norm of input feature j over the calibration tokens."),
    "sparsegpt": ("SparseGPT (Frantar & Alistarh, arXiv 2301.00774): optimal brain surgeon on H = sum_t a_t a_t^T "
                  "(damping 1% of its mean diagonal), in column blocks of 128: prune the smallest w_ij^2 / "
                  "[H^-1]_jj^2 of the block and update the surviving weights to cancel the error on the inputs."),
}


class Pruning(Stepper):
    """Program B (KKT, bisection on nu, cvxpy) -> the per-layer sparsity map -> the chosen method's mask
    of one matrix -> perplexity dense and pruned, weights restored.

    maps: {name: spec} for the maps offered besides "uniform". A spec is per-layer scores (LayerScores or
    an array) for the map kind the name says ("owl", "alphapruning", "layerif", "mdl" or "mdl-<anything>";
    "-reverse" mirrors a map), or a function sparsity -> per-layer sparsity (as `pruning.map_functions`
    returns). scores: the gains q of program B (LayerScores or an array); by default those of the first
    "mdl..." map, else K-FAC zeta^2 on `calibration` (computed here); an "mdl" map is added from them.

    Every number comes from the step functions of `steps.py`, cached per setting (program B per (S, phi),
    calibration statistics per layer, masks per (layer, matrix, method, s_k)). `evaluate()` (the Evaluate
    button, or arriving at step 4) prunes inside `pruned()` synchronously, with progress: no other cell
    can run while the shared model is pruned, and the weights come back bit-identical (fingerprinted).
    """

    def __init__(self, model, calibration, evaluation, maps: dict | None = None, sparsity: float = 0.5,
                 batch_size: int = 1, scores=None, band: float | None = 0.1, penalty: str = "log",
                 with_reference: bool = True, evaluate_on_arrival: bool = True):
        from ..models import layers
        from ..pruning import MAP_KINDS, PRUNE_METHODS, layer_sizes, mdl_gains
        self.model, self.calibration, self.evaluation, self.batch_size = model, calibration, evaluation, batch_size
        self.found = layers(model)
        self.sizes = layer_sizes(model)
        self.band, self.with_reference, self.evaluate_on_arrival = band, with_reference, evaluate_on_arrival
        maps = dict(maps or {})
        for name, spec in maps.items():
            if not callable(spec) and spec is not None and st.map_kind(name) not in MAP_KINDS:
                raise ValueError(f"map {name!r}: name a map kind ({', '.join(MAP_KINDS)}, 'mdl-<scores>', "
                                 "'<kind>-reverse') for per-layer scores, or give a function sparsity -> per-layer "
                                 "sparsity")
        mdl_maps = [n for n, spec in maps.items() if st.map_kind(n) == "mdl" and spec is not None and not callable(spec)]
        if scores is None:
            if mdl_maps:
                scores = maps[mdl_maps[0]]
            else:
                from ..scoring import score
                scores = score(model, calibration, curvature="kfac", batch_size=batch_size, progress=False)
        if not mdl_maps:
            maps["mdl"] = scores
        self.scores = scores
        self.q = mdl_gains(scores)                          # as sparsity_map("mdl") takes them
        if self.q.size != len(self.found):
            raise ValueError(f"program B needs one score per layer ({len(self.found)}), got {self.q.size}")
        self.maps = {"uniform": None, **maps}
        self._programs, self._map_cache = OrderedDict(), OrderedDict()
        self._inputs, self._masks = OrderedDict(), OrderedDict()
        self.evaluations: dict = {}
        self.results: list[dict] = []
        self.dense_perplexity: float | None = None
        self.eval_error: Exception | None = None

        self.sparsity = widgets.FloatSlider(sparsity, min=0.0, max=0.9, step=0.05, description="sparsity S",
                                            continuous_update=False)
        self.penalty = widgets.Dropdown(options=[("-log(1 - s)", "log"), ("s^2 / 2", "quadratic")], value=penalty,
                                        description="phi(s)")
        self.trace_step = widgets.IntSlider(0, 0, 0, description="bisection", layout=widgets.Layout(width="420px"))
        self.map = widgets.Dropdown(options=list(self.maps), value=(mdl_maps or ["mdl"])[0], description="map")
        self.method = widgets.Dropdown(options=list(PRUNE_METHODS), value="wanda", description="method")
        self.module = widgets.Dropdown(options=list(self.found[0].linears), description="matrix")
        self.stack = LayerStack([layer.name for layer in self.found], np.zeros(len(self.found)), label="s_k")
        self.heatmap = MaskHeatmap()
        self.button = widgets.Button(description="Evaluate", icon="play", button_style="primary")
        self.progress = widgets.IntProgress(0, 0, st.STAGES, description="", layout=widgets.Layout(width="160px"))
        self.status = widgets.HTML()
        self.report = widgets.HTML()
        self.bars = widgets.Output()        # the core's per-layer / per-block bars while an evaluation runs
        self.evaluate_row = widgets.VBox([widgets.HBox([self.button, self.progress, self.status]), self.bars,
                                          self.report])
        self._trace_program()
        steps = [
            Step("Program B: KKT conditions and bisection on nu", self._program_text, self._draw_program),
            Step("The per-layer sparsity map", self._map_text, self._draw_maps),
            Step("The mask of one matrix", self._mask_text, self._draw_mask),
            Step("Perplexity, dense -> pruned, weights restored", self._evaluation_text, self._draw_evaluation),
        ]
        super().__init__(steps, side=widgets.VBox([self.stack, self.heatmap]),
                         controls=[widgets.HBox([self.sparsity, self.penalty, self.map, self.method, self.module]),
                                   self.trace_step, self.evaluate_row])
        self.add_class("lq-pruning")
        for control in (self.sparsity, self.penalty):
            control.observe(lambda _: self._program_changed(), names="value")
        for control in (self.map, self.method, self.module, self.trace_step):
            control.observe(lambda _: self.redraw(), names="value")
        self.stack.observe(lambda _: self.redraw(), names="selected")
        self.step.observe(self._arrived, names="value")
        self.button.on_click(lambda _: self._evaluate_clicked())

    # --------------------------------------------------------------- cached step results

    @staticmethod
    def _cached(cache: OrderedDict, key, make, size: int):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = make()
        while len(cache) > size:
            cache.popitem(last=False)
        return value

    def program(self) -> st.PruningProgram:
        """Program B at the current S and phi (bounds S -/+ band, as the mdl map), with cvxpy."""
        S, penalty = round(self.sparsity.value, 6), self.penalty.value
        lo, hi = st.band_bounds(S, self.band)
        return self._cached(self._programs, (S, penalty), lambda: st.pruning_program(
            self.q, S, self.sizes, lower=lo, upper=hi, penalty=penalty, with_reference=self.with_reference), 8)

    def sparsity_maps(self) -> st.SparsityMaps:
        S, penalty = round(self.sparsity.value, 6), self.penalty.value
        return self._cached(self._map_cache, (S, penalty),
                            lambda: st.sparsity_maps(self.maps, S, self.sizes, band=self.band, penalty=penalty), 16)

    def per_layer(self) -> np.ndarray:
        """s_k of the chosen map at the current S (ValueError if that map cannot reach S)."""
        return self.sparsity_maps()[self.map.value]

    def layer_inputs(self, layer: int) -> st.LayerInputs:
        return self._cached(self._inputs, layer, lambda: st.layer_inputs(self.model, self.calibration, layer,
                                                                         batch_size=self.batch_size), 3)

    def matrix_mask(self, method: str | None = None, layer: int | None = None, module: str | None = None) -> st.MatrixMask:
        """The mask of (layer, matrix) at the map's s_k for `method` (default: the selected ones), cached."""
        from ..models import weight_matrix
        method = method or self.method.value
        layer = self.stack.selected if layer is None else layer
        module = module or self.module.value
        s = float(self.per_layer()[layer])
        inputs = self.layer_inputs(layer)
        weight = weight_matrix(self.found[layer].linears[module])
        return self._cached(self._masks, (layer, module, method, s),
                            lambda: st.matrix_mask(weight, method, s, inputs, module, layer), 24)

    def mask(self):
        """The selected matrix's mask (True = pruned) for the selected method."""
        return self.matrix_mask().mask

    def _key(self):
        name = self.map.value
        return (name, self.method.value, round(self.sparsity.value, 6),
                self.penalty.value if st.map_kind(name) == "mdl" and not callable(self.maps[name]) else None)

    # --------------------------------------------------------------- reacting

    def _trace_program(self):
        n = len(self.program().trace)
        self.trace_step.max = max(n - 1, 0)
        self.trace_step.value = min(self.trace_step.value, self.trace_step.max)

    def _program_changed(self):
        try:
            self._trace_program()
        except Exception:       # redraw shows the error in the panel
            pass
        self.redraw()

    def _show_controls(self):
        i = self.step.value
        shown = {self.penalty: i == 0, self.trace_step: i == 0, self.map: i >= 1, self.method: i >= 2,
                 self.module: i == 2, self.heatmap: i == 2, self.evaluate_row: i == 3}
        for control, visible in shown.items():
            control.layout.display = None if visible else "none"

    def redraw(self):
        self._show_controls()
        super().redraw()
        if self.error is None:
            self._update_views()

    def _update_views(self):
        i = self.step.value
        if i == 0:
            self.stack.show(self.program().solution.x, label=f"s_k, program B at S = {self.sparsity.value:g}")
            return
        self.stack.show(self.per_layer(), label=f"s_k, {self.map.value} map at S = {self.sparsity.value:g}")
        if i == 2:
            m = self.matrix_mask()
            self.heatmap.show(m.mask.numpy(), label=f"layer {m.layer} {m.module}, {m.method} at s = {m.sparsity:.3f}")

    def _arrived(self, change):
        if change["new"] == 3 and self.evaluate_on_arrival and self._key() not in self.evaluations:
            self._evaluate_clicked()

    def _evaluate_clicked(self):
        try:
            self.evaluate()
        except Exception as error:          # a click's exception would be lost: show it
            self.eval_error = error
            self.status.value = f"<span style='color:#b00'>{type(error).__name__}: {error}</span>"
            self.redraw()

    # --------------------------------------------------------------- step 4

    def evaluate(self) -> dict:
        """Prune with the current map, method and S inside `pruned()`, measure the perplexity on
        `evaluation`, restore (synchronously: the kernel runs nothing else meanwhile). Returns the row."""
        per_layer = self.per_layer()
        key = self._key()
        self.button.disabled = True

        def on_stage(i, n, text):
            self.progress.max, self.progress.value = n, i
            self.status.value = f"{text} ..." if i < n else "done"
        kernel = get_ipython() is not None
        failure = None
        try:
            with self.bars:
                # inside IPython an Output widget swallows the exceptions raised in it (it prints them
                # instead), so the failure is caught here and raised again once outside
                try:
                    result = st.prune_evaluation(self.model, self.calibration, self.evaluation, per_layer,
                                                 self.method.value, dense_perplexity=self.dense_perplexity,
                                                 batch_size=self.batch_size, on_stage=on_stage, progress=kernel)
                except BaseException as err:
                    failure = err
        finally:
            self.button.disabled = False
            if kernel:
                self.bars.clear_output()
        if failure is not None:
            raise failure
        self.dense_perplexity = result.dense_perplexity
        self.evaluations[key] = result
        self.eval_error = None
        row = dict(map=key[0], method=key[1], sparsity=key[2], perplexity=result.perplexity,
                   achieved=result.global_sparsity, dense_perplexity=result.dense_perplexity,
                   restored=result.restored, seconds=result.seconds)
        self.results.append(row)
        self.status.value = (f"done in {result.seconds:.1f} s: weights restored" if result.restored else
                             "<span style='color:#b00'>weights NOT restored: the fingerprints differ</span>")
        self.report.value = "<br>".join(
            f"{i}. {r['map']} / {r['method']} @ {r['sparsity']:.0%}: perplexity {r['dense_perplexity']:.2f} -> "
            f"{r['perplexity']:.2f}" for i, r in list(enumerate(self.results, 1))[-10:])
        if self.step.value == 3:
            self.redraw()
        return row

    # --------------------------------------------------------------- texts and figures

    def _program_text(self) -> str:
        p = self.program()
        sol, S = p.solution, self.sparsity.value
        lo, hi = st.band_bounds(S, self.band)
        if self.penalty.value == "log":
            phi = "phi(s) = -log(1 - s), the code length of keeping the fraction 1 - s (the package's penalty; the paper's code uses s^2/2)"
            stat = "q_k / (1 - s_k) = nu n_k"
            closed = "s_k(nu) = clip(1 - q_k / (nu n_k), lo, hi)"
        else:
            phi = "phi(s) = s^2 / 2 (the paper's code; the package's default is -log(1 - s))"
            stat = "q_k s_k = nu n_k"
            closed = "s_k(nu) = clip(nu n_k / q_k, lo, hi)"
        lines = [
            "Program B (Amaefuna et al., curvature-weighted MDL, arXiv 2603.00910): minimise sum_k q_k phi(s_k) "
            f"subject to sum_k n_k s_k = S sum_k n_k and lo <= s_k <= hi, with {phi}; S = {S:g}, "
            f"bounds [{lo:g}, {hi:g}] (S -/+ {self.band}), n_k = the layer's weights, q_k its normalised gain.",
            f"KKT: L = sum_k q_k phi(s_k) - nu (sum_k n_k s_k - S sum_k n_k) - sum_k a_k (s_k - lo) - sum_k b_k (hi - s_k), "
            f"a, b >= 0. Stationarity: q_k phi'(s_k) = nu n_k + a_k - b_k, i.e. {stat} where lo < s_k < hi; "
            "slackness: a_k (s_k - lo) = 0, b_k (hi - s_k) = 0. Hence " + closed + ": a low gain per weight q_k / n_k "
            "means more sparsity.",
        ]
        if p.trace:
            nlo, nhi, mid, g = p.bracket(self.trace_step.value)
            lines.append(f"Bisection step {self.trace_step.value + 1} of {len(p.trace)}: nu in [{nlo:.4g}, {nhi:.4g}], "
                         f"try nu = {mid:.4g}: global sparsity {g:.6f} vs S = {S:g}, so keep the "
                         f"{'upper' if g < S else 'lower'} half (the global sparsity rises with nu). "
                         f"nu* = {sol.nu:.6g}.")
        else:
            lines.append(f"S sits at the end of the feasible range: no bisection needed (nu* = {sol.nu:.3g}).")
        if p.reference is None:
            why = f"failed ({p.reference_error[:160]})" if p.reference_error else "skipped"
            lines.append(f"cvxpy {why}; KKT residual of the closed form {p.kkt_residual:.1e}.")
        else:
            cone = "exponential cone" if self.penalty.value == "log" else "a quadratic program"
            nu_note = ("" if int((~sol.active_lower & ~sol.active_upper).sum()) else
                       " (every layer sits at a bound: any nu in an interval satisfies the KKT conditions)")
            lines.append(f"cvxpy (Clarabel, {cone}; crosses on the right): status {p.reference.solver.status}, "
                         f"max |s_k - s_k(cvxpy)| = {p.reference_gap:.1e}, nu = {p.reference.nu:.6g}{nu_note}. "
                         f"KKT residual: closed form {p.kkt_residual:.1e}, cvxpy's answer {p.reference_kkt_residual:.1e}.")
        return "\n".join(lines)

    def _draw_program(self, fig):
        p = self.program()
        sol = p.solution
        left, right = fig.subplots(1, 2)
        if p.trace and sol.nu > 0:
            lo0, hi0 = p.trace[0][0], p.trace[0][1]
            nus = np.logspace(np.log10(lo0) - 0.3, np.log10(hi0) + 0.3, 200)
            left.semilogx(nus, [p.global_sparsity(nu) for nu in nus], label="sum n s(nu) / sum n")
            left.axhline(self.sparsity.value, color="C1", ls="--", label="S")
            left.axvline(sol.nu, color="k", lw=0.8, label=f"nu* = {sol.nu:.3g}")
            nlo, nhi, mid, g = p.bracket(self.trace_step.value)
            left.axvspan(nlo, nhi, color="C2", alpha=0.2, label="bracket")
            left.plot([mid], [g], "o", color="C3")
            left.set(xlabel="nu", ylabel="global sparsity")
            left.legend(fontsize=7)
            s_mid = p.s_of_nu(mid)
        else:
            s_mid = sol.x
        k = np.arange(sol.x.size)
        right.bar(k, sol.x, color="C0", label="s_k at nu*")
        right.step(k, s_mid, where="mid", color="C3", lw=1, label="s_k at the bisection nu")
        if p.reference is not None:
            right.plot(k, p.reference.x, "x", color="k", label="cvxpy")
        right.axhline(p.problem.lower[0], color="0.5", ls=":", lw=0.8)
        right.axhline(p.problem.upper[0], color="0.5", ls=":", lw=0.8)
        right.set(xlabel="layer", ylabel="s_k", ylim=(max(0, p.problem.lower.min() - 0.05), p.problem.upper.max() + 0.05))
        right.legend(fontsize=7)

    def _map_text(self) -> str:
        maps, name = self.sparsity_maps(), self.map.value
        s = maps[name]
        g, S, k = maps.global_sparsity(name), self.sparsity.value, self.stack.selected
        note = "a map given as a function of S." if callable(self.maps[name]) else MAP_NOTES[st.map_kind(name)]
        lines = [note + (" Reversed: s_k -> 2S - s_k." if name.endswith("-reverse") else ""),
                 f"Global sparsity sum_k n_k s_k / sum_k n_k = {g:.9f} for S = {S:g} (|difference| {abs(g - S):.1e}): "
                 "every map keeps it exactly, the layer sizes n_k weighing the layers. "
                 f"Most pruned: layer {int(np.argmax(s))} (s = {s.max():.3f}); least: layer {int(np.argmin(s))} "
                 f"(s = {s.min():.3f}). Selected layer {k}: s_k = {s[k]:.3f} of {int(self.sizes[k]):,} weights."]
        if maps.errors:
            lines.append("Cannot reach this S: " + "; ".join(f"{n} ({e.split(':')[0]})" for n, e in maps.errors.items()))
        return "\n".join(lines)

    def _draw_maps(self, fig):
        maps = self.sparsity_maps()
        ax = fig.subplots()
        for name, s in maps.per_layer.items():
            ax.plot(s, marker=".", lw=2.5 if name == self.map.value else 1, label=name)
        ax.axhline(self.sparsity.value, color="0.5", ls=":", lw=0.8)
        ax.axvline(self.stack.selected, color="k", lw=0.6)
        ax.set(xlabel="layer", ylabel="s_k", title=f"per-layer sparsity at S = {self.sparsity.value:g}")
        ax.legend(fontsize=7)

    def _mask_text(self) -> str:
        m = self.matrix_mask()
        rows, cols = m.mask.shape
        errors = {method: self.matrix_mask(method).output_error for method in METHOD_NOTES}
        lines = [METHOD_NOTES[m.method],
                 f"Layer {m.layer} {m.module} ({rows} x {cols}) at s_k = {m.sparsity:.3f} from the {self.map.value} map: "
                 f"{int(m.mask.sum()):,} of {rows * cols:,} weights pruned ({m.pruned_fraction:.1%}); per output row "
                 f"{m.row_fraction.min():.1%} .. {m.row_fraction.max():.1%}.",
                 "Output error ||(W - W') X||^2 / ||W X||^2 on the calibration inputs: " +
                 ", ".join(f"{k} {v:.4f}" for k, v in errors.items()) + ".",
                 "Statistics from the dense model's inputs to this layer; pruned() recomputes them layer by layer with "
                 "the layers below already pruned (the same for layer 0)."]
        return "\n".join(lines)

    def _draw_mask(self, fig):
        m = self.matrix_mask()
        left, right = fig.subplots(1, 2)
        errors = {method: self.matrix_mask(method).output_error for method in METHOD_NOTES}
        left.bar(list(errors), list(errors.values()), color=["C1" if k == m.method else "C0" for k in errors])
        left.set(ylabel="relative output error", title="||(W - W') X||^2 / ||W X||^2")
        if m.input_norm is not None:
            right.semilogx(np.maximum(m.input_norm, 1e-12), m.column_fraction, ".", ms=3)
            right.set(xlabel="||X_j|| (input feature norm)", ylabel="fraction pruned in column j",
                      title=f"{m.method}: columns", ylim=(-0.02, 1.02))

    def _evaluation_text(self) -> str:
        result = self.evaluations.get(self._key())
        S = self.sparsity.value
        if result is None:
            if self.eval_error is not None:
                return f"The evaluation failed: {type(self.eval_error).__name__}: {self.eval_error}"
            return (f"Press Evaluate: prune with the {self.map.value} map and {self.method.value} at S = {S:g} inside "
                    "pruned(), measure the perplexity on the held-out blocks, and restore every weight. It runs "
                    "synchronously: the notebook waits, so no cell can use the model while it is pruned.")
        return (f"Perplexity on {len(self.evaluation)} held-out blocks: dense {result.dense_perplexity:.3f} -> pruned "
                f"{result.perplexity:.3f} ({self.map.value} map, {self.method.value}, S = {S:g}; zeros counted while "
                f"pruned: {result.global_sparsity:.4f} of the decoder's linear weights, requested "
                f"{result.requested_sparsity:.4f}: each mask prunes floor(s_k x the size of its row, block or matrix) weights).\n"
                "Pruning ran inside pruned(), which copies every weight back on exit. "
                + (f"Weights restored: the fingerprint (blake2b of every decoder linear weight) is {result.fingerprint_after} "
                   "before and after, so they are bit-identical." if result.restored else
                   f"WEIGHTS NOT RESTORED: fingerprint {result.fingerprint_before} before, {result.fingerprint_after} after.")
                + f" ({result.seconds:.1f} s)")

    def _draw_evaluation(self, fig):
        if not self.evaluations:
            return
        ax = fig.subplots()
        items = list(self.evaluations.items())[-10:]
        labels = [f"{k[0]}\n{k[1]} @ {k[2]:g}" for k, _ in items]
        current = self._key()
        ax.bar(range(len(items)), [r.perplexity for _, r in items],
               color=["C1" if k == current else "C0" for k, _ in items])
        ax.axhline(items[-1][1].dense_perplexity, color="k", ls=":", label="dense")
        ax.set_xticks(range(len(items)), labels, fontsize=7)
        ax.set(ylabel="held-out perplexity", yscale="log")
        ax.legend(fontsize=7)
