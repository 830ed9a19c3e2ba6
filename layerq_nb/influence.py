"""LayerIF: layer-wise influence of each training block on the validation loss
(Askari, Gupta, Wang, Chhabra, Chen, "LayerIF: Estimating Layer Quality for Large Language Models using
Influence Functions", NeurIPS 2025, arXiv 2505.23811, sections 3.1-3.2).

    I_k(z_i) = - sum_j grad_k l(z^V_j)^T  H~_kk^-1  grad_k l(z_i)

l(z) is a block's mean next-token loss, grad_k the gradient w.r.t. layer k's weights (all its linear
maps, or the attention or MLP ones), H~_kk a damped curvature block of the scoring core fitted on
the training blocks. Sign (Koh & Liang): I > 0 means up-weighting z_i *raises* the validation loss
(harmful), I < 0 is beneficial. The layer score inverts the sign so that positive = beneficial, then
aggregates over training blocks: S(k) = sum_i max(-I_k(z_i), 0) ("positive", the paper's default),
sum_i -I_k(z_i) ("all"), or the top quartile of the beneficial values ("top25"). LayerIF reads a
high S(k) as a *less* trained layer.

Per-example influences never materialise per-example gradients: with v = H~^-1 sum_j grad l(z^V_j)
(one (d_out, d_in) matrix V per module), grad l(z_i)^T v = sum_{t in z_i} b_t^T V a_t, one extra
matmul per module during one more pass over the training blocks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from .curvature import CurvatureOptions, Passes, fit
from .data import Blocks
from .models import layers as find_layers
from .models import model_facts
from .scores import LayerScores
from .scoring import BATCH_SIZE, _layer_set, layer_groups
from .shard import local_blocks
from .tape import GradientSum, Reducer

__all__ = ["Influence", "layer_influence", "PARAMS", "AGGREGATIONS"]

PARAMS = ("block", "attn", "mlp")
AGGREGATIONS = ("positive", "all", "top25")


def _selected(name: str, params: str) -> bool:
    if params == "block":
        return True
    return ("attn" in name) if params == "attn" else ("mlp" in name)


class InnerProducts(Reducer):
    """Per block i and module: sum_{t in block i} b_t^T V a_t = <V, grad of block i's loss>."""

    def __init__(self, vectors: dict, block_ids: list[int], n_blocks: int):
        super().__init__()
        self.vectors, self.block_ids, self.seen = vectors, block_ids, {}
        self.n_blocks = n_blocks

    def update(self, key, a, b, shared, bounds):
        if key not in self.vectors:
            return
        per_token = ((a @ self.vectors[key].T) * b).sum(1)            # (T,)
        per_block = torch.stack([per_token[lo:hi].sum() for lo, hi in zip(bounds[:-1], bounds[1:])])
        start = self.seen.get(key, 0)
        if key not in self.state:
            self.state[key] = torch.zeros(self.n_blocks, dtype=torch.float64, device=a.device)
        rows = torch.tensor(self.block_ids[start:start + len(per_block)], device=a.device)
        self.state[key][rows] += per_block.double()
        self.seen[key] = start + len(per_block)


@dataclass(frozen=True)
class Influence:
    """matrix[i, k] = I_k(z_i): influence of training block i through layer k on the validation loss
    (> 0 harmful, Koh & Liang's sign)."""
    matrix: np.ndarray
    names: tuple
    metadata: dict = field(default_factory=dict)
    zeta2: np.ndarray | None = None    # (layers,) zeta_k^2 on the training blocks, from the same curvature fit

    def gains(self) -> LayerScores:
        """zeta_k^2 = g_k^T (H~_kk + lam I)^-1 g_k on the training blocks, with the curvature this matrix was
        built with: the fit's own pass gives the training gradient, so it costs one backward per batch
        more and equals `score(model, train, curvature=..., seed=...)` exactly."""
        if self.zeta2 is None:
            raise ValueError("this Influence carries no zeta^2 (it was not made by layer_influence)")
        meta = {k: self.metadata[k] for k in ("curvature", "damping", "damping_mode", "fisher", "seed", "model")
                if k in self.metadata}
        return LayerScores(method=f"zeta2[{self.metadata.get('curvature')}]", values=self.zeta2, names=self.names,
                           metadata=dict(meta, task=self.metadata.get("task"), granularity="block"))

    def scores(self, aggregation: str = "positive") -> LayerScores:
        """LayerIF's S(k) after the sign inversion (positive = beneficial): see the module docstring."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}")
        benefit = -self.matrix
        if aggregation == "all":
            values = benefit.sum(0)
        elif aggregation == "positive":
            values = np.clip(benefit, 0, None).sum(0)
        else:
            values = np.zeros(benefit.shape[1])
            for k in range(benefit.shape[1]):
                good = np.sort(benefit[benefit[:, k] > 0, k])[::-1]
                values[k] = good[:int(np.ceil(0.25 * good.size))].sum()
        return LayerScores(method=f"layerif[{self.metadata.get('curvature')},{aggregation}]", values=values,
                           names=self.names, metadata=dict(self.metadata, aggregation=aggregation))


def layer_influence(model, train: Blocks, validation: Blocks, *, curvature: str = "kfac", damping: float = 0.1,
                    damping_mode: str = "relative", params: str = "block", fisher: str = "sampled",
                    batch_size: int = BATCH_SIZE, seed: int = 0, progress: bool = True,
                    layers_per_pass: int | None = None, only=None) -> Influence:
    """The (training blocks x layers) LayerIF matrix.

    Passes: curvature statistics on `train` (one or two, see `curvature.fit`), the summed
    per-block validation gradient on `validation`, and one pass over `train` for all per-example
    inner products. params: "block" (every linear map, the paper's text), "attn" (the released code),
    or "mlp". layers_per_pass: None runs those passes once for every layer; k runs them k layers at a
    time (each group's factors, gradients and vectors freed before the next), for a smaller peak memory
    and the same matrix. only: layer indices to compute (default all); the other layers' columns (and
    zeta^2) are NaN, not zero, since they were not measured.
    """
    if params not in PARAMS:
        raise ValueError(f"params must be one of {', '.join(PARAMS)}, got {params!r}")
    options = CurvatureOptions(curvature, damping, damping_mode, fisher).require_factored("layer_influence")
    found = find_layers(model)
    wanted = _layer_set(only, model)
    groups = [g for g in ((group if wanted is None else wanted if group is None else group & wanted)
                          for group in layer_groups(len(found), layers_per_pass)) if g is None or g]
    # both sets of blocks checked before the first (long) pass
    on_train, on_validation = (Passes(model, b, batch_size, seed, progress) for b in (train, validation))
    matrix, zeta2 = np.zeros((len(train), len(found))), np.zeros(len(found))
    for group in groups:
        group_train, group_validation = (dataclasses.replace(p, only=group) for p in (on_train, on_validation))
        fitted = fit(group_train, options, gradients=True)     # the training gradient rides on the fit's pass
        solves = fitted.solves
        for (layer, module), solve in solves.items():
            zeta2[layer] += solve.zeta2(fitted.gradients[(layer, module)])
        del fitted
        val_grad = GradientSum()
        group_validation.run([val_grad], "data", "block_mean", "validation gradient")
        vectors = {k: solves[k].solve(g).float() for k, g in val_grad.state.items() if _selected(k[1], params)}
        del solves, val_grad
        inner = InnerProducts(vectors, local_blocks(train)[1], len(train))
        group_train.run([inner], "data", "block_mean", "per-example influence")
        for (layer, _), values in inner.state.items():
            matrix[:, layer] -= values.cpu().numpy()
        del vectors, inner        # this group's solves, gradients and vectors go before the next group
    if wanted is not None:
        skipped = sorted(set(range(len(found))) - wanted)
        matrix[:, skipped], zeta2[skipped] = np.nan, np.nan
    meta = dict(task=train.task, train_blocks=len(train), validation_blocks=len(validation), curvature=curvature,
                damping=damping, damping_mode=damping_mode, params=params, fisher=fisher, seed=seed,
                model=model_facts(model).name)
    return Influence(matrix=matrix, names=tuple(layer.name for layer in found), metadata=meta, zeta2=zeta2)
