"""Bad arguments get one early ValueError that names the fix, before any pass over the model: layer
indices of `only`, the Shapley budget, N:M sparsity, the LayerIF smoothing window, and the validation
blocks the LayerIF maps need."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layerq_nb import ablation, influence, pruning, scoring, shapley
from layerq_nb.data import Blocks


@pytest.fixture(scope="module")
def blocks(tiny):
    from layerq_nb import load_task
    return load_task("prose", tiny[1], split="train", n_blocks=2, block_size=16)


def _no_pass(*args, **kwargs):
    raise AssertionError("a pass over the model ran before the argument check")


# ----------------------------------------------------------------------------- only= (layer indices)

@pytest.mark.parametrize("only, fragment", [
    ([1.5], "1.5 is not a whole number"),          # int() used to make this layer 1
    ([1.0], "1.0 is not a whole number"),
    (["a"], "'a' is not a whole number"),          # int() used to raise "invalid literal"
    ([True], "True is not a whole number"),
    ([3], "layer 3 out of range"),                 # used to select no layer at all
    ([-1], "layer -1 out of range"),
    ([], "one or more layer indices"),
    ("1", "one or more layer indices"),
    (1, "one or more layer indices"),
])
def test_only_takes_whole_layer_indices(tiny, blocks, monkeypatch, only, fragment):
    model = tiny[0]
    monkeypatch.setattr(scoring.Passes, "gradients", _no_pass)
    for call in (lambda: scoring.layer_gradients(model, blocks, only=only, progress=False),
                 lambda: scoring.module_solves(model, blocks, "diag", only=only, progress=False),
                 lambda: influence.layer_influence(model, blocks, blocks, curvature="identity", only=only,
                                                   progress=False)):
        with pytest.raises(ValueError, match="only must hold one or more layer indices 0 .. 2") as err:
            call()
        assert fragment in str(err.value)


def test_only_takes_numpy_integers(tiny, blocks):
    grads = scoring.layer_gradients(tiny[0], blocks, only=[np.int64(1)], progress=False)
    assert grads and {layer for layer, _ in grads} == {1}


# ----------------------------------------------------------------------------- Shapley budget

@pytest.mark.parametrize("budget, fragment", [
    (0, "got 0"), (-5, "got -5"), (float("nan"), "got nan"), (2.5, "got 2.5"), (True, "got True"),
    (3, "K + 1 = 4"),                    # fewer than one permutation of the tiny model's 3 layers
])
def test_layer_shapley_budget(tiny, blocks, monkeypatch, budget, fragment):
    monkeypatch.setattr(ablation, "coalition_losses", _no_pass)
    with pytest.raises(ValueError, match="budget must be a whole number >= 4") as err:
        ablation.layer_shapley(tiny[0], blocks, budget=budget, progress=False)
    assert fragment in str(err.value)


def test_estimate_budget():
    game = lambda rows: rows.sum(1).astype(float)
    with pytest.raises(ValueError, match="budget must be a whole number >= 6"):
        shapley.estimate(game, 5, "permutation", budget=0)
    with pytest.raises(ValueError, match="budget must be a whole number >= 1"):
        shapley.estimate(game, 5, "exact", budget=float("nan"))
    assert shapley.estimate(game, 5, "permutation", budget=np.int64(6), seed=0).values == pytest.approx(np.ones(5))


# ----------------------------------------------------------------------------- N:M sparsity

@pytest.mark.parametrize("sparsity, n_m, fragment", [
    (0.9, (2, 4), "fixes the sparsity at N/M = 0.5, but sparsity asks for 0.9"),     # used to prune 50%
    ([0.5, 0.5, 0.6], (2, 4), "asks for 0.6 (layer 2)"),
    (0.5, (4, 4), "0 < N < M"),                                                      # used to prune 100%
    (0.0, (0, 4), "0 < N < M"),
    (0.5, (2.0, 4.0), "0 < N < M"),
    (0.5, (2,), "0 < N < M"),
    (0.5, (1, 2, 4), "0 < N < M"),
    (0.5, "24", "0 < N < M"),
    (0.5, (True, 2), "0 < N < M"),
])
def test_pruned_n_m(tiny, monkeypatch, sparsity, n_m, fragment):
    from layerq_nb.pruning import apply
    model = tiny[0]
    monkeypatch.setattr(apply, "_apply", _no_pass)
    with pytest.raises(ValueError, match="n_m") as err:
        with pruning.pruned(model, sparsity, "magnitude", n_m=n_m, progress=False):
            pass
    assert fragment in str(err.value)


def test_n_m_agrees_with_its_sparsity(tiny):
    with pruning.pruned(tiny[0], 0.5, "magnitude", n_m=(2, 4), progress=False) as report:
        np.testing.assert_allclose(report.achieved, 0.5)
    with pruning.pruned(tiny[0], 1 / 4, "magnitude", n_m=(np.int64(1), np.int64(4)), progress=False) as report:
        np.testing.assert_allclose(report.achieved, 0.25)
    w, norm = torch.randn(4, 8), torch.rand(8)
    for mask in (lambda: pruning.magnitude_mask(w, 0.9, n_m=(2, 4)), lambda: pruning.wanda_mask(w, norm, 0.9, n_m=(2, 4)),
                 lambda: pruning.sparsegpt(w, torch.eye(8), 0.9, n_m=(2, 4))):
        with pytest.raises(ValueError, match="fixes the sparsity at N/M = 0.5"):
            mask()


# ----------------------------------------------------------------------------- LayerIF smoothing window

@pytest.mark.parametrize("window", [0, -3, 5.5, 6, True, "7"])
def test_layerif_window(window):
    sizes, scores = np.ones(9), np.linspace(1.0, 2.0, 9)
    with pytest.raises(ValueError, match="window must be a positive odd whole number"):
        pruning.sparsity_map("layerif", 0.5, sizes, scores, window=window)


def test_layerif_window_smooths():
    sizes, scores = np.ones(9), np.array([1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0])
    raw = pruning.sparsity_map("layerif", 0.5, sizes, scores, window=1)
    smooth = pruning.sparsity_map("layerif", 0.5, sizes, scores, window=np.int64(5))
    assert np.ptp(smooth) < np.ptp(raw)


# ----------------------------------------------------------------------------- map_functions' validation blocks

EMPTY = Blocks(torch.zeros(0, 16, dtype=torch.long), torch.zeros(0, 16, dtype=torch.long),
               torch.zeros(0, 16, dtype=torch.long), "prose", "validation")


@pytest.mark.parametrize("specs, validation", [
    (["mdl-zeta2", "layerif"], None),
    (["owl", "alphapruning", "mdl-layerif-reverse"], None),
    (["mdl-zeta2", "mdl-layerif"], EMPTY),
])
def test_map_functions_refuses_before_scoring(tiny, blocks, monkeypatch, specs, validation):
    from layerq_nb import baselines, influence
    for module, name in ((scoring, "score"), (baselines, "outlier_ratio"), (baselines, "heavy_tail_alpha"),
                         (influence, "layer_influence")):
        monkeypatch.setattr(module, name, _no_pass)
    with pytest.raises(ValueError, match=r"LayerIF maps \(.*layerif.*\) need validation blocks"):
        pruning.map_functions(tiny[0], blocks, validation, specs, progress=False)
