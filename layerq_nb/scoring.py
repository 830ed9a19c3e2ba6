"""Layer gains from gradient isolation and curvature: zeta_k^2 = g_k^T H~_kk^-1 g_k
(Amaefuna, Vaidya, Chhabra, Mali, "Curvature-Weighted Capacity Allocation", arXiv 2603.00910, section 3).

g_k is the gradient of the mean next-token loss over all unmasked targets w.r.t. the weights of the
linear modules of layer k; H~_kk a damped curvature block (see `curvature`). zeta_k^2 / 2 is the largest
decrease of the local quadratic model reachable by changing layer k alone (the Newton step
Delta = -H~^-1 g), and it dominates the grad-norm score: (g^T g)^2 / (g^T H g) <= g^T H^-1 g.

Data parallel: inside torch.distributed each process takes every world_size-th block, and the reducer
sums are all-reduced, so scores equal the single-process ones.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from . import curvature as curv
from .curvature import CURVATURES, FACTORED, FISHERS, CurvatureOptions, ModuleSolves, Passes  # noqa: F401 (names kept here too)
from .data import Blocks, check_batch_size
from .models import layers as find_layers
from .models import model_facts, weight_matrix, weights_restored
from .scores import LayerScores
from .shard import local_blocks

__all__ = ["score", "layer_gradients", "layer_groups", "module_solves", "newton_step", "NewtonStep", "loss_after_step"]

METHODS = ("zeta2", "grad_norm")
GRANULARITIES = ("block", "module")
_shard = local_blocks      # the name exercises/nb07 teaches; `shard.local_blocks` is the public one

# Blocks per forward/backward pass of the scoring passes. On CPU one block per pass costs no time
# (SmolLM2 EK-FAC scoring of 2,048 tokens: 67 s at 1, 71 s at 4) and keeps the peak memory under
# 4 GiB (3.6 GiB at 1, 6.2 GiB at 4: benchmarks/bench_memory.py); on a GPU pass a larger batch_size.
BATCH_SIZE = 1


def layer_gradients(model, blocks: Blocks, *, batch_size: int = BATCH_SIZE, progress: bool = True,
                    only=None) -> dict:
    """g per (layer, module): the weight gradient of the mean loss over all of the blocks' targets.
    `only`: layer indices to differentiate (default all)."""
    return Passes(model, blocks, batch_size, progress=progress, only=_layer_set(only, model)).gradients()


def module_solves(model, blocks: Blocks, curvature: str = "kfac", *, damping: float = 0.1,
                  damping_mode: str = "relative", fisher: str = "sampled", batch_size: int = BATCH_SIZE, seed: int = 0,
                  progress: bool = True, only=None, gradients: bool = False, max_dense: int = 1024) -> ModuleSolves:
    """(H + lam I)^-1 per (layer, module), per layer for "exact" (`curvature.fit`). `only`: layer indices
    to build (default all). `gradients=True` also returns the layer gradients, taken from the same forward
    passes as the first statistics pass."""
    options = CurvatureOptions(curvature, damping, damping_mode, fisher, max_dense)
    passes = Passes(model, blocks, batch_size, seed, progress, _layer_set(only, model))
    return curv.fit(passes, options, gradients=gradients)


def _layer_set(only, model) -> frozenset | None:
    """`only` as a set of layer indices, refused before any pass unless each is a whole number in range:
    int() would quietly turn 1.5 into layer 1, and an index past the last layer would select nothing."""
    if only is None:
        return None
    n_layers = len(find_layers(model))
    usage = f"only must hold one or more layer indices 0 .. {n_layers - 1} (whole numbers, e.g. only=[0]), got {only!r}"
    if isinstance(only, (str, bytes)) or not isinstance(only, Iterable):
        raise ValueError(usage)
    wanted = list(only)
    if not wanted:
        raise ValueError(usage)
    for i in wanted:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"{usage}: {i!r} is not a whole number")
        if not 0 <= i < n_layers:
            raise ValueError(f"{usage}: layer {i} out of range")
    return frozenset(int(i) for i in wanted)


def layer_groups(n_layers: int, layers_per_pass) -> list:
    """None (every layer in one pass) or consecutive groups of `layers_per_pass` layer indices: the
    streaming rule of every `layers_per_pass` option (a smaller peak memory, the same numbers)."""
    if layers_per_pass is None:
        return [None]
    if isinstance(layers_per_pass, bool) or not isinstance(layers_per_pass, (int, np.integer)) or layers_per_pass < 1:
        raise ValueError(f"layers_per_pass must be None (all at once) or a whole number >= 1, got {layers_per_pass!r}")
    return [frozenset(range(lo, min(lo + layers_per_pass, n_layers))) for lo in range(0, n_layers, layers_per_pass)]


def score(model, blocks: Blocks, *, method: str = "zeta2", curvature: str = "kfac", damping: float = 0.1,
          damping_mode: str = "relative", granularity: str = "block", fisher: str = "sampled",
          batch_size: int = BATCH_SIZE, seed: int = 0, progress: bool = True, max_dense: int = 1024,
          layers_per_pass: int | None = None) -> LayerScores:
    """Layer scores: zeta_k^2 = sum over the layer's modules of g^T (H + lam I)^-1 g, or ||g_k||^2.

    curvature: identity | diag | kfac | ekfac (block diagonal over a layer's modules) or exact (the
    whole layer's Gauss-Newton block, dense when D <= max_dense, else CG). granularity: "block" (one
    score per decoder layer) or "module" (one per linear module). layers_per_pass: None fits every
    layer's statistics in one pass; k streams them k layers at a time (one pass per group, each group's
    factors and gradients freed before the next), for a smaller peak memory and the same scores; each
    group's backward stops at its lowest layer, so groups high in the model cost little more than a forward.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    options = CurvatureOptions(curvature, damping, damping_mode, fisher, max_dense)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be 'block' or 'module', got {granularity!r}")
    if curvature == "exact" and method == "zeta2" and granularity != "block":
        raise ValueError("curvature='exact' scores whole layers: use granularity='block'")
    passes = Passes(model, blocks, batch_size, seed, progress)
    found = find_layers(model)
    per_module, lam, report = {}, {}, {}
    for only in layer_groups(len(found), layers_per_pass):
        group = dataclasses.replace(passes, only=only)
        if method == "grad_norm":
            per_module.update({k: float((g.double() ** 2).sum()) for k, g in group.gradients().items()})
            continue
        fitted = curv.fit(group, options, gradients=True)    # gradients ride on the statistics pass
        for k, solve in fitted.solves.items():
            per_module[k], info = solve.zeta2_report(fitted.gradients[k])
            lam[k] = solve.lam
            for name, value in info.items():
                report.setdefault(name, []).append(value)
        del fitted                # this group's factors, eigenbases and gradients go before the next pass
    meta = dict(task=blocks.task, split=blocks.split, blocks=len(blocks), tokens=blocks.n_targets,
                model=model_facts(model).name, granularity=granularity, seed=seed)
    if method == "zeta2":
        meta.update(curvature=curvature, damping=damping, damping_mode=damping_mode)
        if curvature == "exact":
            meta.update(lam=list(lam.values()), **report)
        else:
            meta.update(fisher=fisher, lam={f"{i}.{m}": v for (i, m), v in lam.items()})
    if granularity == "block":
        names = tuple(layer.name for layer in found)
        values = np.array([sum(v for (i, _), v in per_module.items() if i == layer.index) for layer in found])
    else:   # in model order (the tape meets modules in backward order)
        order = [(layer.index, m) for layer in found for m in layer.linears]
        names = tuple(f"{found[i].name}.{m}" for (i, m) in order)
        values = np.array([per_module[k] for k in order])
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        bad = int(np.flatnonzero(~np.isfinite(values) | (values < 0))[0])
        raise ValueError(f"gain of {names[bad]} is {values[bad]}: not a finite non-negative number; "
                         "raise the damping (e.g. damping=1.0) or use damping_mode='absolute'")
    label = "grad_norm" if method == "grad_norm" else f"zeta2[{curvature}]"
    return LayerScores(method=label, values=values, names=names, metadata=meta)


# ----------------------------------------------------------------------------- the Newton step

@dataclass(frozen=True)
class NewtonStep:
    """Layer k's damped Newton step Delta = -H~^-1 g: the quadratic model's prediction against the loss."""
    layer: int
    zeta2: float
    predicted: float        # decrease of the quadratic model, (scale - scale^2 / 2) zeta^2
    actual: float           # L(theta) - L(theta + Delta) measured on the same blocks
    loss_before: float
    loss_after: float
    scale: float            # the step taken was scale * Delta


def _check_layer(found, layer) -> None:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(found):
        raise ValueError(f"layer {layer!r} out of range: the model has layers 0..{len(found) - 1}")


def _check_scale(scale) -> None:
    if not (isinstance(scale, (int, float, np.integer, np.floating)) and np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")


def loss_after_step(model, blocks: Blocks, layer: int, steps: dict, *, scale: float = 1.0,
                    batch_size: int = 4) -> float:
    """Mean loss L(theta - scale * step) on `blocks`, with the step applied to layer `layer`'s linear
    modules alone (`steps` maps module name -> (d_out, d_in) tensor). The weights come back bit-identical."""
    from .evaluate import mean_loss
    found = find_layers(model)
    _check_layer(found, layer)
    target = found[layer]
    _check_scale(scale)
    for name, step in steps.items():     # every step checked before any weight moves
        if name not in target.linears:
            raise ValueError(f"{target.name} has no module {name!r}: it has {', '.join(target.linears)}")
        shape = tuple(weight_matrix(target.linears[name]).shape)
        if not isinstance(step, torch.Tensor) or tuple(step.shape) != shape:
            raise ValueError(f"the step for {target.name}.{name} must be a {shape} tensor (d_out, d_in), got "
                             f"{tuple(step.shape) if isinstance(step, torch.Tensor) else type(step).__name__}")
        if not bool(torch.isfinite(step).all()):
            raise ValueError(f"the step for {target.name}.{name} holds non-finite values: raise the damping")
    check_batch_size(batch_size)
    with weights_restored(list(target.linears.values())):
        with torch.no_grad():
            for name, step in steps.items():
                w = weight_matrix(target.linears[name])        # (d_out, d_in), a view of the parameter
                w -= scale * step.to(w.dtype)
        return mean_loss(model, blocks, batch_size=batch_size, progress=False)


def newton_step(model, blocks: Blocks, layer: int, *, curvature: str = "kfac", damping: float = 0.1,
                damping_mode: str = "relative", scale: float = 1.0, batch_size: int = BATCH_SIZE, seed: int = 0,
                progress: bool = False) -> NewtonStep:
    """Take Delta = -scale H~_kk^-1 g_k on layer k alone; compare the predicted and the actual decrease.

    Predicted (quadratic model): -(g^T Delta + Delta^T H~ Delta / 2) = (scale - scale^2 / 2) zeta^2,
    which is zeta^2 / 2 at scale 1. The model's weights are restored afterwards.
    """
    from .evaluate import mean_loss
    CurvatureOptions(curvature, damping, damping_mode).require_factored("newton_step")
    _check_layer(find_layers(model), layer)
    _check_scale(scale)
    steps, zeta2 = module_solves(model, blocks, curvature, damping=damping, damping_mode=damping_mode,
                                 batch_size=batch_size, seed=seed, progress=progress, only={layer},
                                 gradients=True).newton()
    before = mean_loss(model, blocks, batch_size=batch_size, progress=False)
    after = loss_after_step(model, blocks, layer, {m: step for (_, m), step in steps.items()}, scale=scale,
                            batch_size=batch_size)
    return NewtonStep(layer=layer, zeta2=zeta2, predicted=(scale - scale**2 / 2) * zeta2, actual=before - after,
                      loss_before=before, loss_after=after, scale=scale)
