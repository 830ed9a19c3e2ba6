"""The pruning package's layout: maps / masks / apply / sweeps, every name importable where it was,
options keyword-only after the data arguments, the CLI's constants in one place."""
from __future__ import annotations

import importlib
import inspect

import pytest

import layerq_nb
from layerq_nb import pruning

# every public name `layerq_nb.pruning` had before the split into a package
BEFORE_SPLIT = ["MAPS", "METHODS", "SPECS", "MAX_SPARSITY", "sparsity_map", "magnitude_mask", "wanda_mask",
                "sparsegpt", "pruned", "weight_fingerprint", "PruneReport", "layer_sizes", "map_functions",
                "prune_sweep", "plot_sweep", "StopForward", "forward_until_stopped"]


@pytest.mark.parametrize("name", BEFORE_SPLIT)
def test_every_name_is_importable_where_it_was(name):
    namespace: dict = {}
    exec(f"from layerq_nb.pruning import {name}", namespace)
    assert namespace[name] is getattr(pruning, name)


def test_constants_old_names_and_the_package_level_exports():
    assert pruning.MAPS is pruning.MAP_KINDS == ("uniform", "owl", "alphapruning", "layerif", "mdl")
    assert pruning.METHODS is pruning.PRUNE_METHODS == ("magnitude", "wanda", "sparsegpt")
    assert pruning.SPECS is pruning.MAP_SPECS
    assert {pruning.map_kind(s) for s in pruning.MAP_SPECS} == set(pruning.MAP_KINDS)
    assert layerq_nb.pruned is pruning.pruned and layerq_nb.sparsity_map is pruning.sparsity_map
    for name in pruning.__all__:
        assert getattr(pruning, name) is not None
    with pytest.raises(AttributeError):
        _ = pruning.no_such_name


@pytest.mark.parametrize("module", ["maps", "masks", "apply", "sweeps"])
def test_each_part_does_its_job(module):
    """maps is numpy only; masks never touches a model; only sweeps reaches for the scores."""
    source = inspect.getsource(importlib.import_module(f"layerq_nb.pruning.{module}"))
    assert ("import torch" in source) == (module in ("masks", "apply"))
    assert ("..models" in source) == (module == "apply")
    scorers = ("baselines", "influence", "scoring")
    imports_scores = any(f"from ..{s} import" in source or f"from .. import {s}" in source for s in scorers)
    assert imports_scores == (module == "sweeps")


KEYWORD_ONLY = {
    "sparsity_map": ("epsilon", "owl_lambda", "band", "penalty", "window", "reverse", "upper"),
    "magnitude_mask": ("n_m",), "wanda_mask": ("n_m",), "sparsegpt": ("n_m", "block", "damping"),
    "pruned": ("blocks", "n_m", "batch_size", "progress"),
    "map_functions": ("band", "epsilon", "owl_lambda", "progress"),
    "prune_sweep": ("methods", "sparsities", "batch_size", "progress"),
    "plot_sweep": ("axes",),
}


@pytest.mark.parametrize("name", sorted(KEYWORD_ONLY))
def test_options_are_keyword_only(name):
    parameters = inspect.signature(getattr(pruning, name)).parameters
    keyword_only = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword_only == set(KEYWORD_ONLY[name])


def test_baseline_options_are_keyword_only():
    from layerq_nb import baselines
    for name, options in {"block_influence": {"batch_size"}, "input_norms": {"batch_size"},
                          "outlier_ratio": {"m", "batch_size", "norms"}, "hill_alpha": {"bins"}}.items():
        parameters = inspect.signature(getattr(baselines, name)).parameters
        assert {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} == options, name


def test_owl_lambda_is_not_lam():
    """`lam` is the damping elsewhere in the package; OWL's lambda has its own name."""
    with pytest.raises(TypeError):
        pruning.sparsity_map("owl", 0.5, [1.0, 1.0], [1.0, 2.0], lam=0.08)
    s = pruning.sparsity_map("owl", 0.5, [1.0, 1.0], [1.0, 2.0], owl_lambda=0.1)
    assert s.tolist() == pytest.approx([0.6, 0.4])
