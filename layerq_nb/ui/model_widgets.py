"""Widgets on a real model: gradient isolation, curvature, pruning. They compute once on creation
(or on a button press) with the core, then only draw."""
from __future__ import annotations

import threading

import ipywidgets as widgets
import numpy as np

from .steps import curvature_study, gradient_isolation, newton_line
from .stepper import Step, Stepper
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
        from scipy.stats import spearmanr
        chosen = self.study.at(self.curvature.value, self.damping.value)
        rho = spearmanr(chosen, self.study.grad_norm2)[0] if len(chosen) > 2 else float("nan")
        text = (f"Each curvature's zeta^2 normalised to q (sums to 1). Spearman of {self.curvature.value} against "
                f"||g||^2: {rho:.2f}: curvature reorders the layers.")
        if self.study.exact is not None:
            text += f" Exact Gauss-Newton (damping {self.study.exact_damping}) is drawn as black crosses."
        return text

    def _draw_side(self, fig):
        ax = fig.subplots()
        x = np.arange(len(self.study.layers))
        width = 0.8 / (len(self.study.zeta2) + 1)
        for i, (name, table) in enumerate(self.study.zeta2.items()):
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


class Pruning(widgets.VBox):
    """Global sparsity -> per-layer sparsity (a map) -> masks (a method) -> perplexity.

    maps: {name: per-layer scores} for the non-uniform maps (e.g. {"mdl": zeta2_scores,
    "owl": outlier_ratio}); "uniform" is always offered. `evaluate()` prunes inside `pruned()` (the
    model comes back bit-identical) and measures perplexity on `evaluation`, in a thread when
    `background=True` so the controls stay usable.
    """

    def __init__(self, model, calibration, evaluation, maps: dict | None = None, sparsity: float = 0.5,
                 batch_size: int = 1):
        from ..models import layers
        from ..pruning import layer_sizes
        self.model, self.calibration, self.evaluation, self.batch_size = model, calibration, evaluation, batch_size
        self.found = layers(model)
        self.sizes = layer_sizes(model)
        self.maps = {"uniform": None, **(maps or {})}
        self._norms = None
        self.sparsity = widgets.FloatSlider(sparsity, min=0.0, max=0.9, step=0.05, description="sparsity",
                                            continuous_update=False)
        self.map = widgets.Dropdown(options=list(self.maps), description="map")
        self.method = widgets.Dropdown(options=["magnitude", "wanda", "sparsegpt"], value="wanda", description="method")
        self.module = widgets.Dropdown(options=list(self.found[0].linears), description="matrix")
        self.stack = LayerStack([layer.name for layer in self.found], np.zeros(len(self.found)),
                                label="per-layer sparsity s_k")
        self.heatmap = MaskHeatmap()
        self.button = widgets.Button(description="Evaluate", icon="play", button_style="primary")
        self.progress = widgets.IntProgress(0, 0, 1, description="", layout=widgets.Layout(width="200px"))
        self.report = widgets.HTML()
        self.results: list[dict] = []
        self.thread: threading.Thread | None = None
        self._evaluating = False
        self.button.on_click(lambda _: self.evaluate(background=True))
        for control in (self.sparsity, self.map, self.method, self.module):
            control.observe(lambda _: self.update(), names="value")
        self.stack.observe(lambda _: self.update(), names="selected")
        controls = widgets.HBox([self.sparsity, self.map, self.method])
        super().__init__([controls, widgets.HBox([self.stack, widgets.VBox([self.module, self.heatmap])]),
                          widgets.HBox([self.button, self.progress]), self.report])
        self.add_class("lq-pruning")
        self.update()

    def per_layer(self) -> np.ndarray:
        from ..pruning import sparsity_map
        name = self.map.value
        kind = "mdl" if name.startswith("mdl") else name
        return sparsity_map(kind, self.sparsity.value, self.sizes, self.maps[name])

    def mask(self):
        """The selected layer's selected matrix, masked by the current method at its s_k (True = pruned)."""
        from ..models import weight_matrix
        from ..pruning import magnitude_mask, wanda_mask
        layer = self.found[self.stack.selected]
        weight = weight_matrix(layer.linears[self.module.value])
        s = float(self.per_layer()[self.stack.selected])
        if self.method.value == "magnitude":
            return magnitude_mask(weight, s)
        if self._norms is None:       # Wanda's ||X_j|| (the heatmap shows Wanda for SparseGPT too: no update step)
            from ..baselines import input_norms
            self._norms = input_norms(self.model, self.calibration, batch_size=self.batch_size)
        return wanda_mask(weight, self._norms[(layer.index, self.module.value)], s)

    def update(self):
        try:
            s = self.per_layer()
        except ValueError as error:
            self.report.value = f"<span style='color:#b00'>{error}</span>"
            return
        self.stack.show(s, label=f"s_k, {self.map.value} map at {self.sparsity.value:.0%}")
        if self._evaluating:         # the weights are pruned right now: the heatmap waits for the restore
            return
        self.heatmap.show(self.mask().numpy(), label=f"layer {self.stack.selected} {self.module.value}")

    def evaluate(self, background: bool = False) -> dict | None:
        """Prune with the current settings, measure perplexity, restore the model. Returns the result row."""
        if self.thread is not None and self.thread.is_alive():
            self.report.value = "still evaluating the previous setting"
            return None
        settings = dict(map=self.map.value, method=self.method.value, sparsity=self.sparsity.value)
        per_layer = self.per_layer()

        def work():
            from ..evaluate import perplexity
            from ..pruning import pruned
            self.button.disabled, self._evaluating = True, True
            self.progress.max, self.progress.value = 2, 0
            try:
                with pruned(self.model, per_layer, settings["method"], blocks=self.calibration,
                            batch_size=self.batch_size, progress=False) as report:
                    self.progress.value = 1
                    ppl = perplexity(self.model, self.evaluation, batch_size=self.batch_size, progress=False)
                row = dict(settings, perplexity=ppl, achieved=report.global_sparsity)
                self.results.append(row)
                self.progress.value = 2
                self.report.value = "<br>".join(f"{r['map']} / {r['method']} @ {r['sparsity']:.0%}: perplexity "
                                                f"{r['perplexity']:.2f}" for r in self.results)
            except Exception as error:
                self.report.value = f"<span style='color:#b00'>{type(error).__name__}: {error}</span>"
            finally:
                self.button.disabled, self._evaluating = False, False
                self.update()            # settings may have moved meanwhile
        if background:
            self.thread = threading.Thread(target=work, daemon=True)
            self.thread.start()
            return None
        work()
        return self.results[-1] if self.results else None
