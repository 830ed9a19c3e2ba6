"""Unstructured pruning of a decoder's linear maps: a per-layer sparsity map, then a mask per matrix.

    maps     per-layer sparsity s_k with sum_k n_k s_k = S sum_k n_k: uniform, OWL, AlphaPruning, LayerIF,
             MDL program B (numpy only: imports without torch)
    masks    one (d_out, d_in) matrix: magnitude, Wanda, SparseGPT, optionally N:M (torch, no model)
    apply    `pruned(model, s, method, blocks=...)`: prunes every block, counts the zeros, restores every
             weight bit-identically on exit; `weight_fingerprint`, `layer_sizes`
    sweeps   maps computed from a model (`map_functions`), `prune_sweep`, `plot_sweep`

Citations live with the code: Wanda (arXiv 2306.11695) and SparseGPT (arXiv 2301.00774) in `masks`,
OWL (arXiv 2310.05175), AlphaPruning (arXiv 2410.10912), LayerIF (arXiv 2505.23811) and MDL program B
(arXiv 2603.00910) in `maps`. Only `maps` loads with the package; the rest loads on first use.
"""
from __future__ import annotations

from .. import lazy_exports
from .maps import MAP_KINDS, MAP_SPECS, MAX_SPARSITY, map_kind, mdl_gains, per_layer_sparsity, sparsity_map

_LAZY = {
    "PRUNE_METHODS": "masks", "magnitude_mask": "masks", "wanda_mask": "masks", "sparsegpt": "masks",
    "pruned": "apply", "PruneReport": "apply", "weight_fingerprint": "apply", "layer_sizes": "apply",
    "StopForward": "apply", "forward_until_stopped": "apply",
    "map_functions": "sweeps", "prune_sweep": "sweeps", "plot_sweep": "sweeps",
}
# the names these constants had before the split, kept for existing callers
_OLD_NAMES = {"MAPS": "MAP_KINDS", "SPECS": "MAP_SPECS", "METHODS": "PRUNE_METHODS"}

__all__ = [
    "MAP_KINDS", "MAP_SPECS", "MAX_SPARSITY", "sparsity_map", "mdl_gains", "per_layer_sparsity", "map_kind",  # maps
    "PRUNE_METHODS", "magnitude_mask", "wanda_mask", "sparsegpt",                                           # masks
    "pruned", "PruneReport", "weight_fingerprint", "layer_sizes", "StopForward", "forward_until_stopped",   # apply
    "map_functions", "prune_sweep", "plot_sweep",                                                           # sweeps
]

_lazy_getattr, __dir__ = lazy_exports(__name__, _LAZY, globals())


def __getattr__(name: str):
    name = _OLD_NAMES.get(name, name)
    return globals()[name] if name in globals() else _lazy_getattr(name)
