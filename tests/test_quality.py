"""Layer quality beyond zeta^2: Shapley estimators against exact values, ablation, LayerIF against
explicit per-example gradients, and the baselines against their formulas."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerq_nb import shapley


def table_game(table):
    k = int(np.log2(len(table)))
    return lambda rows: table[rows.astype(int) @ (1 << np.arange(k))]


def brute_force_shapley(table):
    """Average marginal contribution over all K! orders: the definition, independent of the code."""
    k = int(np.log2(len(table)))
    phi = np.zeros(k)
    for order in itertools.permutations(range(k)):
        mask = 0
        for p in order:
            phi[p] += table[mask | 1 << p] - table[mask]
            mask |= 1 << p
    return phi / math.factorial(k)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_exact_matches_brute_force_and_is_efficient(k, seed):
    table = np.random.default_rng(seed).normal(size=2**k)
    est = shapley.estimate(table_game(table), k, "exact")
    np.testing.assert_allclose(est.values, brute_force_shapley(table), atol=1e-12)
    assert abs(est.efficiency_gap) < 1e-12 and est.evaluations == 2**k


def test_known_games():
    k = 6
    unanimity = lambda rows: rows[:, [0, 2, 3]].all(1).astype(float)    # u_T with T = {0, 2, 3}
    np.testing.assert_allclose(shapley.estimate(unanimity, k, "exact").values, [1 / 3, 0, 1 / 3, 1 / 3, 0, 0])
    w = np.arange(1.0, k + 1)
    additive = lambda rows: rows @ w
    for method in shapley.METHODS:       # every estimator is exact on an additive game
        est = shapley.estimate(additive, k, method, budget=200, seed=1, tol=0.0)
        np.testing.assert_allclose(est.values, w, atol=1e-9, err_msg=method)


def layer_like_table(k, seed):
    """A cornerstone game: nothing works without player 0, plus additive parts and a 3-way interaction."""
    rng = np.random.default_rng(seed)
    bits = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1).astype(float)
    value = bits @ rng.uniform(0, 1, k) + 2 * bits[:, 1] * bits[:, 2] * bits[:, 3]
    return np.where(bits[:, 0] > 0, value, 0.0) + 0.05 * rng.normal(size=2**k)


@pytest.mark.parametrize("method", ["permutation", "antithetic", "stratified", "kernel"])
def test_sampling_estimators_are_unbiased_with_honest_errors(method):
    k = 8
    table = layer_like_table(k, 3)
    exact = shapley.estimate(table_game(table), k, "exact").values
    errors, ses = [], []
    for seed in range(30):
        est = shapley.estimate(table_game(table), k, method, budget=120, seed=seed)
        assert est.evaluations <= 120 + 2 * k * k
        errors.append(est.values - exact)
        ses.append(est.stderr)
        if method != "stratified":
            assert abs(est.efficiency_gap) < 1e-9
    errors, ses = np.array(errors), np.array(ses)
    bias_z = np.abs(errors.mean(0)) / (errors.std(0, ddof=1) / np.sqrt(len(errors)))
    assert np.all(bias_z < 4.5), bias_z
    ratio = np.sqrt((errors**2).mean()) / np.sqrt((ses**2).mean())      # reported SEs track real errors
    assert 0.5 < ratio < 2.0, ratio


def test_truncation_is_biased_only_by_what_it_skips():
    k = 8
    table = layer_like_table(k, 4)
    exact = shapley.estimate(table_game(table), k, "exact").values
    full = shapley.estimate(table_game(table), k, "truncated", budget=2**k, seed=0, tol=0.0)
    assert np.max(np.abs(full.values - exact)) < 0.5        # tol 0: plain removal-order permutations


def test_bad_input():
    with pytest.raises(ValueError, match="unknown Shapley method"):
        shapley.estimate(lambda r: r.sum(1), 3, "owen")
    with pytest.raises(ValueError, match="finite"):
        shapley.estimate(lambda r: np.full(len(r), np.nan), 3, "exact")
    with pytest.raises(ValueError, match="K > 20"):
        shapley.estimate(lambda r: r.sum(1), 21, "exact")


# ----------------------------------------------------------------------------- ablation on a tiny model

@pytest.fixture(scope="module")
def tiny_blocks(tiny):
    from layerq_nb import load_task
    return load_task("prose", tiny[1], split="validation", n_blocks=3, block_size=24)


def test_skipped_layers_are_identity_and_restored(tiny, tiny_blocks):
    from layerq_nb.ablation import coalition_losses, skipped
    from layerq_nb.evaluate import mean_loss
    model = tiny[0]
    before = mean_loss(model, tiny_blocks, progress=False)
    coalitions = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]], bool)
    batched = coalition_losses(model, tiny_blocks, coalitions, max_rows=5)   # chunks mix coalitions
    for row, value in zip(coalitions, batched):
        with skipped(model, np.flatnonzero(~row)):
            assert mean_loss(model, tiny_blocks, progress=False) == pytest.approx(value, rel=1e-5)
    with pytest.raises(RuntimeError):
        with skipped(model, [0, 2]):
            raise RuntimeError("boom")
    assert "forward" not in vars(model.model.layers[0])
    assert mean_loss(model, tiny_blocks, progress=False) == before
    with pytest.raises(ValueError, match="out of range"):
        with skipped(model, [3]):
            pass


def test_layer_shapley_and_cornerstone(tiny, tiny_blocks):
    from layerq_nb.ablation import cornerstone, layer_shapley
    est, scores = layer_shapley(tiny[0], tiny_blocks, method="exact", cap=False, progress=False)
    assert est.evaluations == 8 and abs(est.efficiency_gap) < 1e-9
    corner = cornerstone(tiny[0], tiny_blocks)
    assert corner.full_loss == pytest.approx(-est.v_full) and corner.empty_loss == pytest.approx(-est.v_empty)
    assert corner.drop.shape == (3,) and corner.chance_loss == pytest.approx(np.log(257))


# ----------------------------------------------------------------------------- LayerIF

def per_example_gradients(model, blocks):
    from layerq_nb.models import layers
    found, out = layers(model), []
    for i in range(len(blocks)):
        model.zero_grad()
        model(input_ids=blocks.input_ids[i:i + 1], attention_mask=blocks.attention_mask[i:i + 1],
              labels=blocks.labels[i:i + 1]).loss.backward()
        out.append({(layer.index, n): m.weight.grad.detach().clone() for layer in found for n, m in layer.linears.items()})
    model.zero_grad()
    return out


@pytest.mark.parametrize("curvature,params", [("identity", "block"), ("kfac", "attn"), ("ekfac", "block")])
def test_influence_matches_explicit_per_example_gradients(tiny, curvature, params):
    from layerq_nb import load_task
    from layerq_nb.influence import layer_influence
    from layerq_nb.scoring import module_solves
    model, tok = tiny
    train = load_task("prose", tok, split="train", n_blocks=5, block_size=24)
    val = load_task("prose", tok, split="validation", n_blocks=3, block_size=24)
    inf = layer_influence(model, train, val, curvature=curvature, params=params, batch_size=2, progress=False)
    solves = module_solves(model, train, curvature, batch_size=2, progress=False).solves
    val_grad = {k: sum(g[k] for g in per_example_gradients(model, val)) for k in solves}
    ref = np.zeros((len(train), 3))
    for i, g in enumerate(per_example_gradients(model, train)):
        for (layer, name), v in val_grad.items():
            if params == "block" or "attn" in name:
                ref[i, layer] -= float((solves[(layer, name)].solve(v) * g[(layer, name)]).sum())
    np.testing.assert_allclose(inf.matrix, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_influence_of_the_validation_data_on_itself_is_beneficial(tiny):
    from layerq_nb import load_task
    from layerq_nb.influence import layer_influence
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=1, block_size=24)
    inf = layer_influence(model, blocks, blocks, curvature="identity", progress=False)
    assert np.all(inf.matrix < 0)        # -g^T H^-1 g < 0: training on z lowers the loss on z


def test_influence_aggregations():
    from layerq_nb.influence import Influence
    matrix = -np.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0], [2.0, 1.0]])    # benefit = -matrix
    inf = Influence(matrix=matrix, names=("a", "b"), metadata={"curvature": "kfac"})
    np.testing.assert_allclose(inf.scores("positive").values, [6.0, 5.5])
    np.testing.assert_allclose(inf.scores("all").values, [5.0, 3.5])
    np.testing.assert_allclose(inf.scores("top25").values, [3.0, 4.0])
    with pytest.raises(ValueError, match="aggregation"):
        inf.scores("median")


# ----------------------------------------------------------------------------- baselines

def test_block_influence_matches_hidden_states(tiny, tiny_blocks):
    from layerq_nb.baselines import block_influence
    model = tiny[0]
    with torch.no_grad():
        hs = model(input_ids=tiny_blocks.input_ids, output_hidden_states=True).hidden_states
    ref = [1 - torch.nn.functional.cosine_similarity(hs[k], hs[k + 1], dim=-1).mean().item() for k in range(2)]
    bi = block_influence(model, tiny_blocks)
    np.testing.assert_allclose(bi.values[:2], ref, rtol=1e-5)   # the last entry of hidden_states is normed


def test_outlier_ratio_counts_wanda_outliers(tiny, tiny_blocks):
    from layerq_nb.baselines import input_norms, outlier_ratio
    from layerq_nb.models import layers
    model = tiny[0]
    norms = input_norms(model, tiny_blocks)
    layer = layers(model)[1]
    x = tiny_blocks.input_ids
    captured = {}
    handle = layer.linears["mlp.down_proj"].register_forward_hook(lambda m, i, o: captured.update(a=i[0]))
    with torch.no_grad():
        model(input_ids=x)
    handle.remove()
    np.testing.assert_allclose(norms[(1, "mlp.down_proj")], captured["a"].reshape(-1, captured["a"].shape[-1]).norm(dim=0),
                               rtol=1e-5)
    scores = torch.cat([(m.weight.abs() * norms[(1, n)]).reshape(-1) for n, m in layer.linears.items()])
    expected = 100 * (scores > 2.0 * scores.mean()).float().mean().item()
    assert outlier_ratio(model, tiny_blocks, m=2.0, norms=norms).values[1] == pytest.approx(expected)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_alpha_recovers_a_power_law(alpha):
    from layerq_nb.baselines import hill_alpha
    rng = np.random.default_rng(0)
    bulk = rng.uniform(0.01, 1.0, 3000)                        # a bulk below the tail, as in real ESDs
    tail = (1 - rng.uniform(size=3000)) ** (-1 / (alpha - 1))  # density ~ x^-alpha above 1
    assert hill_alpha(np.concatenate([bulk, tail])) == pytest.approx(alpha, rel=0.1)
