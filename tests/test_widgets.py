"""Widgets without a kernel or a browser: they build, react to state changes and clicks, sync bytes
(not lists), and the step functions behind them give the numbers the core gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch
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
    # the rate printed is the one fitted to the errors drawn, not a claim
    assert sc.result.evaluations["permutation"][1] == 32 and not np.isfinite(sc.result.rate("permutation"))
    assert "permutation no rate" in sc.text.value and "antithetic exact at every budget" in sc.text.value
    assert "1/sqrt" not in sc.text.value
    n = np.array([10, 100, 1000, 2000])      # 12 players: 4096 coalitions, none of these budgets reaches them
    fake = steps.Convergence(exact=np.ones(12), budgets=tuple(n), errors={"a": 3 * n ** -0.5, "b": np.zeros(4)},
                             evaluations={"a": n, "b": n}, estimates={"a": [], "b": []})
    assert fake.rate("a") == pytest.approx(-0.5) and np.isnan(fake.rate("b")) and fake.exact_at("b").all()


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
    from layerq_nb import models
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
    # the exact Gauss-Newton column on a model small enough for dense blocks (576 weights a layer): CG on the
    # tiny model's 9,216 has its own tests (test_scoring), and took 100 s here
    micro, tok = models._tiny_llama(n_layers=3, hidden_size=8, heads=2, kv_heads=1, seed=3)
    micro.eval().set_attn_implementation("eager")   # the exact block's forward-mode products need eager attention
    w = Curvature(micro, lq.load_task("prose", tok, split="train", n_blocks=2, block_size=12), exact=True)
    assert w.study.exact is not None and w.study.exact.shape == (len(layers(micro)),)
    first = w.stack.bar_values.copy()
    w.damping.value = w.damping.options[-1][1]
    assert not np.allclose(first, w.stack.bar_values)      # the slider re-weights zeta^2 with no new pass
    for i in range(3):
        w.go(i)
        assert w.error is None and w.figure is not None
    # the verdict printed follows the Spearman correlation computed, whatever it is
    rho, *_ = w.study.rank_agreement(w.curvature.value, w.damping.value)
    verdict = ("almost unchanged" if rho >= 0.9 else "moves some of them" if rho >= 0.5 else "reorders the layers")
    assert f"{rho:.2f}" in w.text.value and verdict in w.text.value
    from scipy.stats import spearmanr
    assert rho == pytest.approx(spearmanr(w.study.at(w.curvature.value, w.damping.value), w.study.grad_norm2)[0])
    w.run_newton(scales=(0.0, 1.0))
    assert w.step.value == 3 and "zeta^2/2" in w.text.value


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 40), S=st.floats(0.05, 0.85), band=st.sampled_from([None, 0.05, 0.1, 0.3]),
       penalty=st.sampled_from(["log", "quadratic"]), seed=st.integers(0, 999))
def test_pruning_program_is_prune_and_matches_cvxpy(k, S, band, penalty, seed):
    rng = np.random.default_rng(seed)
    q, sizes = rng.random(k) ** 3 + 1e-3, rng.integers(100, 5000, k).astype(float)
    lo, hi = steps.band_bounds(S, band)
    p = steps.pruning_program(q, S, sizes, lower=lo, upper=hi, penalty=penalty)
    np.testing.assert_array_equal(p.solution.x, lq.prune(q, S, sizes=sizes, lower=lo, upper=hi, penalty=penalty).x)
    # Clarabel may call its own x "inaccurate"; the reference's active-set polish still lands on the optimum
    assert p.reference_error == "" and p.reference.status.startswith("optimal") and p.reference_gap < 1e-6
    assert p.kkt_residual < 1e-9 and p.reference_kkt_residual < 1e-6
    assert p.global_sparsity(p.solution.nu) == pytest.approx(S, abs=1e-9)
    for i in range(len(p.trace)):        # every bracket holds nu*, and its midpoint's spend is reported
        nlo, nhi, mid, g = p.bracket(i)
        assert nlo * (1 - 1e-9) <= p.solution.nu <= nhi * (1 + 1e-9) and g == pytest.approx(p.global_sparsity(mid))
    # the KKT check is not a rubber stamp: a feasible but wrong point fails it
    if k > 1 and np.ptp(p.solution.x) > 0.05 and np.all((p.problem.lower < S) & (S < p.problem.upper)):
        assert steps.kkt_residual(p.problem, np.full(k, S), p.solution.nu) > 1e-5


@pytest.fixture(scope="module")
def tiny_test(tiny):
    return lq.load_task("prose", tiny[1], split="test", n_blocks=2, block_size=24)


@pytest.fixture(scope="module")
def pruning_stepper(tiny, tiny_train, tiny_test):
    from layerq_nb.baselines import outlier_ratio
    from layerq_nb.ui import Pruning
    model = tiny[0]
    scores = lq.score(model, tiny_train, progress=False)
    return Pruning(model, tiny_train, tiny_test, maps={"owl": outlier_ratio(model, tiny_train), "mdl": scores,
                                                       "mdl-reverse": scores}, sparsity=0.5)


def test_pruning_stepper_program_b_and_maps(tiny, pruning_stepper):
    from layerq_nb.pruning import layer_sizes, sparsity_map
    w, sizes = pruning_stepper, layer_sizes(tiny[0])
    assert len(w.steps) == 4 and w.step.value == 0 and w.error is None and w.figure is not None
    w.sparsity.value = 0.6
    q = np.clip(w.scores.values, 0, None)
    p = w.program()
    # step 1: the closed form is lq.prune with the mdl map's band, and cvxpy agrees with it
    np.testing.assert_array_equal(p.solution.x, lq.prune(q, 0.6, sizes=sizes, lower=0.5, upper=0.7).x)
    assert p.reference_gap < 1e-6 and p.reference_kkt_residual < 1e-6
    assert "status optimal" in w.text.value and "KKT" in w.text.value
    np.testing.assert_allclose(w.stack.bar_values, p.solution.x, rtol=1e-6)
    w.trace_step.value = 2
    *_, mid, g = p.bracket(2)
    assert f"try nu = {mid:.4g}" in w.text.value and f"{g:.6f}" in w.text.value
    w.penalty.value = "quadratic"
    assert "q_k s_k = nu n_k" in w.text.value and w.program().problem.penalty == "quadratic"
    w.penalty.value = "log"
    # step 2: every map keeps the global sparsity; mdl is program B's solution; -reverse mirrors it
    w.next.click()
    assert w.step.value == 1 and w.error is None and w.figure is not None
    maps = w.sparsity_maps()
    assert set(maps.per_layer) == {"uniform", "owl", "mdl", "mdl-reverse"}
    for s in maps.per_layer.values():
        assert sizes @ s / sizes.sum() == pytest.approx(0.6, abs=1e-12)
    np.testing.assert_array_equal(maps["mdl"], p.solution.x)
    np.testing.assert_allclose(maps["mdl-reverse"], 1.2 - p.solution.x)
    np.testing.assert_array_equal(maps["owl"], sparsity_map("owl", 0.6, sizes, w.maps["owl"]))
    for name in maps.per_layer:
        w.map.value = name
        assert w.error is None and "Global sparsity" in w.text.value
        np.testing.assert_allclose(w.stack.bar_values, maps[name], rtol=1e-6)
    w.map.value = "mdl"


def test_pruning_stepper_masks_are_each_methods_own(tiny, tiny_train, pruning_stepper):
    from layerq_nb.baselines import input_norms
    from layerq_nb.models import layers, weight_matrix
    from layerq_nb.pruning import magnitude_mask, pruned, sparsegpt, wanda_mask
    w, model = pruning_stepper, tiny[0]
    w.go(2)
    assert w.error is None and w.figure is not None and w.heatmap.layout.display is None
    norms = input_norms(model, tiny_train, batch_size=1)
    for layer, module in ((0, "self_attn.q_proj"), (0, "mlp.down_proj"), (2, "mlp.gate_proj")):
        w.stack.set_state({"selected": layer})
        w.module.value = module
        s = float(w.per_layer()[layer])
        weight = weight_matrix(layers(model)[layer].linears[module])
        inputs = w.layer_inputs(layer)
        # Wanda's statistic, summed by this step, is exactly the one baselines.input_norms sums
        assert torch.equal(inputs.input_norm(module), norms[(layer, module)])
        expected = {"magnitude": magnitude_mask(weight, s), "wanda": wanda_mask(weight, norms[(layer, module)], s),
                    "sparsegpt": sparsegpt(weight, inputs.hessian[module], s)[1]}
        for method, mask in expected.items():
            w.method.value = method
            assert w.error is None and method in w.text.value.lower()
            assert torch.equal(w.mask(), mask), (layer, module, method)
            assert w.heatmap.cells.mean() == pytest.approx(1 - mask.float().mean().item(), abs=1e-6)
            assert w.matrix_mask() is w.matrix_mask()            # cached, not recomputed
        assert not torch.equal(expected["sparsegpt"], expected["wanda"])   # SparseGPT shows its own mask
        assert w.layer_inputs(layer) is inputs
        if layer == 0:       # layer 0's inputs are the same dense or pruned: pruned() leaves exactly these weights
            for method in expected:
                with pruned(model, w.per_layer(), method, blocks=tiny_train, batch_size=1, progress=False):
                    assert torch.equal(weight_matrix(layers(model)[0].linears[module]),
                                       w.matrix_mask(method).weight), method


def test_pruning_stepper_evaluates_in_pruned_and_restores(tiny, tiny_train, tiny_test, pruning_stepper):
    import threading

    from layerq_nb.pruning import pruned
    w, model = pruning_stepper, tiny[0]
    w.map.value, w.method.value, w.sparsity.value = "mdl", "sparsegpt", 0.6
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = threading.active_count()
    w.go(3)                                        # arriving at step 4 evaluates, synchronously
    assert threading.active_count() == threads and w.error is None and w.figure is not None
    assert w.progress.value == w.progress.max and len(w.results) == 1
    row, result = w.results[-1], w.evaluations[w._key()]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert result.restored and "Weights restored" in w.text.value and "weights restored" in w.status.value
    with pruned(model, w.per_layer(), "sparsegpt", blocks=tiny_train, batch_size=1, progress=False) as report:
        expected = lq.perplexity(model, tiny_test, batch_size=1, progress=False)
    assert row["perplexity"] == expected and row["achieved"] == report.global_sparsity
    assert row["dense_perplexity"] == lq.perplexity(model, tiny_test, batch_size=1, progress=False)
    assert f"{expected:.3f}" in w.text.value
    w.go(2)
    w.go(3)                                        # cached: no second evaluation on arrival
    assert len(w.results) == 1
    w.method.value = "magnitude"
    assert "Press Evaluate" in w.text.value
    w.button.click()
    assert len(w.results) == 2 and "magnitude @ 60%" in w.report.value
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_pruning_stepper_defaults_and_bad_maps(tiny, tiny_train, tiny_test):
    from layerq_nb.pruning import layer_sizes
    from layerq_nb.ui import Pruning
    model = tiny[0]
    with pytest.raises(ValueError, match="map 'foo'"):
        Pruning(model, tiny_train, tiny_test, maps={"foo": np.ones(3)})
    w = Pruning(model, tiny_train, tiny_test, maps={"half": lambda s: np.full(3, s)}, sparsity=0.4,
                with_reference=False, evaluate_on_arrival=False)
    zeta2 = lq.score(model, tiny_train, curvature="kfac", batch_size=1, progress=False)
    np.testing.assert_array_equal(w.q, zeta2.values)             # no mdl map given: K-FAC zeta^2 on calibration
    assert list(w.map.options) == ["uniform", "half", "mdl"] and w.map.value == "mdl"
    assert "cvxpy skipped" in w.text.value
    w.go(1)
    w.map.value = "half"
    np.testing.assert_array_equal(w.per_layer(), np.full(3, 0.4))
    sizes = layer_sizes(model)
    assert sizes @ w.per_layer() / sizes.sum() == pytest.approx(0.4)
    w.go(3)
    assert w.results == [] and "Press Evaluate" in w.text.value


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
