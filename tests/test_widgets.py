"""Widgets without a kernel or a browser: they build, react to state changes and clicks, sync bytes
(not lists), and the step functions behind them give the numbers the core gives."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("anywidget")

import layerq_nb as lq  # noqa: E402
from layerq_nb.ui import steps  # noqa: E402
from layerq_nb.ui.views import LayerStack, MaskHeatmap, WaterFill, from_bytes, pool_mask  # noqa: E402


# ----------------------------------------------------------------------------- views

def _synced_bytes(widget) -> int:
    """Bytes the widget's data costs on the wire (binary buffers + the JSON of the rest; the module and
    style text, sent once per widget, left out)."""
    import json
    state = {k: v for k, v in widget.get_state().items() if k not in ("_esm", "_css")}
    binary = sum(len(v) for v in state.values() if isinstance(v, (bytes, bytearray, memoryview)))
    rest = {k: v for k, v in state.items() if not isinstance(v, (bytes, bytearray, memoryview))}
    return binary + len(json.dumps(rest, default=str))


def test_views_have_a_front_end_and_sync_bytes():
    stack = LayerStack([f"layers.{i}" for i in range(30)], np.arange(30.0))
    fill = WaterFill(lq.allocate(np.linspace(1, 2, 30), budget=60.0, upper=4))
    heat = MaskHeatmap(np.random.default_rng(0).random((576, 1536)) < 0.5)
    for view in (stack, fill, heat):
        assert "application/vnd.jupyter.widget-view+json" in view._repr_mimebundle_()[0]
        assert view._esm.count("export default") == 1 and "import " not in view._esm   # one file, no CDN
    assert isinstance(stack.get_state()["values"], bytes) and len(stack.get_state()["values"]) == 30 * 4
    assert isinstance(heat.get_state()["data"], bytes)
    # a 576 x 1536 mask travels as at most 128 x 128 float32 cells: < 70 kB, not 885k JSON booleans
    assert _synced_bytes(heat) < 70_000 and heat.rows <= 128 and heat.cols <= 128
    assert _synced_bytes(stack) < 2_000 and _synced_bytes(fill) < 2_000


def test_layer_stack_reacts_to_set_state_and_clips():
    stack = LayerStack(["a", "b", "c"], [1.0, 2.0, 3.0])
    seen = []
    stack.observe(lambda change: seen.append(change["new"]), names="selected")
    stack.set_state({"selected": 2})            # what a click in the browser sends
    assert stack.selected == 2 and stack.selected_name == "c" and seen == [2]
    stack.selected = 99
    assert stack.selected == 2
    stack.show([3.0, 2.0, 1.0], label="new")
    np.testing.assert_array_equal(stack.bar_values, [3, 2, 1])
    with pytest.raises(ValueError, match="expected 3 values"):
        stack.show([1.0])


def test_waterfill_carries_the_solution():
    sol = lq.allocate([0.1, 0.3, 0.6], budget=5.0, beta=[1.0, 0.5, 2.0], upper=3.0)
    fill = WaterFill(sol)
    np.testing.assert_allclose(from_bytes(fill.x), sol.x, rtol=1e-6)
    np.testing.assert_allclose(from_bytes(fill.beta), [1.0, 0.5, 2.0])
    assert fill.nu == pytest.approx(sol.nu)
    with pytest.raises(TypeError, match="program A"):
        fill.show(lq.prune([0.5, 0.5], 0.5))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 300), cells=st.integers(4, 64), seed=st.integers(0, 99))
def test_pool_mask_keeps_the_kept_fraction(rows, cols, cells, seed):
    mask = np.random.default_rng(seed).random((rows, cols)) < 0.3
    pooled = pool_mask(mask, cells)
    assert max(pooled.shape) <= cells and np.all((pooled >= 0) & (pooled <= 1))
    if rows <= cells and cols <= cells:
        np.testing.assert_array_equal(pooled, 1.0 - mask)
    fr, fc = -(-rows // cells), -(-cols // cells)
    if rows % fr == 0 and cols % fc == 0:       # equal cells: the mean of cells is the kept fraction
        assert pooled.mean() == pytest.approx(1.0 - mask.mean(), abs=1e-6)


# ----------------------------------------------------------------------------- MDL widgets (numpy)

def test_allocation_widget_follows_its_controls():
    from layerq_nb.ui import Allocation
    q = np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3])
    w = Allocation(q, budget=12.0, upper=4.0)
    for i in range(len(w.steps)):
        w.go(i)
        assert w.error is None and w.figure is not None
    assert w.result.reference_gap < 1e-5 and w.result.kkt_residual < 1e-9
    assert "max |r_k - r_k(cvxpy)|" in w.text.value
    w.budget.value = 20.0
    assert w.allocation.sum() == pytest.approx(20.0)
    assert from_bytes(w.waterfill.x).sum() == pytest.approx(20.0, rel=1e-5)
    w.integer.value = True
    assert np.all(w.allocation == np.round(w.allocation)) and w.allocation.sum() <= 20.0
    w.go(1)
    w.trace_step.value = 5
    lo, hi, mid, spend = w.result.trace[5]
    assert f"{mid:.4g}" in w.text.value and lo < mid < hi
    w.next.click()
    assert w.step.value == 2
    w.waterfill.set_state({"selected": 3})      # a click on a water column selects the layer
    assert w.stack.selected == 3


def test_transfer_regret_and_shapley_convergence_widgets():
    from layerq_nb.ui import ShapleyConvergence, TransferRegret
    tr = TransferRegret([0.2, 0.3, 0.5], [0.3, 0.3, 0.4], budget=6.0)
    assert tr.curve.slope() == pytest.approx(2.0, abs=0.1)
    assert np.all(tr.curve.regret <= tr.curve.bound + 1e-12)
    tr.go(1)
    assert tr.error is None and "theory: 2" in tr.text.value

    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])

    def game(coalitions):           # additive plus one interaction, split evenly by Shapley
        return coalitions @ weights + 2.0 * coalitions[:, 0] * coalitions[:, 1]
    sc = ShapleyConvergence(game, 5, budgets=(16, 64))
    np.testing.assert_allclose(sc.result.exact, weights + [1, 1, 0, 0, 0], atol=1e-12)
    assert sc.result.errors["kernel"][-1] < 1e-6        # exact on an additive-plus-pair game with the constraint
    sc.method.value = "permutation"
    sc.go(1)
    assert sc.error is None and "permutation at 64" in sc.text.value


# ----------------------------------------------------------------------------- model steps (tiny model)

@pytest.fixture(scope="module")
def tiny_train(tiny):
    return lq.load_task("prose", tiny[1], split="train", n_blocks=3, block_size=24)


def test_gradient_isolation_matches_layer_gradients(tiny, tiny_train):
    from layerq_nb.scoring import layer_gradients
    from layerq_nb.ui import GradientIsolation
    model = tiny[0]
    iso = steps.gradient_isolation(model, tiny_train)
    grads = layer_gradients(model, tiny_train, progress=False)
    for i, modules in enumerate(iso.module_norm2):
        for m, value in modules.items():
            assert value == pytest.approx(float((grads[(i, m)].double() ** 2).sum()), rel=1e-9)
    assert iso.loss == pytest.approx(lq.mean_loss(model, tiny_train, progress=False))
    assert sum(iso.share(i) for i in range(len(iso.names))) == pytest.approx(1.0)
    w = GradientIsolation(model, tiny_train)
    w.stack.set_state({"selected": 2})
    w.go(3)
    assert w.error is None and f"{100 * iso.share(2):.1f}%" in w.text.value


def test_curvature_study_equals_score_at_every_curvature(tiny, tiny_train):
    model = tiny[0]
    study = steps.curvature_study(model, tiny_train, dampings=(0.01, 0.1, 1.0))
    for curvature in ("identity", "diag", "kfac", "ekfac"):
        for damping in (0.01, 0.1, 1.0):
            ref = lq.score(model, tiny_train, curvature=curvature, damping=damping, progress=False).values
            np.testing.assert_allclose(study.at(curvature, damping), ref, rtol=1e-6)
    # heavy damping: zeta^2 -> ||g||^2 / lam, and identity is exactly that
    np.testing.assert_allclose(study.at("identity", 1.0), study.grad_norm2, rtol=1e-9)


def test_newton_line_and_curvature_widget(tiny, tiny_train):
    from layerq_nb.models import layers
    from layerq_nb.ui import Curvature
    model = tiny[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    line = steps.newton_line(model, tiny_train, layer=1, curvature="kfac", damping=1.0, scales=(0.0, 0.5, 1.0))
    step = lq.newton_step(model, tiny_train, layer=1, curvature="kfac", damping=1.0, scale=1.0)
    assert line.zeta2 == pytest.approx(step.zeta2, rel=1e-9)
    assert line.loss[0] == pytest.approx(step.loss_before) and line.loss[2] == pytest.approx(step.loss_after, rel=1e-9)
    np.testing.assert_allclose(line.model, line.loss[0] - np.array([0.0, 0.375, 0.5]) * line.zeta2)
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
    w = Curvature(model, tiny_train, exact=True)
    assert w.study.exact is not None and w.study.exact.shape == (len(layers(model)),)
    first = w.stack.bar_values.copy()
    w.damping.value = w.damping.options[-1][1]
    assert not np.allclose(first, w.stack.bar_values)      # the slider re-weights zeta^2 with no new pass
    for i in range(3):
        w.go(i)
        assert w.error is None and w.figure is not None
    w.run_newton(scales=(0.0, 1.0))
    assert w.step.value == 3 and "zeta^2/2" in w.text.value


def test_pruning_widget_masks_and_evaluates(tiny, tiny_train):
    from layerq_nb.models import layers, weight_matrix
    from layerq_nb.ui import Pruning
    model = tiny[0]
    scores = lq.score(model, tiny_train, progress=False)
    w = Pruning(model, tiny_train, tiny_train, maps={"mdl": scores}, sparsity=0.5)
    w.map.value = "mdl"
    w.sparsity.value = 0.6
    per_layer = w.per_layer()
    assert per_layer @ w.sizes / w.sizes.sum() == pytest.approx(0.6)
    w.stack.set_state({"selected": 1})
    mask = w.mask()
    d_in = weight_matrix(layers(model)[1].linears[w.module.value]).shape[1]
    assert mask.sum(1).eq(int(per_layer[1] * d_in)).all()          # Wanda: the same count in every row
    assert w.heatmap.cells.mean() == pytest.approx(1 - mask.float().mean().item(), abs=1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = w.evaluate()
    # Wanda keeps floor(s_k d_in) per row, so each matrix may fall short by up to one weight per row
    narrowest = min(weight_matrix(m).shape[1] for layer in layers(model) for m in layer.linears.values())
    assert row["perplexity"] > 1 and 0.6 - 1 / narrowest <= row["achieved"] <= 0.6 + 1e-9
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
    w.method.value = "magnitude"
    w.evaluate(background=True)
    w.thread.join(timeout=60)
    assert len(w.results) == 2 and "magnitude @ 60%" in w.report.value


# ----------------------------------------------------------------------------- extension

def test_doctor_explains_a_missing_front_end(monkeypatch):
    from layerq_nb.ui import magics
    report = magics.doctor_report()
    assert report["kernel"]["anywidget"] != "not installed"
    monkeypatch.setattr(magics, "_labextensions", lambda: {})
    text = magics.format_doctor(magics.doctor_report())
    assert "MISSING" in text and "Failed to load model class" in text and "restart the server" in text


def test_load_ext_registers_the_magic():
    from IPython.testing.globalipapp import get_ipython
    shell = get_ipython()
    shell.run_line_magic("load_ext", "layerq_nb")
    assert "layerq" in shell.magics_manager.magics["line"]


def test_damping_sweep_equals_newton_steps(tiny, tiny_train):
    model = tiny[0]
    sweep = steps.damping_sweep(model, tiny_train, layer=2, curvature="ekfac", dampings=(0.5, 5.0))
    for d, pred, act in zip(sweep.dampings, sweep.predicted, sweep.actual):
        ref = lq.newton_step(model, tiny_train, layer=2, curvature="ekfac", damping=d)
        # act is a difference of two float32 mean losses (~5.5): their rounding is ~1e-7 absolute
        assert pred == pytest.approx(ref.predicted, rel=1e-6) and act == pytest.approx(ref.actual, rel=1e-6, abs=1e-6)
