"""Pruning a model: per-layer sparsities applied to every linear map of every decoder block, inside a
context manager that gives every weight back bit-identical on exit (on errors too).

Calibration is sequential, as in Wanda (arXiv 2306.11695, section 3) and SparseGPT (arXiv 2301.00774,
section 3): layer k's input statistics come from the already pruned layers below it, one layer at a time.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Blocks, check_batch_size, check_blocks
from ..models import layers as find_layers
from ..models import weight_matrix, weights_restored
from .maps import per_layer_sparsity
from .masks import PRUNE_METHODS, check_n_m, magnitude_mask, sparsegpt, wanda_mask

__all__ = ["PruneReport", "StopForward", "forward_until_stopped", "layer_sizes", "pruned", "weight_fingerprint"]


def layer_sizes(model) -> np.ndarray:
    """n_k: prunable weights per decoder layer (its linear maps), (K,) float."""
    return np.array([layer.n_params for layer in find_layers(model)], dtype=float)


@dataclass(frozen=True)
class PruneReport:
    """What was asked and what the weights really hold after masking (zeros counted per layer)."""
    method: str
    target: np.ndarray         # (K,) requested sparsity per layer
    achieved: np.ndarray       # (K,) fraction of zero weights per layer, counted after masking
    sizes: np.ndarray          # (K,) n_k

    @property
    def global_sparsity(self) -> float:
        """sum_k n_k achieved_k / sum_k n_k."""
        return float(self.sizes @ self.achieved / self.sizes.sum())


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layers it needs have run."""


def forward_until_stopped(model, blocks: Blocks, batch_size: int,
                          before_batch: Callable[[dict], None] | None = None) -> None:
    """Run the model over `blocks` with no gradients; a hook that raises `StopForward` ends a batch early (the
    layers after it are never computed). `before_batch(batch)` runs first, e.g. to note its token mask."""
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in blocks.batches(batch_size, device=device):
            if before_batch is not None:
                before_batch(batch)
            try:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            except StopForward:
                pass


def _layer_inputs(model, blocks: Blocks, batch_size: int):
    """(args, kwargs) of the first decoder block's call per batch: hidden states plus masks/positions."""
    first = find_layers(model)[0].module
    calls = []

    def catch(module, args, kwargs):
        calls.append((args, kwargs))
        raise StopForward
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        forward_until_stopped(model, blocks, batch_size)
    finally:
        handle.remove()
    return calls


def _with_hidden(args, kwargs, h):
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": h}
    return (h, *args[1:]), kwargs


def _input_statistics(layer, calls, masks, need_hessian: bool):
    """Per linear map of `layer`: sum_t a_t a_t^T (d_in, d_in), or only its diagonal (d_in,), over unpadded tokens."""
    stats, state = {}, {}

    def hook_for(name):
        def hook(module, inputs, output):
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[state["mask"]].float()   # (tokens, d_in)
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


def _out(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def _apply(model, blocks, per_layer, method, n_m, batch_size, progress) -> np.ndarray:
    """Prune layer by layer in place; returns the fraction of zeros per layer."""
    found = find_layers(model)
    calls, masks = [], []
    if method != "magnitude":
        calls = _layer_inputs(model, blocks, batch_size)
        masks = [b["attention_mask"].reshape(-1).bool()
                 for b in blocks.batches(batch_size, device=next(model.parameters()).device)]
    achieved = np.zeros(len(found))
    for layer in tqdm(found, desc=f"pruning ({method})", unit="layer", disable=not progress, leave=False):
        s = float(per_layer[layer.index])
        stats = _input_statistics(layer, calls, masks, method == "sparsegpt") if method != "magnitude" else {}
        zeros = 0
        for name, module in layer.linears.items():
            w = weight_matrix(module)
            if method == "magnitude":
                w[magnitude_mask(w, s, n_m=n_m)] = 0
            elif method == "wanda":
                w[wanda_mask(w, stats[name].sqrt(), s, n_m=n_m)] = 0
            else:
                new, mask = sparsegpt(w, stats[name], s, n_m=n_m)
                new[mask] = 0
                w.copy_(new.to(w.dtype))
            zeros += int((w == 0).sum())
        achieved[layer.index] = zeros / layer.n_params
        if calls:    # the next layer sees the outputs of this pruned one
            calls = [_with_hidden(args, kwargs, _out(layer.module(*args, **kwargs))) for args, kwargs in calls]
    return achieved


def weight_fingerprint(model) -> str:
    """A blake2b digest of the bytes of every parameter: equal digests before and after `pruned`, bit-identical
    weights."""
    digest = hashlib.blake2b(digest_size=16)
    for param in model.parameters():
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@contextlib.contextmanager
def pruned(model, sparsity, method: str = "wanda", *, blocks: Blocks | None = None,
           n_m: tuple[int, int] | None = None, batch_size: int = 4, progress: bool = True) -> Iterator[PruneReport]:
    """Inside the block the model is pruned; on exit (or any error, the pruning's own included) every weight
    comes back bit-identical.

    sparsity: one float or one value per layer (a `sparsity_map`). method: one of PRUNE_METHODS (wanda and
    sparsegpt need calibration `blocks`). n_m: e.g. (2, 4) for 2:4 sparsity, with 0 < N < M; it fixes every
    layer's sparsity at N/M, so `sparsity` must be N/M too.
    Yields a PruneReport with the zeros really counted per layer.
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}: use one of {', '.join(PRUNE_METHODS)}")
    if method != "magnitude" and blocks is None:
        raise ValueError(f"{method} needs calibration blocks: pruned(model, s, {method!r}, blocks=load_task(...))")
    found = find_layers(model)
    per_layer = per_layer_sparsity(sparsity, len(found))
    batch_size = check_batch_size(batch_size)
    if blocks is not None and method != "magnitude":
        if not isinstance(blocks, Blocks) or len(blocks) == 0:
            raise ValueError("calibration blocks must be non-empty Blocks: blocks=load_task(..., n_blocks=8)")
        check_blocks(model, blocks)
    n_m = _check_n_m(n_m, found, per_layer)
    # every check above runs before the first weight changes; from here on weights_restored copies them back
    with weights_restored([m for layer in found for m in layer.linears.values()]):
        achieved = _apply(model, blocks, per_layer, method, n_m, batch_size, progress)
        yield PruneReport(method=method, target=per_layer, achieved=achieved, sizes=layer_sizes(model))


def _check_n_m(n_m, found, per_layer):
    if check_n_m(n_m) is None:
        return None
    n, m = n_m
    for layer in found:
        for name, module in layer.linears.items():
            cols = weight_matrix(module).shape[1]
            if cols % m:
                raise ValueError(f"N:M sparsity needs the input dimension of {layer.name}.{name} ({cols}) to be a "
                                 f"multiple of M = {m}")
    # the widths first: a pair that does not divide them must change anyway, and the sparsity follows the pair
    return check_n_m(n_m, per_layer)
