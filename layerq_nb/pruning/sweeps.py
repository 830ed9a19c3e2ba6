"""Maps computed from a model and sweeps over method x map x sparsity: the one part of `pruning` that
needs the scores (baselines, K-FAC zeta^2, LayerIF), imported when a map asks for them."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data import Blocks
from .apply import layer_sizes, pruned
from .maps import MAP_SPECS, map_kind, sparsity_map
from .masks import PRUNE_METHODS

__all__ = ["map_functions", "prune_sweep", "plot_sweep"]


def map_functions(model, calibration: Blocks, validation: Blocks | None = None, specs: Sequence[str] = MAP_SPECS, *,
                  band: float | None = 0.1, epsilon: float = 0.3, owl_lambda: float = 0.08,
                  progress: bool = True) -> dict[str, Callable[[float], np.ndarray]]:
    """name -> (sparsity -> per-layer sparsity) for each spec (MAP_SPECS, or "<spec>-reverse" to mirror one),
    computing only the scores they need: OWL's outlier ratio and zeta^2 (K-FAC) on `calibration`,
    AlphaPruning's alpha from the weights, LayerIF (K-FAC, positive aggregation) of `calibration` on
    `validation`. band, epsilon, owl_lambda: as `sparsity_map` takes them."""
    sizes, scores = layer_sizes(model), {}
    bases = {spec.removesuffix("-reverse") for spec in specs}
    unknown = bases - set(MAP_SPECS)
    if unknown:
        raise ValueError(f"unknown map {sorted(unknown)[0]!r}: use one of {', '.join(MAP_SPECS)} (or <map>-reverse)")
    # before any scores: outlier ratios and zeta^2 take minutes on a real model, all lost if this fails later
    needs_validation = sorted(bases & {"layerif", "mdl-layerif"})
    if needs_validation and (not isinstance(validation, Blocks) or len(validation) == 0):
        got = "empty Blocks" if isinstance(validation, Blocks) else repr(validation)[:60]
        raise ValueError(f"LayerIF maps ({', '.join(needs_validation)}) need validation blocks, the loss whose "
                         "influence they measure: map_functions(model, calibration, validation, ...) with e.g. "
                         f"validation=load_task(..., split='validation'); got {got}")
    if bases & {"owl", "alphapruning"}:
        from .. import baselines
        if "owl" in bases:
            scores["owl"] = baselines.outlier_ratio(model, calibration)
        if "alphapruning" in bases:
            scores["alphapruning"] = baselines.heavy_tail_alpha(model)
    if "mdl-zeta2" in bases:
        from ..scoring import score
        scores["mdl-zeta2"] = score(model, calibration, curvature="kfac", progress=progress)
    if needs_validation:
        from ..influence import layer_influence
        scores["layerif"] = scores["mdl-layerif"] = layer_influence(model, calibration, validation,
                                                                    progress=progress).scores("positive")

    def make(spec):
        base = spec.removesuffix("-reverse")
        return lambda s: sparsity_map(map_kind(base), s, sizes, scores.get(base), epsilon=epsilon,
                                      owl_lambda=owl_lambda, band=band, reverse=spec.endswith("-reverse"))
    return {spec: make(spec) for spec in specs}


def prune_sweep(model, calibration: Blocks, evaluation: Blocks, maps: dict[str, Callable[[float], np.ndarray]], *,
                methods: Sequence[str] = PRUNE_METHODS, sparsities: Sequence[float] = (0.5, 0.6, 0.7),
                batch_size: int | None = None, progress: bool = True) -> list[dict]:
    """Held-out perplexity for every method x map x sparsity (plus the dense model), as plain rows; a map
    that cannot reach a sparsity gives a row with perplexity NaN and its `error`. batch_size None: the
    device's (`evaluate.batch_size_for`)."""
    from ..evaluate import batch_size_for, perplexity
    batch_size = batch_size_for(model, batch_size)
    rows = [dict(method="dense", map="-", sparsity=0.0, achieved=0.0,
                 perplexity=perplexity(model, evaluation, batch_size=batch_size, progress=False))]
    combos = [(m, name, s) for m in methods for name in maps for s in sparsities]
    for method, name, s in tqdm(combos, desc="prune sweep", unit="run", disable=not progress):
        try:
            per_layer = maps[name](s)
        except ValueError as err:      # e.g. a linear map that would need a layer above 99%: say so, go on
            rows.append(dict(method=method, map=name, sparsity=s, achieved=float("nan"), perplexity=float("nan"),
                             error=str(err)))
            continue
        with pruned(model, per_layer, method, blocks=calibration, batch_size=batch_size, progress=False) as report:
            ppl = perplexity(model, evaluation, batch_size=batch_size, progress=False)
        rows.append(dict(method=method, map=name, sparsity=s, achieved=report.global_sparsity, perplexity=ppl,
                         per_layer=per_layer.tolist()))
    return rows


def plot_sweep(rows: list[dict], *, axes=None):
    """Perplexity against sparsity, one panel per method, one line per map (log scale)."""
    import matplotlib.pyplot as plt
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]
    if axes is None:
        _, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3), squeeze=False)
        axes = axes[0]
    dense = next((r["perplexity"] for r in rows if r["method"] == "dense"), None)
    for ax, method in zip(axes, methods):
        for name in dict.fromkeys(r["map"] for r in rows if r["method"] == method):
            pts = sorted((r["sparsity"], r["perplexity"]) for r in rows
                         if r["method"] == method and r["map"] == name and np.isfinite(r["perplexity"]))
            ax.plot(*zip(*pts), marker="o", label=name)
        if dense:
            ax.axhline(dense, color="grey", ls=":", label="dense")
        ax.set_yscale("log")
        ax.set_title(method)
        ax.set_xlabel("global sparsity")
    axes[0].set_ylabel("held-out perplexity")
    axes[-1].legend(fontsize=7)
    return axes
