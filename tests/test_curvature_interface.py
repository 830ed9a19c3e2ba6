"""The curvature interface: one registry of fitters, one solve object per module (per layer for exact) with
mean eigenvalue, with_damping, solve, matvec and zeta2; the options checked once; streamed scoring
(layers_per_pass) equal to the one-pass scores."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from layerq_nb import curvature as curv
from layerq_nb import load_task, models, scoring
from layerq_nb.curvature import CurvatureOptions, ModuleSolves, Passes
from layerq_nb.scoring import module_solves, score
from layerq_nb.shard import local_blocks


@pytest.fixture(scope="module")
def micro():
    """A 4-layer Llama with hidden 8 (576 weights per layer): streaming has groups to split."""
    model, tok = models._tiny_llama(n_layers=4, hidden_size=8, heads=2, kv_heads=1, seed=5)
    model.eval()
    model.set_attn_implementation("eager")     # the exact block's forward-mode products need eager attention
    return model, load_task("prose", tok, split="train", n_blocks=2, block_size=12)


def test_the_registry_names_every_curvature():
    assert curv.CURVATURES == tuple(curv.FITTERS) == ("identity", "diag", "kfac", "ekfac", "exact")
    assert curv.FACTORED == ("identity", "diag", "kfac", "ekfac")
    assert scoring.FACTORED is curv.FACTORED and scoring.FISHERS is curv.FISHERS


@pytest.mark.parametrize("curvature", curv.CURVATURES)
def test_every_solve_inverts_its_matvec_and_damps_in_one_place(micro, curvature):
    model, blocks = micro
    exact = dict(only={0}, max_dense=0) if curvature == "exact" else {}    # the CG path (dense: test_scoring)
    fitted = module_solves(model, blocks, curvature, damping=0.3, gradients=True, progress=False, **exact)
    assert isinstance(fitted, ModuleSolves) and fitted.solves.keys() == fitted.gradients.keys()
    for key, solve in fitted.solves.items():
        g = fitted.gradients[key].double() if curvature == "exact" else fitted.gradients[key]
        assert isinstance(solve, curv.Solve)
        assert solve.lam == pytest.approx(0.3 * solve.mean_eigenvalue, rel=1e-12)
        absolute = solve.with_damping(0.05, "absolute")
        assert absolute.lam == 0.05 and solve.lam == pytest.approx(0.3 * solve.mean_eigenvalue)   # a new object
        x = absolute.solve(g)
        torch.testing.assert_close(absolute.matvec(x).double(), g.double(), rtol=1e-3, atol=1e-4 * float(g.abs().max()))
        assert absolute.zeta2(g) == pytest.approx(float((g.double() * x.double()).sum()), rel=1e-6)
        if curvature != "exact":        # the factored grids rotate once; exact's is the generic loop of CG solves
            grid = solve.zeta2_grid(g, [0.01, 0.3, 3.0])
            np.testing.assert_allclose(grid, [solve.with_damping(d).zeta2(g) for d in (0.01, 0.3, 3.0)], rtol=1e-5)
    if curvature == "identity":     # unit scale: both modes give lam = damping
        assert all(s.mean_eigenvalue == 1.0 and s.lam == 0.3 for s in fitted.solves.values())


def test_the_result_unpacks_as_the_old_pair(micro):
    model, blocks = micro
    fitted = module_solves(model, blocks, "diag", only={1}, gradients=True, progress=False)
    solves, grads = fitted                        # notebook 02's form
    assert solves is fitted.solves and grads is fitted.gradients and {k[0] for k in solves} == {1}
    assert module_solves(model, blocks, "diag", only={1}, progress=False).gradients is None


@pytest.mark.parametrize("curvature,layers_per_pass", [(c, k) for c in curv.FACTORED for k in (1, 3)] + [("exact", 3)])
def test_streamed_scores_equal_the_one_pass_scores(micro, curvature, layers_per_pass):
    """Sampled labels are seeded per block and every module's statistics depend only on its own (a, b),
    so streaming the layers changes nothing but the peak memory."""
    model, blocks = micro
    one = score(model, blocks, curvature=curvature, progress=False)
    streamed = score(model, blocks, curvature=curvature, layers_per_pass=layers_per_pass, progress=False)
    np.testing.assert_allclose(streamed.values, one.values, rtol=1e-6, atol=0)
    assert streamed.metadata == one.metadata


def test_streamed_grad_norm_and_modules(micro):
    model, blocks = micro
    for kwargs in (dict(method="grad_norm"), dict(curvature="kfac", granularity="module")):
        np.testing.assert_allclose(score(model, blocks, layers_per_pass=2, progress=False, **kwargs).values,
                                   score(model, blocks, progress=False, **kwargs).values, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="layers_per_pass must be"):
        score(model, blocks, layers_per_pass=0, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(curvature="hessian"), "unknown curvature 'hessian': use one of identity"),
    (dict(damping=-1), r"damping must be a finite number >= 0 \(e.g. 0.1"),
    (dict(damping="0.1"), "damping must be"),
    (dict(damping=True), "damping must be"),
    (dict(damping_mode="percent"), "damping_mode must be one of relative, absolute"),
    (dict(fisher="true"), "fisher must be 'sampled' .* or 'empirical'"),
    (dict(max_dense=-1), "max_dense must be a whole number >= 0"),
])
def test_options_are_checked_once_with_the_fix_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CurvatureOptions(**kwargs)


def test_options_are_frozen_and_exact_is_not_factored():
    options = CurvatureOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.damping = 1.0
    with pytest.raises(ValueError, match="newton_step uses the factored curvatures"):
        CurvatureOptions("exact").require_factored("newton_step")


def test_options_after_the_data_are_keyword_only(micro):
    model, blocks = micro
    with pytest.raises(TypeError):
        score(model, blocks, "zeta2")
    with pytest.raises(TypeError):
        scoring.newton_step(model, blocks, 0, "kfac")


def test_passes_check_their_blocks(micro):
    model, blocks = micro
    with pytest.raises(ValueError, match="no blocks"):
        Passes(model, blocks.subset([]))
    with pytest.raises(ValueError, match="seed must be a whole number"):
        Passes(model, blocks, seed=0.5)


def test_the_shard_rule_is_public_and_the_old_name_stays():
    assert scoring._shard is local_blocks
    blocks = load_task("prose", models._tiny_llama(n_layers=1)[1], n_blocks=2, block_size=8)
    same, ids = local_blocks(blocks)
    assert same is blocks and ids == [0, 1]


@pytest.mark.parametrize("curvature,layers_per_pass", [(c, k) for c in curv.FACTORED for k in (1, 3)])
def test_streamed_influence_equals_the_one_pass_influence(micro, curvature, layers_per_pass):
    """Each group's passes reduce only its own modules, whose statistics, validation gradients and inner
    products depend only on their own (a, b): streaming changes nothing but the peak memory."""
    from layerq_nb.influence import layer_influence
    model, blocks = micro
    validation = blocks.subset([1])
    one = layer_influence(model, blocks, validation, curvature=curvature, progress=False)
    streamed = layer_influence(model, blocks, validation, curvature=curvature, layers_per_pass=layers_per_pass,
                               progress=False)
    np.testing.assert_allclose(streamed.matrix, one.matrix, rtol=1e-6, atol=0)
    assert streamed.names == one.names and streamed.metadata == one.metadata
    # the fit's pass also gives zeta^2: the same numbers as score() with the same options, streamed or not
    expected = score(model, blocks, curvature=curvature, progress=False)
    for result in (one, streamed):
        gains = result.gains()
        np.testing.assert_array_equal(gains.values, expected.values)
        assert gains.method == expected.method and gains.names == expected.names


@pytest.mark.parametrize("layers_per_pass", [0, 2.5, True])
def test_streamed_influence_checks_layers_per_pass_first(micro, layers_per_pass):
    from layerq_nb.influence import layer_influence
    model, blocks = micro
    with pytest.raises(ValueError, match="layers_per_pass must be"):
        layer_influence(model, blocks, blocks, layers_per_pass=layers_per_pass, progress=False)


def test_a_pass_over_some_layers_starts_autograd_at_the_lowest_of_them(micro):
    """With `only`, the backward stops at the input of the lowest layer reduced (nothing below feeds a
    statistic), and what it reduces is bit-identical to the same modules in a pass over every layer."""
    from layerq_nb.tape import GradientSum, run_tape
    model, blocks = micro
    flags = [p.requires_grad for p in model.parameters()]
    graph = {}
    handles = [layer.module.register_forward_hook(
        lambda m, i, out, k=layer.index: graph.__setitem__(k, (out[0] if isinstance(out, tuple) else out).requires_grad))
        for layer in models.layers(model)]
    try:
        full, part = GradientSum(), GradientSum()
        run_tape(model, blocks, [full], progress=False)
        assert graph == {0: True, 1: True, 2: True, 3: True}
        run_tape(model, blocks, [part], progress=False, only={2, 3})
        assert graph == {0: False, 1: False, 2: True, 3: True}
    finally:
        for h in handles:
            h.remove()
    assert set(part.state) == {k for k in full.state if k[0] in {2, 3}}
    for key, value in part.state.items():
        torch.testing.assert_close(value, full.state[key], rtol=0, atol=0)
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="does not have"):
        run_tape(model, blocks, [GradientSum()], progress=False, only={9})


def test_batched_products_fall_back_to_a_loop_only_for_what_vmap_cannot_batch(monkeypatch):
    mat = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fn, vectors = (lambda v: mat @ v), torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(curv.batched_products(fn, vectors, chunk=2), vectors @ mat.T)

    def unbatchable(*args, **kwargs):
        raise RuntimeError("vmap: It looks like you're calling .item() on a Tensor")
    monkeypatch.setattr(torch.func, "vmap", unbatchable)
    with pytest.warns(RuntimeWarning, match="one at a time"):
        torch.testing.assert_close(curv.batched_products(fn, vectors, chunk=2), vectors @ mat.T)

    def broken(*args, **kwargs):                      # any other failure is the caller's to see
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(torch.func, "vmap", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        curv.batched_products(fn, vectors, chunk=2)
