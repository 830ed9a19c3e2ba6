"""Layer ablation: skip decoder blocks (a skipped block returns its input, the identity on the residual
stream), the cornerstone experiment (drop one layer at a time; arXiv 2409.14381) and layer Shapley values
with v(S) = -mean NLL of the model with only the layers in S active, on one fixed batch (common
random numbers for every coalition; Zhang, Dong, Kawaguchi, "Investigating Layer Importance in Large Language Models", arXiv 2409.14381).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import shapley
from .data import IGNORE, Blocks, check_blocks
from .evaluate import token_nll
from .models import block_input, model_facts
from .models import layers as find_layers
from .scores import LayerScores

__all__ = ["skipped", "coalition_losses", "layer_game", "layer_shapley", "cornerstone", "Cornerstone"]


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


_NONE = object()


def _layer_indices(skip, k: int) -> list[int]:
    """Sorted distinct layer indices, each a whole number in 0..k-1 (2.5, True and "3" are refused)."""
    if isinstance(skip, (int, np.integer)):
        skip = [skip]
    out = set()
    for i in skip:
        whole = isinstance(i, (int, np.integer)) or (isinstance(i, (float, np.floating)) and float(i).is_integer())
        if isinstance(i, (bool, np.bool_)) or not whole:
            raise ValueError(f"layer indices must be whole numbers, got {i!r}")
        out.add(int(i))
    bad = [i for i in sorted(out) if not 0 <= i < k]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{k - 1}")
    return sorted(out)


def _check_blocks(model, blocks, what: str):
    if not isinstance(blocks, Blocks) or len(blocks) == 0:
        raise ValueError(f"{what} needs at least one block: load_task(..., n_blocks=2)")
    check_blocks(model, blocks)      # context and vocabulary, before the first coalition runs
    if blocks.n_targets == 0:
        raise ValueError(f"every label of the {blocks.task!r} blocks is masked: {what} has no loss to measure")


@contextlib.contextmanager
def skipped(model: torch.nn.Module, skip: Iterable[int]) -> Iterator[None]:
    """Inside the block the layers in `skip` return their input unchanged (no compute); the model's
    own forward methods come back on exit, whatever happens inside."""
    found = find_layers(model)
    skip = _layer_indices(skip, len(found))
    patched = []          # (module, its own instance `forward` before, if it had one)
    try:
        for i in skip:
            module = found[i].module
            patched.append((module, module.__dict__.get("forward", _NONE)))
            module.forward = _identity        # an instance attribute shadows the class method
        yield model
    finally:
        for module, before in reversed(patched):
            if before is _NONE:
                module.__dict__.pop("forward", None)
            else:
                module.forward = before


@contextlib.contextmanager
def _row_masks(model, active: torch.Tensor):
    """Per batch row, layer k is active where active[row, k]; an inactive row keeps its input.
    Layers inactive in every row are skipped outright."""
    found = find_layers(model)
    handles = []
    try:
        for layer in found:
            on = active[:, layer.index]
            if on.any() and not on.all():       # layers off in every row are skipped outright below
                def hook(module, args, kwargs, output, on=on):
                    x = block_input(args, kwargs)
                    return torch.where(on[:, None, None].to(output.device), output, x)
                handles.append(layer.module.register_forward_hook(hook, with_kwargs=True))
        with skipped(model, [layer.index for layer in found if not active[:, layer.index].any()]):
            yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def coalition_losses(model: torch.nn.Module, blocks: Blocks, coalitions: np.ndarray, *, max_rows: int = 8) -> np.ndarray:
    """Mean next-token NLL over `blocks` of the model with only each coalition's layers active.
    coalitions: boolean (m, K). Coalitions are batched: each forward holds up to `max_rows` rows
    (coalition x block)."""
    _check_blocks(model, blocks, "coalition_losses")
    k = len(find_layers(model))
    raw = np.asarray(coalitions)
    if raw.ndim != 2 or raw.shape[1] != k or raw.shape[0] == 0:
        raise ValueError(f"coalitions must be a non-empty boolean (m, {k}) array (one column per layer), "
                         f"got shape {raw.shape}")
    if not (isinstance(max_rows, (int, np.integer)) and max_rows >= 1):
        raise ValueError(f"max_rows must be a whole number >= 1, got {max_rows!r}")
    coalitions = torch.as_tensor(raw.astype(bool))   # cpu on purpose: rows are sliced here, moved in _row_masks
    device = next(model.parameters()).device
    n_blocks = len(blocks)
    ids, mask, labels = blocks.input_ids.to(device), blocks.attention_mask.to(device), blocks.labels.to(device)
    per_chunk = max(1, max_rows // n_blocks)
    out = []
    for start in range(0, len(coalitions), per_chunk):
        chunk = coalitions[start:start + per_chunk]
        rows = chunk.repeat_interleave(n_blocks, dim=0)       # coalition-major, blocks within
        reps = len(chunk)
        with _row_masks(model, rows):
            logits = model(input_ids=ids.repeat(reps, 1), attention_mask=mask.repeat(reps, 1), use_cache=False).logits
        target = labels.repeat(reps, 1)[:, 1:]
        nll = token_nll(logits[:, :-1], target)
        per_coalition = nll.reshape(reps, -1).sum(1) / (target != IGNORE).reshape(reps, -1).sum(1)
        out.extend(per_coalition.tolist())
    return np.array(out)


def layer_game(model: torch.nn.Module, blocks: Blocks, players: Sequence[int], *, cap: bool = True, max_rows: int = 8,
               on_batch: Callable[[int], object] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The value function v(S) = -min(NLL(S), log V) over boolean (m, len(players)) coalitions: the
    layers in `players` play, every other layer stays active. For `shapley.estimate`."""
    found = find_layers(model)
    players = list(players)
    if len(set(_layer_indices(players, len(found)))) != len(players):
        raise ValueError(f"players must be distinct layer indices, got {players}")
    players = [int(p) for p in players]
    _check_blocks(model, blocks, "layer_game")
    chance = float(np.log(model.get_output_embeddings().weight.shape[0]))

    def value(coalitions):
        full = np.ones((len(coalitions), len(found)), bool)
        full[:, players] = coalitions
        if on_batch is not None:
            on_batch(len(coalitions))
        losses = coalition_losses(model, blocks, full, max_rows=max_rows)
        return -np.minimum(losses, chance) if cap else -losses
    return value


def layer_shapley(model: torch.nn.Module, blocks: Blocks, *, method: str = "antithetic", budget: int = 600,
                  seed: int = 0, players: Sequence[int] | None = None, max_rows: int = 8, cap: bool = True,
                  progress: bool = True) -> tuple[shapley.ShapleyEstimate, LayerScores]:
    """Shapley value of each layer for v(S) = -min(mean NLL, log V) on `blocks` with only the layers in
    S active.

    cap: a model worse than a uniform guess over the V tokens is worth no less than that guess. A
    heavily ablated LM reaches losses of ~100 nats, and without the cap those few coalitions dominate
    every marginal (and the sampling variance). players: the layer indices that play (default all);
    the others stay active throughout. budget: the distinct coalitions a sampling method may evaluate, a
    whole number >= K + 1 for K players (one permutation's worth; `shapley.check_budget`).
    Returns the estimate and LayerScores of phi (negative phi are kept in `values`; q clips them).
    """
    found = find_layers(model)
    players = list(range(len(found))) if players is None else list(players)
    shapley.check_budget(budget, len(players), method)       # before the bar, whose total it sets
    bar = tqdm(total=budget if method != "exact" else 2 ** len(players), desc=f"Shapley ({method})",
               unit="coalition", disable=not progress, leave=False)
    value = layer_game(model, blocks, players, cap=cap, max_rows=max_rows, on_batch=lambda m: bar.update(m))
    est = shapley.estimate(value, len(players), method=method, budget=budget, seed=seed)
    bar.close()
    names = tuple(found[p].name for p in players)
    meta = dict(task=blocks.task, blocks=len(blocks), tokens=blocks.n_targets, method=method, cap=cap,
                evaluations=est.evaluations, stderr=est.stderr.tolist(), v_full=est.v_full, v_empty=est.v_empty,
                model=model_facts(model).name)
    return est, LayerScores(method=f"shapley[{method}]", values=est.values, names=names, metadata=meta)


@dataclass(frozen=True)
class Cornerstone:
    """Leave-one-out: loss with each layer dropped; cornerstones push the loss towards v(empty)."""
    full_loss: float
    dropped_loss: np.ndarray      # (K,) mean NLL with layer k skipped
    empty_loss: float             # every layer skipped: embed -> unembed
    chance_loss: float            # log(vocabulary size): a uniform guess
    names: tuple

    @property
    def drop(self) -> np.ndarray:
        """Delta_k = loss(N minus k) - loss(N): the leave-one-out cost of each layer."""
        return self.dropped_loss - self.full_loss

    def cornerstones(self, fraction: float = 0.5) -> list[int]:
        """Layers whose removal takes the loss at least `fraction` of the way from the full model to
        chance (a uniform guess over the vocabulary): the "collapse towards random guessing" of arXiv 2409.14381."""
        span = self.chance_loss - self.full_loss
        if span <= 0:       # the model is no better than chance (a random model): nothing is a cornerstone
            return []
        return [int(i) for i in np.flatnonzero(self.drop >= fraction * span)]

    def scores(self) -> LayerScores:
        return LayerScores(method="leave_one_out", values=self.drop, names=self.names,
                           metadata=dict(full_loss=self.full_loss, empty_loss=self.empty_loss, chance_loss=self.chance_loss))


def cornerstone(model: torch.nn.Module, blocks: Blocks, *, max_rows: int = 8) -> Cornerstone:
    """Drop one layer at a time (the cornerstone experiment of arXiv 2409.14381), plus the full and empty models."""
    _check_blocks(model, blocks, "cornerstone")
    k = len(find_layers(model))
    coalitions = np.vstack([np.ones(k, bool), ~np.eye(k, dtype=bool), np.zeros(k, bool)])
    losses = coalition_losses(model, blocks, coalitions, max_rows=max_rows)
    return Cornerstone(full_loss=float(losses[0]), dropped_loss=losses[1:-1], empty_loss=float(losses[-1]),
                       chance_loss=float(np.log(model.get_output_embeddings().weight.shape[0])),
                       names=tuple(layer.name for layer in find_layers(model)))
