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

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import curvature as curv
from .data import Blocks, check_batch_size
from .models import layers as find_layers
from .models import weight_matrix, weights_restored
from .scores import LayerScores
from .tape import DiagonalFisher, EKFACCorrection, GradientSum, KFACFactors, all_reduce, run_tape

__all__ = ["score", "layer_gradients", "module_solves", "newton_step", "NewtonStep", "loss_after_step"]

METHODS = ("zeta2", "grad_norm")
FISHERS = ("sampled", "empirical")
GRANULARITIES = ("block", "module")
FACTORED = ("identity", "diag", "kfac", "ekfac")     # the curvatures with one solve object per module


def _check_options(blocks, damping, damping_mode, batch_size, seed=0, fisher="sampled"):
    """Everything a scoring pass takes, checked before the first forward pass."""
    if not isinstance(blocks, Blocks) or len(blocks) == 0:
        raise ValueError("no blocks: load some with layerq_nb.load_task(..., n_blocks=...)")
    if blocks.n_targets == 0:
        raise ValueError(f"every label of the {blocks.task!r} blocks is masked: there is no loss to differentiate")
    if isinstance(damping, bool) or not isinstance(damping, (int, float, np.integer, np.floating)) \
            or not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0 (e.g. 0.1, relative to the mean eigenvalue), "
                         f"got {damping!r}")
    if damping_mode not in curv.DAMPING_MODES:
        raise ValueError(f"damping_mode must be one of {', '.join(curv.DAMPING_MODES)}, got {damping_mode!r}")
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be 'sampled' (true Fisher) or 'empirical' (data labels), got {fisher!r}")
    check_batch_size(batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a whole number, got {seed!r}")

# Blocks per forward/backward pass of the scoring passes. On CPU one block per pass costs no time
# (SmolLM2 EK-FAC scoring of 2,048 tokens: 67 s at 1, 71 s at 4) and keeps the peak memory under
# 4 GiB (3.6 GiB at 1, 6.2 GiB at 4: benchmarks/bench_memory.py); on a GPU pass a larger batch_size.
BATCH_SIZE = 1


def _shard(blocks: Blocks):
    """This process's blocks and their global indices (all of them outside torch.distributed)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        ids = list(range(rank, len(blocks), world))
        return blocks.subset(ids), ids
    return blocks, list(range(len(blocks)))


def _param_shaped(module, matrix):
    """A (d_out, d_in) statistic in the parameter's own layout (transposed for GPT-2's Conv1D)."""
    return matrix if weight_matrix(module) is module.weight else matrix.T


def layer_gradients(model, blocks: Blocks, batch_size: int = BATCH_SIZE, progress: bool = True) -> dict:
    """g per (layer, module): the weight gradient of the mean loss over all of the blocks' targets."""
    shard, ids = _shard(blocks)
    grads = GradientSum()
    run_tape(model, shard, [grads], labels="data", reduction="mean", batch_size=batch_size,
             n_targets=blocks.n_targets, block_ids=ids, progress=progress, desc="gradients")
    all_reduce([grads])
    return grads.state


def module_solves(model, blocks: Blocks, curvature: str = "kfac", damping: float = 0.1,
                  damping_mode: str = "relative", fisher: str = "sampled", batch_size: int = BATCH_SIZE, seed: int = 0,
                  progress: bool = True, only=None, gradients: bool = False):
    """(H + lam I)^-1 per (layer, module) for the factored curvatures: identity, diag, kfac, ekfac.
    `only`: layer indices to build (default all). `gradients=True` also returns the layer gradients,
    taken from the same forward passes as the first statistics pass: (solves, grads)."""
    _check_options(blocks, damping, damping_mode, batch_size, seed, fisher)
    if curvature not in FACTORED:
        raise ValueError(f"unknown curvature {curvature!r} here: module_solves builds {', '.join(FACTORED)}")
    labels = "sampled" if fisher == "sampled" else "data"
    keys = [(layer.index, name) for layer in find_layers(model) for name in layer.linears
            if only is None or layer.index in only]
    if curvature == "identity":   # H = I: the mean eigenvalue is 1, so both damping modes give lam = damping
        zero = torch.zeros((), device=next(model.parameters()).device)
        solves = {k: curv.ModuleSolve(eig=zero, lam=float(damping)) for k in keys}
        return (solves, layer_gradients(model, blocks, batch_size, progress)) if gradients else solves
    if curvature not in ("diag", "kfac", "ekfac"):
        raise ValueError(f"unknown curvature {curvature!r}: use one of {', '.join(curv.CURVATURES)}")
    shard, ids = _shard(blocks)
    n = blocks.n_targets
    tape = dict(labels=labels, reduction="sum", batch_size=batch_size, seed=seed, block_ids=ids,
                n_targets=n, progress=progress, only=only)
    grads = GradientSum()
    first = DiagonalFisher() if curvature == "diag" else KFACFactors()
    run_tape(model, shard, [first], desc="gradients + " + ("diag Fisher" if curvature == "diag" else "K-FAC factors"),
             then=[([grads], "data", "mean")] if gradients else None, **tape)
    all_reduce([first, grads])

    def done(solves):
        return (solves, grads.state) if gradients else solves
    if curvature == "diag":
        out = {}
        for k in keys:
            d = first.state[k] / n
            out[k] = curv.ModuleSolve(eig=d, lam=curv.damping_level(damping, damping_mode, float(d.mean())))
        return done(out)
    factors = first
    tokens = factors.tokens
    eigen, input_eigen = {}, {}
    # memory: each factor is dropped once decomposed, and EK-FAC never forms K-FAC's eigenvalue grid
    # (measured on SmolLM2: 1.1 GB of factors and 0.4 GB of grid, against a 4 GiB budget)
    for k in keys:
        owner = factors.a_owner[k]          # q/k/v (and gate/up) share one A: decompose it once
        if owner not in input_eigen:
            input_eigen[owner] = curv.symmetric_eigen(factors.state.pop(("A", *owner)) / tokens)
        alpha, q_a = input_eigen[owner]
        gamma, q_g = curv.symmetric_eigen(factors.state.pop(("G", *k)) / n)
        eigen[k] = (torch.outer(gamma, alpha) if curvature == "kfac" else None, q_a, q_g)
    if curvature == "ekfac":
        corr = EKFACCorrection({k: (q_a, q_g) for k, (_, q_a, q_g) in eigen.items()})
        run_tape(model, shard, [corr], desc="EK-FAC corrections", **tape)
        all_reduce([corr])
        eigen = {k: (corr.state[k].div_(n), q_a, q_g) for k, (_, q_a, q_g) in eigen.items()}
    return done({k: curv.ModuleSolve(eig=e, lam=curv.damping_level(damping, damping_mode, float(e.mean())),
                                     q_a=q_a, q_g=q_g) for k, (e, q_a, q_g) in eigen.items()})


def score(model, blocks: Blocks, method: str = "zeta2", curvature: str = "kfac", damping: float = 0.1,
          damping_mode: str = "relative", granularity: str = "block", fisher: str = "sampled",
          batch_size: int = BATCH_SIZE, seed: int = 0, progress: bool = True, max_dense: int = 1024) -> LayerScores:
    """Layer scores: zeta_k^2 = sum over the layer's modules of g^T (H + lam I)^-1 g, or ||g_k||^2.

    curvature: identity | diag | kfac | ekfac (block diagonal over a layer's modules) or exact (the
    whole layer's Gauss-Newton block, dense when D <= max_dense, else CG). granularity: "block" (one
    score per decoder layer) or "module" (one per linear module).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if curvature not in curv.CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}: use one of {', '.join(curv.CURVATURES)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be 'block' or 'module', got {granularity!r}")
    if curvature == "exact" and method == "zeta2" and granularity != "block":
        raise ValueError("curvature='exact' scores whole layers: use granularity='block'")
    _check_options(blocks, damping, damping_mode, batch_size, seed, fisher)
    if isinstance(max_dense, bool) or not isinstance(max_dense, (int, np.integer)) or max_dense < 0:
        raise ValueError(f"max_dense must be a whole number >= 0, got {max_dense!r}")
    found = find_layers(model)
    factored = method == "zeta2" and curvature != "exact"
    if factored:    # gradients ride on the statistics pass (one forward, two backwards)
        solves, grads = module_solves(model, blocks, curvature, damping, damping_mode, fisher, batch_size, seed,
                                      progress, gradients=True)
    else:
        grads = layer_gradients(model, blocks, batch_size=batch_size, progress=progress)
    meta = dict(task=blocks.task, split=blocks.split, blocks=len(blocks), tokens=blocks.n_targets,
                model=getattr(model, "layerq_name", None), granularity=granularity, seed=seed)
    per_module: dict = {}
    if method == "grad_norm":
        per_module = {k: float((g.double() ** 2).sum()) for k, g in grads.items()}
    elif curvature == "exact":
        if granularity != "block":
            raise ValueError("curvature='exact' scores whole layers: use granularity='block'")
        meta.update(curvature="exact", damping=damping, damping_mode=damping_mode, lam=[], cg_iterations=[],
                    cg_residual=[])
        for layer in tqdm(found, desc="exact GGN", unit="layer", disable=not progress, leave=False):
            g = {f"{layer.name}.{m}.weight": _param_shaped(mod, grads[(layer.index, m)]) for m, mod in layer.linears.items()}
            ex = curv.exact_layer(model, blocks, layer.index, g, damping=damping, damping_mode=damping_mode,
                                  max_dense=max_dense, seed=seed, batch_size=batch_size)
            per_module[(layer.index, "*")] = ex.zeta2
            meta["lam"].append(ex.lam)
            meta["cg_iterations"].append(ex.cg_iterations)
            meta["cg_residual"].append(ex.cg_residual)
    else:
        per_module = {k: float((grads[k].double() * solves[k].solve(grads[k]).double()).sum()) for k in grads}
        meta.update(curvature=curvature, damping=damping, damping_mode=damping_mode, fisher=fisher,
                    lam={f"{i}.{m}": s.lam for (i, m), s in solves.items()})
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


def loss_after_step(model, blocks: Blocks, layer: int, steps: dict, scale: float = 1.0, batch_size: int = 4) -> float:
    """Mean loss L(theta - scale * step) on `blocks`, with the step applied to layer `layer`'s linear
    modules alone (`steps` maps module name -> (d_out, d_in) tensor). The weights come back bit-identical."""
    from .evaluate import mean_loss
    found = find_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(found):
        raise ValueError(f"layer {layer!r} out of range: the model has layers 0..{len(found) - 1}")
    target = found[layer]
    if not (isinstance(scale, (int, float, np.integer, np.floating)) and np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
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


def newton_step(model, blocks: Blocks, layer: int, curvature: str = "kfac", damping: float = 0.1,
                damping_mode: str = "relative", scale: float = 1.0, batch_size: int = BATCH_SIZE, seed: int = 0,
                progress: bool = False) -> NewtonStep:
    """Take Delta = -scale H~_kk^-1 g_k on layer k alone; compare the predicted and the actual decrease.

    Predicted (quadratic model): -(g^T Delta + Delta^T H~ Delta / 2) = (scale - scale^2 / 2) zeta^2,
    which is zeta^2 / 2 at scale 1. The model's weights are restored afterwards.
    """
    from .evaluate import mean_loss
    if curvature not in FACTORED:
        raise ValueError(f"newton_step uses the factored curvatures: {', '.join(FACTORED)}; got {curvature!r}")
    found = find_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(found):
        raise ValueError(f"layer {layer!r} out of range: the model has layers 0..{len(found) - 1}")
    if not (isinstance(scale, (int, float, np.integer, np.floating)) and np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    _check_options(blocks, damping, damping_mode, batch_size, seed)
    solves, grads = module_solves(model, blocks, curvature, damping, damping_mode, "sampled", batch_size, seed,
                                  progress, only={layer}, gradients=True)
    target = found[layer]
    keys = [(layer, m) for m in target.linears]
    steps = {k: solves[k].solve(grads[k]) for k in keys}
    zeta2 = float(sum((grads[k].double() * steps[k].double()).sum() for k in keys))
    before = mean_loss(model, blocks, batch_size=batch_size, progress=False)
    after = loss_after_step(model, blocks, layer, {m: steps[(layer, m)] for m in target.linears}, scale, batch_size)
    return NewtonStep(layer=layer, zeta2=zeta2, predicted=(scale - scale**2 / 2) * zeta2, actual=before - after,
                      loss_before=before, loss_after=after, scale=scale)
