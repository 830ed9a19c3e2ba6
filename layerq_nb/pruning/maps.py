"""Per-layer sparsity maps: numpy only (no torch), so they are taught and tested without a model.

Every map keeps the global sparsity exactly, the layer sizes n_k (prunable weights) weighing the layers:
sum_k n_k s_k = S sum_k n_k.

    uniform        s_k = S
    owl            D_k = the outlier ratio LOD_k min-max scaled into [0, 2 lambda]; s_k = S - (D_k - mean_n D)
                   (more outliers, less pruning; Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A
                   Missing Secret Sauce for Pruning LLMs to High Sparsity", arXiv 2310.05175, section 3,
                   lambda = 0.08)
    alphapruning   r_k = the metric min-max scaled into [1 - eps, 1 + eps]; s_k = eta r_k with eta chosen so
                   that sum_k n_k s_k = S sum_k n_k (higher alpha, more pruning; Lu et al., "AlphaPruning:
                   Using Heavy-Tailed Self Regularization Theory for Improved Layer-wise Pruning of Large
                   Language Models", arXiv 2410.10912, section 3, eps = 0.3)
    layerif        |S(k)| min-max normalised, Savitzky-Golay smoothed (window 7, order 3; the window shrinks
                   for few layers), then the alphapruning map (Askari et al., "LayerIF: Estimating Layer
                   Quality for Large Language Models using Influence Functions", arXiv 2505.23811, section 3.4)
    mdl            MDL program B (Amaefuna et al., "Curvature-Weighted Capacity Allocation", arXiv 2603.00910):
                   min sum_k q_k phi(s_k) s.t. the global sparsity and s_k within S -/+ band (the paper's code
                   caps s_k near S as well)
    reverse=True   s_k -> 2S - s_k for any map (a good map's reverse must hurt).
"""
from __future__ import annotations

import numpy as np

from .. import mdl
from ..scores import LayerScores

__all__ = ["MAP_KINDS", "MAP_SPECS", "MAX_SPARSITY", "sparsity_map", "mdl_gains", "per_layer_sparsity", "map_kind"]

MAP_KINDS = ("uniform", "owl", "alphapruning", "layerif", "mdl")
# the maps `sweeps.map_functions` builds from a model: a kind, and for "mdl" the scores it uses as gains
MAP_SPECS = ("uniform", "owl", "alphapruning", "layerif", "mdl-zeta2", "mdl-layerif")
MAX_SPARSITY = 0.99      # the per-layer ceiling of every map (a layer needs some weights left)


def map_kind(spec: str) -> str:
    """The MAP_KINDS kind a spec name stands for: "mdl", "mdl-zeta2" -> "mdl"; "owl-reverse" -> "owl".

    >>> map_kind("mdl-layerif-reverse")
    'mdl'
    """
    base = spec.removesuffix("-reverse")
    return "mdl" if base.startswith("mdl") else base.split("-")[0]


def _fraction(sparsity) -> float:
    """One sparsity as a float in [0, 1), or a ValueError that names the value (nan and "0.5" included)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if isinstance(sparsity, (bool, np.bool_)) or not 0 <= value < 1:    # nan fails both comparisons
        raise ValueError(f"sparsity must be a number in [0, 1) (a fraction of weights set to zero), got {sparsity!r}")
    return value


def per_layer_sparsity(sparsity, n_layers: int) -> np.ndarray:
    """One sparsity per layer, (n_layers,) in [0, 1), from one number or a sequence of n_layers numbers."""
    try:
        arr = np.asarray(sparsity, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1) or one per layer, got {sparsity!r}") from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size != n_layers):
        raise ValueError(f"sparsity must be one number or one per layer ({n_layers}), got shape {arr.shape}")
    per_layer = np.broadcast_to(arr, (n_layers,)).copy()
    bad = ~((per_layer >= 0) & (per_layer < 1))         # nan is bad too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"per-layer sparsity must lie in [0, 1), got {per_layer[i]:g} for layer {i}"
                         + (" (not a number: check the sparsity map)" if np.isnan(per_layer[i]) else ""))
    return per_layer


def _values(scores) -> np.ndarray:
    return np.asarray(scores.values if isinstance(scores, LayerScores) else scores, dtype=float)


def mdl_gains(scores) -> np.ndarray:
    """The gains q_k >= 0 program B takes from per-layer scores (LayerScores or an array): a negative score
    (a Shapley value or leave-one-out drop of a layer that hurts) counts as no gain.

    >>> mdl_gains([0.5, -1.0, 2.0])
    array([0.5, 0. , 2. ])
    """
    return np.clip(_values(scores), 0, None)


def _min_max(x):
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def _linear_map(metric, sparsity, sizes, epsilon):
    r = _min_max(metric) * 2 * epsilon + (1 - epsilon)
    return r * sparsity * sizes.sum() / (sizes @ r)


def sparsity_map(kind: str, sparsity: float, sizes, scores=None, *, epsilon: float = 0.3, owl_lambda: float = 0.08,
                 band: float | None = 0.1, penalty: str = "log", window: int = 7, reverse: bool = False,
                 upper: float = MAX_SPARSITY) -> np.ndarray:
    """Per-layer sparsity s_k with sum_k n_k s_k = sparsity * sum_k n_k (the formulas: the module docstring).

    kind: one of MAP_KINDS. sizes: n_k, prunable weights per layer (`layer_sizes(model)`). scores: per-layer
    values (LayerScores or array): the OWL outlier ratio for "owl", alpha for "alphapruning", LayerIF S(k)
    for "layerif", any gain (zeta^2, LayerIF, Shapley) for "mdl". epsilon: AlphaPruning's spread;
    owl_lambda: OWL's lambda; band: "mdl" keeps s_k within S -/+ band (None: within [0, upper]); penalty:
    program B's phi ("log" or "quadratic"); window: the "layerif" smoothing window, a positive odd whole number
    (3 or less: no smoothing, an order-3 fit needs 5 points); upper: the ceiling.

    >>> sparsity_map("alphapruning", 0.5, [1, 1, 1], [1.0, 2.0, 3.0], epsilon=0.2).round(6)
    array([0.4, 0.5, 0.6])
    >>> sparsity_map("owl", 0.5, [1, 1, 1], [0.0, 1.0, 2.0], owl_lambda=0.1).round(6)   # more outliers, less pruned
    array([0.6, 0.5, 0.4])
    """
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown sparsity map {kind!r}: use one of {', '.join(MAP_KINDS)}")
    sizes = np.asarray(sizes, dtype=float)
    sparsity = _fraction(sparsity)
    if band is not None and not (np.isfinite(band) and band >= 0):
        raise ValueError(f"band must be a finite number >= 0 (or None), got {band!r}")
    # Savitzky-Golay windows are centred on a layer: odd (the shrink for few layers keeps them so)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd whole number (the 'layerif' smoothing window, e.g. 7), "
                         f"got {window!r}")
    for name, value in (("epsilon", epsilon), ("owl_lambda", owl_lambda)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if sizes.ndim != 1 or sizes.size == 0 or not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ValueError(f"sizes must be one positive number per layer (layer_sizes(model)), got {sizes}")
    if kind != "uniform":
        if scores is None:
            raise ValueError(f"the {kind!r} map needs per-layer scores (e.g. layerq_nb.baselines or score())")
        values = _values(scores)
        if values.size != sizes.size or not np.all(np.isfinite(values)):
            raise ValueError(f"scores must be {sizes.size} finite values, got {values}")
    if kind == "uniform":
        s = np.full(sizes.size, float(sparsity))
    elif kind == "owl":
        d = _min_max(values) * 2 * owl_lambda
        s = sparsity - (d - sizes @ d / sizes.sum())
    elif kind == "alphapruning":
        s = _linear_map(values, sparsity, sizes, epsilon)
    elif kind == "layerif":
        from scipy.signal import savgol_filter
        metric = _min_max(np.abs(values))
        w = min(window, sizes.size - 1 if sizes.size % 2 == 0 else sizes.size)
        if w > 3:
            metric = savgol_filter(metric, w, 3)
        s = _linear_map(metric, sparsity, sizes, epsilon)
    else:
        if not np.any(values > 0):
            raise ValueError(f"the 'mdl' map needs at least one positive gain, but every score is <= 0 (from "
                             f"{values.min():.4g} to {values.max():.4g}). Negative values (a Shapley value or a "
                             "leave-one-out drop of a layer that hurts) count as no gain; pass gains such as zeta^2, "
                             "or the scores of another method")
        lower = 0.0 if band is None else max(0.0, sparsity - band)
        top = upper if band is None else min(upper, sparsity + band)
        s = mdl.prune(mdl_gains(values), sparsity, sizes=sizes, lower=lower, upper=top, penalty=penalty).x
    if reverse:
        s = 2 * sparsity - s
    if np.any(s < 0) or np.any(s > upper):
        raise ValueError(f"the {kind!r} map at sparsity {sparsity:g} asks for per-layer sparsity in "
                         f"[{s.min():.3f}, {s.max():.3f}], outside [0, {upper}]: lower epsilon / owl_lambda / band")
    return s
