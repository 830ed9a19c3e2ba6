"""Unstructured pruning: a per-layer sparsity map, then a mask per linear map
(Wanda: Sun et al., arXiv 2306.11695; SparseGPT: Frantar & Alistarh, arXiv 2301.00774; OWL: Yin et al.,
arXiv 2310.05175; AlphaPruning: Lu et al., arXiv 2410.10912).

Maps (every one keeps the global sparsity exactly, weighted by layer sizes n_k):
    uniform        s_k = S
    owl            outlier ratio LOD_k min-max scaled into [0, 2 lam], centred: s_k = S - (D_k - mean_n D)
                   (more outliers, less pruning; Yin et al. 2024, lam = 0.08)
    alphapruning   metric m_k scaled linearly into [1 - eps, 1 + eps], times eta so that sum n_k s_k = S sum n_k
                   (higher alpha, more pruning; Lu et al. 2024, eps = 0.3)
    layerif        |S(k)| min-max normalised, Savitzky-Golay smoothed (window 7, order 3; the window
                   shrinks for few layers), then the alphapruning map (LayerIF section 3.4)
    mdl            MDL program B over q (arXiv 2603.00910): min sum_k q_k phi(s_k) s.t. the global sparsity,
                   s_k within S -/+ band (the seed-003 code caps s_k near S as well)
    reverse=True   s_k -> 2S - s_k for any map (a good map's reverse must hurt).
Masks: magnitude (whole matrix), Wanda (|W_ij| ||X_j||, compared within each output row; Sun et al.
2023) and SparseGPT (OBS with lazy column blocks of 128, damping 1% of mean diag H; Frantar &
Alistarh 2023), optionally N:M. Calibration is sequential: layer k's inputs come from the already
pruned layers below it, one layer at a time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import mdl
from .data import Blocks, check_batch_size
from .models import layers as find_layers
from .models import weight_matrix, weights_restored
from .scores import LayerScores

__all__ = ["MAPS", "METHODS", "SPECS", "sparsity_map", "magnitude_mask", "wanda_mask", "sparsegpt", "pruned",
           "weight_fingerprint", "PruneReport", "layer_sizes", "map_functions", "prune_sweep", "plot_sweep"]

MAPS = ("uniform", "owl", "alphapruning", "layerif", "mdl")
MAX_SPARSITY = 0.99      # the per-layer ceiling of every map (a layer needs some weights left)
METHODS = ("magnitude", "wanda", "sparsegpt")


def layer_sizes(model) -> np.ndarray:
    """Prunable weights per decoder layer (its linear maps)."""
    return np.array([layer.n_params for layer in find_layers(model)], dtype=float)


# ----------------------------------------------------------------------------- maps (numpy only)

def _fraction(sparsity) -> float:
    """One sparsity as a float in [0, 1), or a ValueError that names the value (nan and "0.5" included)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if isinstance(sparsity, (bool, np.bool_)) or not 0 <= value < 1:    # nan fails both comparisons
        raise ValueError(f"sparsity must be a number in [0, 1) (a fraction of weights set to zero), got {sparsity!r}")
    return value


def _values(scores) -> np.ndarray:
    return np.asarray(scores.values if isinstance(scores, LayerScores) else scores, dtype=float)


def _min_max(x):
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def _linear_map(metric, sparsity, sizes, epsilon):
    r = _min_max(metric) * 2 * epsilon + (1 - epsilon)
    return r * sparsity * sizes.sum() / (sizes @ r)


def sparsity_map(kind: str, sparsity: float, sizes, scores=None, *, epsilon: float = 0.3, lam: float = 0.08,
                 band: float | None = 0.1, penalty: str = "log", window: int = 7, reverse: bool = False,
                 upper: float = MAX_SPARSITY) -> np.ndarray:
    """Per-layer sparsity s_k with sum_k n_k s_k = sparsity * sum_k n_k (see the module docstring).

    scores: per-layer values (LayerScores or array): the OWL outlier ratio for "owl", alpha for
    "alphapruning", LayerIF S(k) for "layerif", any gain (zeta^2, LayerIF, Shapley) for "mdl".
    """
    if kind not in MAPS:
        raise ValueError(f"unknown sparsity map {kind!r}: use one of {', '.join(MAPS)}")
    sizes = np.asarray(sizes, dtype=float)
    sparsity = _fraction(sparsity)
    if band is not None and not (np.isfinite(band) and band >= 0):
        raise ValueError(f"band must be a finite number >= 0 (or None), got {band!r}")
    for name, value in (("epsilon", epsilon), ("lam", lam)):
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
        d = _min_max(values) * 2 * lam
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
        s = mdl.prune(np.clip(values, 0, None), sparsity, sizes=sizes, lower=lower, upper=top, penalty=penalty).x
    if reverse:
        s = 2 * sparsity - s
    if np.any(s < 0) or np.any(s > upper):
        raise ValueError(f"the {kind!r} map at sparsity {sparsity:g} asks for per-layer sparsity in "
                         f"[{s.min():.3f}, {s.max():.3f}], outside [0, {upper}]: lower epsilon / lam / band")
    return s


# ----------------------------------------------------------------------------- masks on one matrix

def _lowest(metric: torch.Tensor, count: int, dim=None) -> torch.Tensor:
    """Boolean mask of the `count` smallest entries (per row when dim=1): exactly `count` each."""
    mask = torch.zeros_like(metric, dtype=torch.bool)
    if count <= 0:
        return mask
    if dim is None:
        mask.view(-1)[torch.argsort(metric.reshape(-1))[:count]] = True
    elif count >= metric.shape[1]:
        mask[:] = True
    else:
        # the count-th smallest value per row (a selection: ~2.5x faster than a sort on CPU) marks the same
        # set as the sort wherever that set is unique; rows where it does not mark exactly `count` (a tie at
        # the threshold, a NaN) take the sort, so the mask is the sort's in every case
        mask = metric <= torch.kthvalue(metric, count, dim=1, keepdim=True).values
        odd = torch.count_nonzero(mask, dim=1) != count      # (a bool sum(1) is ~100x slower)
        if bool(odd.any()):
            rows = torch.zeros_like(metric[odd], dtype=torch.bool)
            mask[odd] = rows.scatter_(1, torch.argsort(metric[odd], dim=1)[:, :count], True)
    return mask


def _n_m(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Within each group of m consecutive inputs of a row, the n smallest."""
    rows, cols = metric.shape
    if cols % m:
        raise ValueError(f"N:M sparsity needs the input dimension ({cols}) to be a multiple of M = {m}")
    groups = metric.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, sparsity: float, n_m=None) -> torch.Tensor:
    """True where pruned: the floor(s * numel) smallest |W_ij| of the whole matrix (or N:M per row)."""
    metric = weight.detach().float().abs()
    return _n_m(metric, *n_m) if n_m else _lowest(metric, int(sparsity * metric.numel()))


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float, n_m=None) -> torch.Tensor:
    """True where pruned: per output row, the floor(s * d_in) smallest |W_ij| ||X_j||_2."""
    metric = weight.detach().float().abs() * input_norm.float()[None, :]
    return _n_m(metric, *n_m) if n_m else _lowest(metric, int(sparsity * metric.shape[1]), dim=1)


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n_m=None, block: int = 128,
              damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's OBS pruning of one (d_out, d_in) matrix with H = sum_t a_t a_t^T of its inputs.

    Columns are visited left to right in lazy blocks; the mask of each block keeps the largest
    w^2 / [H^-1]_jj^2 (exactly floor(s * block entries) pruned); each pruned column's error is
    spread over the later columns, w -= (w_j / [H^-1]_jj) [H^-1]_j,: (upper Cholesky form).
    Returns (updated weight, mask of pruned entries)."""
    W = weight.detach().clone().float()
    H = hessian.detach().clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damping * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, W.shape[1], block):
        i2 = min(i1 + block, W.shape[1])
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        if n_m:       # N:M picks each group's mask from the weights as updated so far: column by column
            err1, mask1 = _obs_columns(W1, Hinv1, n_m)
        else:
            score = W1 ** 2 / torch.diag(Hinv1)[None, :] ** 2
            mask1 = _lowest(score, int(sparsity * score.numel()))
            err1 = _obs_block(W1, Hinv1, mask1)
            W1 = torch.where(mask1, torch.zeros_like(W1), W1 - err1 @ Hinv1)
        W[:, i1:i2] = W1
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]
        mask[:, i1:i2] = mask1
    return W, mask


def _obs_block(W1, U, mask1):
    """The column-by-column OBS errors of one block at once. Visiting columns in order, pruned
    column i gets err_i = w_i(current) / U_ii with w(current) = w - sum_{j<i} err_j U_j,: , kept ones
    err_i = 0; so per row, err M = w~ with M = U whose kept columns are replaced by unit vectors and
    w~ = w on pruned columns, 0 elsewhere: one batched triangular solve instead of a Python loop."""
    eye = torch.eye(U.shape[0], dtype=U.dtype, device=U.device)
    M = torch.where(mask1[:, None, :], U[None], eye[None])                  # (rows, b, b), upper
    rhs = torch.where(mask1, W1, torch.zeros_like(W1))
    return torch.linalg.solve_triangular(M.transpose(1, 2), rhs[:, :, None], upper=False)[:, :, 0]


def _obs_columns(W1, U, n_m):
    """SparseGPT's column loop with N:M masks chosen group by group (W1 is updated in place)."""
    n, m = n_m
    err1, mask1 = torch.zeros_like(W1), torch.zeros_like(W1, dtype=torch.bool)
    for i in range(W1.shape[1]):
        if i % m == 0:
            score = W1[:, i:i + m] ** 2 / torch.diag(U)[i:i + m][None, :] ** 2
            mask1[:, i:i + m] = _lowest(score, n, dim=1)
        w = W1[:, i]
        q = torch.where(mask1[:, i], torch.zeros_like(w), w)
        err = (w - q) / U[i, i]
        W1[:, i:] -= err[:, None] * U[i, i:][None, :]
        W1[:, i] = q
        err1[:, i] = err
    return err1, mask1


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class PruneReport:
    """What was asked and what the weights really hold after masking (zeros counted per layer)."""
    method: str
    target: np.ndarray         # requested sparsity per layer
    achieved: np.ndarray       # fraction of zero weights per layer, counted after masking
    sizes: np.ndarray

    @property
    def global_sparsity(self) -> float:
        return float(self.sizes @ self.achieved / self.sizes.sum())


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layers it needs have run."""


def forward_until_stopped(model, blocks: Blocks, batch_size: int, before_batch=None) -> None:
    """Run the model over `blocks` with no gradients; a hook that raises `StopForward` ends a batch early (the
    layers after it are never computed). `before_batch(batch)` runs first, e.g. to note its token mask."""
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in blocks.batches(batch_size):
            if before_batch is not None:
                before_batch(batch)
            try:
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                      use_cache=False)
            except StopForward:
                pass


def _layer_inputs(model, blocks: Blocks, batch_size: int):
    """(args, kwargs) of the first decoder block's call per batch: hidden states plus masks/positions."""
    first = find_layers(model)[0].module
    calls = []

    def catch(module, args, kwargs):
        calls.append((args, kwargs))
        raise StopForward
    handle = None
    try:
        handle = first.register_forward_pre_hook(catch, with_kwargs=True)
        forward_until_stopped(model, blocks, batch_size)
    finally:
        if handle is not None:
            handle.remove()
    return calls


def _with_hidden(args, kwargs, h):
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": h}
    return (h, *args[1:]), kwargs


def _input_statistics(layer, calls, masks, need_hessian: bool):
    """Per linear map of `layer`: sum_t a_t a_t^T (or only its diagonal) over unpadded tokens."""
    stats, state = {}, {}

    def hook_for(name):
        def hook(module, inputs, output):
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[state["mask"]].float()
            stats[name] = stats.get(name, 0) + (a.T @ a if need_hessian else (a * a).sum(0))
        return hook
    handles = []
    try:
        for n, m in layer.linears.items():
            handles.append(m.register_forward_hook(hook_for(n)))
        for (args, kwargs), mask in zip(calls, masks):
            state["mask"] = mask
            layer.module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return stats


@torch.no_grad()
def _apply(model, blocks, per_layer, method, n_m, batch_size, progress):
    found = find_layers(model)
    calls, masks = [], []
    if method != "magnitude":
        calls = _layer_inputs(model, blocks, batch_size)
        masks = [b["attention_mask"].reshape(-1).bool().to(next(model.parameters()).device)
                 for b in blocks.batches(batch_size)]
    achieved = np.zeros(len(found))
    for layer in tqdm(found, desc=f"pruning ({method})", unit="layer", disable=not progress, leave=False):
        s = float(per_layer[layer.index])
        stats = _input_statistics(layer, calls, masks, method == "sparsegpt") if method != "magnitude" else {}
        zeros = 0
        for name, module in layer.linears.items():
            w = weight_matrix(module)
            if method == "magnitude":
                w[magnitude_mask(w, s, n_m)] = 0
            elif method == "wanda":
                w[wanda_mask(w, stats[name].sqrt(), s, n_m)] = 0
            else:
                new, mask = sparsegpt(w, stats[name], s, n_m)
                new[mask] = 0
                w.copy_(new.to(w.dtype))
            zeros += int((w == 0).sum())
        achieved[layer.index] = zeros / layer.n_params
        if calls:    # the next layer sees the outputs of this pruned one
            calls = [_with_hidden(args, kwargs, _out(layer.module(*args, **kwargs))) for args, kwargs in calls]
    return achieved


def _out(output):
    return output[0] if isinstance(output, tuple) else output


def weight_fingerprint(model) -> str:
    """A blake2b digest of the bytes of every parameter: equal digests before and after `pruned`, bit-identical
    weights."""
    import hashlib
    digest = hashlib.blake2b(digest_size=16)
    for param in model.parameters():
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@contextlib.contextmanager
def pruned(model, sparsity, method: str = "wanda", blocks: Blocks | None = None, n_m=None, batch_size: int = 4,
           progress: bool = True):
    """Inside the block the model is pruned; on exit (or any error) every weight comes back bit-identical.

    sparsity: one float or one value per layer (a `sparsity_map`). method: magnitude, wanda or
    sparsegpt (the last two need calibration `blocks`). n_m: e.g. (2, 4) for 2:4 sparsity.
    Yields a PruneReport with the zeros really counted per layer.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}: use one of {', '.join(METHODS)}")
    if method != "magnitude" and blocks is None:
        raise ValueError(f"{method} needs calibration blocks: pruned(model, s, {method!r}, blocks=load_task(...))")
    found = find_layers(model)
    per_layer = _per_layer_sparsity(sparsity, len(found))
    batch_size = check_batch_size(batch_size)
    if blocks is not None and method != "magnitude":
        if not isinstance(blocks, Blocks) or len(blocks) == 0:
            raise ValueError("calibration blocks must be non-empty Blocks: blocks=load_task(..., n_blocks=8)")
    _check_n_m(n_m, found)
    with weights_restored([m for layer in found for m in layer.linears.values()]):
        achieved = _apply(model, blocks, per_layer, method, n_m, batch_size, progress)
        yield PruneReport(method=method, target=per_layer, achieved=achieved, sizes=layer_sizes(model))


def _per_layer_sparsity(sparsity, k: int) -> np.ndarray:
    try:
        arr = np.asarray(sparsity, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1) or one per layer, got {sparsity!r}") from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size != k):
        raise ValueError(f"sparsity must be one number or one per layer ({k}), got shape {arr.shape}")
    per_layer = np.broadcast_to(arr, (k,)).copy()
    bad = ~((per_layer >= 0) & (per_layer < 1))         # nan is bad too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"per-layer sparsity must lie in [0, 1), got {per_layer[i]:g} for layer {i}"
                         + (" (not a number: check the sparsity map)" if np.isnan(per_layer[i]) else ""))
    return per_layer


def _check_n_m(n_m, found):
    if n_m is None:
        return
    try:
        n, m = (int(v) for v in n_m)
        ok = all(float(v) == int(v) for v in n_m) and 0 <= n <= m and m >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"n_m must be a pair (N, M) of whole numbers with 0 <= N <= M, e.g. (2, 4); got {n_m!r}")
    for layer in found:
        for name, module in layer.linears.items():
            cols = weight_matrix(module).shape[1]
            if cols % m:
                raise ValueError(f"N:M sparsity needs the input dimension of {layer.name}.{name} ({cols}) to be a "
                                 f"multiple of M = {m}")


# ----------------------------------------------------------------------------- maps from a model, sweeps

SPECS = ("uniform", "owl", "alphapruning", "layerif", "mdl-zeta2", "mdl-layerif")


def map_functions(model, calibration: Blocks, validation: Blocks | None = None, specs=SPECS, band: float | None = 0.1,
                  epsilon: float = 0.3, lam: float = 0.08, progress: bool = True) -> dict:
    """name -> (sparsity -> per-layer sparsity) for each spec, computing only the scores they need:
    OWL's outlier ratio and zeta^2 (K-FAC) on `calibration`, AlphaPruning's alpha from the weights,
    LayerIF (K-FAC, positive aggregation) of `calibration` on `validation`. A spec ending in
    "-reverse" mirrors its map."""
    from . import baselines
    from .influence import layer_influence
    from .scoring import score
    sizes, scores = layer_sizes(model), {}
    bases = {spec.removesuffix("-reverse") for spec in specs}
    unknown = bases - set(SPECS)
    if unknown:
        raise ValueError(f"unknown map {sorted(unknown)[0]!r}: use one of {', '.join(SPECS)} (or <map>-reverse)")
    if "owl" in bases:
        scores["owl"] = baselines.outlier_ratio(model, calibration)
    if "alphapruning" in bases:
        scores["alphapruning"] = baselines.heavy_tail_alpha(model)
    if "mdl-zeta2" in bases:
        scores["mdl-zeta2"] = score(model, calibration, curvature="kfac", progress=progress)
    if bases & {"layerif", "mdl-layerif"}:
        if validation is None:
            raise ValueError("LayerIF maps need validation blocks: map_functions(model, calibration, validation)")
        scores["layerif"] = scores["mdl-layerif"] = layer_influence(model, calibration, validation,
                                                                    progress=progress).scores("positive")

    def make(spec):
        base = spec.removesuffix("-reverse")
        kind = base.split("-")[0]
        return lambda s: sparsity_map(kind, s, sizes, scores.get(base), epsilon=epsilon, lam=lam, band=band,
                                      reverse=spec.endswith("-reverse"))
    return {spec: make(spec) for spec in specs}


def prune_sweep(model, calibration: Blocks, evaluation: Blocks, maps: dict, methods=METHODS,
                sparsities=(0.5, 0.6, 0.7), batch_size: int = 4, progress: bool = True) -> list[dict]:
    """Held-out perplexity for every method x map x sparsity (plus the dense model), as plain rows; a map
    that cannot reach a sparsity gives a row with perplexity NaN and its `error`."""
    from .evaluate import perplexity
    rows = [dict(method="dense", map="-", sparsity=0.0, achieved=0.0,
                 perplexity=perplexity(model, evaluation, batch_size, progress=False))]
    combos = [(m, name, s) for m in methods for name in maps for s in sparsities]
    for method, name, s in tqdm(combos, desc="prune sweep", unit="run", disable=not progress):
        try:
            per_layer = maps[name](s)
        except ValueError as err:      # e.g. a linear map that would need a layer above 99%: say so, go on
            rows.append(dict(method=method, map=name, sparsity=s, achieved=float("nan"), perplexity=float("nan"),
                             error=str(err)))
            continue
        with pruned(model, per_layer, method, blocks=calibration, batch_size=batch_size, progress=False) as report:
            ppl = perplexity(model, evaluation, batch_size, progress=False)
        rows.append(dict(method=method, map=name, sparsity=s, achieved=report.global_sparsity, perplexity=ppl,
                         per_layer=per_layer.tolist()))
    return rows


def plot_sweep(rows: list[dict], axes=None):
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
