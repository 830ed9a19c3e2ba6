"""Every exercise check rejects a wrong answer, reports an unanswered one, and accepts the solution
shipped in `exercises.SOLUTIONS` (executed here, so the solutions are tested too)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import layerq_nb as lq
from layerq_nb import exercises as ex


def _run(key: str, **names) -> dict:
    scope = dict(np=np, math=math, lq=lq, **names)
    exec(ex.SOLUTIONS[key], scope)
    return scope


def test_every_check_has_a_solution_and_a_test():
    assert len(ex._checks()) == 16 and len(ex.SOLUTIONS) == 16
    this = open(__file__).read()
    for name in ex._checks():
        assert f"ex.{name}(" in this, f"{name} is not tested"


def test_tour_checks(tiny):
    model = tiny[0]
    s = _run("00.1", model=model)
    assert ex.check_layer_count(s["n_layers"], s["params_per_layer"], model)
    assert not ex.check_layer_count(None, None, model)
    assert not ex.check_layer_count(s["n_layers"] + 1, s["params_per_layer"], model)
    assert not ex.check_layer_count(s["n_layers"], 1, model)
    assert ex.check_perplexity(_run("00.2", loss=2.5)["value"], 2.5)
    assert not ex.check_perplexity(2 ** 2.5, 2.5) and not ex.check_perplexity(None, 2.5)


def test_gradient_checks(tiny):
    from layerq_nb.scoring import layer_gradients
    from layerq_nb.ui.steps import gradient_isolation
    model, tok = tiny
    blocks = lq.load_task("prose", tok, split="train", n_blocks=2, block_size=16)
    grads = layer_gradients(model, blocks, progress=False)
    fn = _run("01.1")["layer_grad_norms"]
    assert ex.check_layer_grad_norms(fn, grads, 3)
    assert not ex.check_layer_grad_norms(lambda g, n: np.zeros(n), grads, 3)
    assert not ex.check_layer_grad_norms(lambda g, n: 1 / 0, grads, 3)
    assert not ex.check_layer_grad_norms(None, grads, 3)
    iso = gradient_isolation(model, blocks)
    k = _run("01.2", iso=iso)["k"]
    assert ex.check_largest_layer(k, iso)
    assert not ex.check_largest_layer((k + 1) % 3, iso) and not ex.check_largest_layer(None, iso)


def test_curvature_checks():
    assert ex.check_zeta2(_run("02.1")["zeta2"])
    assert not ex.check_zeta2(lambda g, H, lam: float(g @ np.linalg.solve(H, g)))       # forgot the damping
    assert not ex.check_zeta2(lambda g, H, lam: float(g @ g))
    assert not ex.check_zeta2(None)
    assert ex.check_quadratic_decrease(_run("02.2")["decrease"])
    assert not ex.check_quadratic_decrease(lambda z, t: z / 2)
    assert not ex.check_quadratic_decrease(None)


def test_layer_quality_checks(tiny):
    from layerq_nb.ablation import Cornerstone
    assert ex.check_shapley(_run("03.1")["shapley3"])
    assert not ex.check_shapley(lambda v: np.zeros(3)) and not ex.check_shapley(None)
    result = Cornerstone(full_loss=2.0, dropped_loss=np.array([9.0, 2.1, 6.5]), empty_loss=12.0,
                         chance_loss=10.0, names=("a", "b", "c"))
    s = _run("03.2", result=result)
    assert s["layers_list"] == [0, 2] and ex.check_cornerstones(s["layers_list"], result)
    assert not ex.check_cornerstones([0], result) and not ex.check_cornerstones(None, result)


def test_allocation_checks():
    assert ex.check_allocation_at(_run("04.1")["allocation_at"])
    assert not ex.check_allocation_at(lambda nu, q, c, beta, lo, hi: q / (nu * c) - beta)     # no clip
    assert not ex.check_allocation_at(None)
    q, budget = np.array([0.2, 0.3, 0.5]), 6.0
    p = lq.allocate(q, budget).problem
    s = _run("04.2", spend=lambda nu: float(p.cost @ p.x_of_nu(nu)), budget=budget)
    assert ex.check_dual_level(s["nu"], q, budget)
    assert not ex.check_dual_level(s["nu"] * 1.1, q, budget) and not ex.check_dual_level(None, q, budget)


def test_pruning_checks():
    assert ex.check_magnitude_mask(_run("05.1")["magnitude"])
    assert not ex.check_magnitude_mask(lambda w, s: np.abs(w) > np.quantile(np.abs(w), 1 - s))   # prunes the largest
    assert not ex.check_magnitude_mask(lambda w, s: np.zeros(3))
    assert not ex.check_magnitude_mask(None)
    q, sizes = np.array([0.5, 0.1, 0.4]), np.array([1.0, 1.0, 2.0])
    k = _run("05.2", q=q, sparsity=0.5, sizes=sizes)["k"]
    assert k == 1 and ex.check_most_pruned(k, q, 0.5, sizes)
    assert not ex.check_most_pruned(0, q, 0.5, sizes) and not ex.check_most_pruned(None, q, 0.5, sizes)


def test_transfer_checks():
    from layerq_nb.ui.steps import regret_curve
    q_S, q_T = np.array([2.0, 3.0, 5.0]), np.array([3.0, 3.0, 4.0])
    assert ex.check_delta(_run("06.1", q_S=q_S, q_T=q_T)["value"], q_S, q_T)
    assert not ex.check_delta(float(np.linalg.norm(q_T - q_S)), q_S, q_T)     # not normalised
    assert not ex.check_delta(None, q_S, q_T)
    curve = regret_curve(q_S, q_T, budget=6.0)
    assert ex.check_slope(_run("06.2", curve=curve)["value"], curve)
    assert not ex.check_slope(1.0, curve) and not ex.check_slope(None, curve)


def test_scaling_checks(tiny):
    model = tiny[0]
    assert ex.check_shard(_run("07.1", rank=1, n_blocks=7, world_size=2)["indices"], 7, 1, 2)
    assert not ex.check_shard([0, 2, 4, 6], 7, 1, 2) and not ex.check_shard(None, 7, 1, 2)
    assert ex.check_bf16_bytes(_run("07.2", model=model)["value"], model)
    assert not ex.check_bf16_bytes(4 * sum(p.numel() for p in model.parameters()), model)
    assert not ex.check_bf16_bytes(None, model)


def test_solution_widget_reveals_only_on_request():
    box = ex.solution("02.1")
    assert box.children[1].value == ""
    box.children[0].click()
    assert "np.linalg.solve" in box.children[1].value and box.children[0].disabled
    with pytest.raises(KeyError, match="02.1"):
        ex.solution("9.9")
