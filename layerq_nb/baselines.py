"""Baseline layer scores (the baselines LayerIF compares with: Askari et al., "LayerIF: Estimating Layer
Quality for Large Language Models using Influence Functions", arXiv 2505.23811, section 4), each a
LayerScores over decoder blocks.

- ShortGPT block influence (Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than
  You Expect", arXiv 2403.03853, Block Influence): BI_k = 1 - E_t cos(x_k,t, x_k+1,t), the hidden state
  entering and leaving block k. Low BI: the block barely changes the residual stream.
- OWL layer outlier ratio (Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)", arXiv 2310.05175,
  section 3): with the Wanda metric A_ij = |W_ij| ||X_j||_2 over all linear maps of a block,
  LOD_k = 100 * #{A > M mean(A_k)} / numel(A_k), M = 5. More outliers: prune less.
- AlphaPruning heavy-tail exponent (Lu et al., "AlphaPruning: Using Heavy-Tailed Self Regularization Theory
  for Improved Layer-wise Pruning of Large Language Models", arXiv 2410.10912, section 3): the Hill
  estimator on the eigenvalues of W^T W per matrix (xmin chosen by the Kolmogorov-Smirnov distance near the
  histogram peak, as Clauset, Shalizi, Newman, "Power-law distributions in empirical data", arXiv 0706.1062,
  section 3.3), averaged over a block's matrices. Higher alpha: less trained, prune more.
- uniform: every layer alike.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .data import Blocks, check_blocks
from .models import block_input, weight_matrix
from .models import layers as find_layers
from .scores import LayerScores

__all__ = ["block_influence", "input_norms", "outlier_ratio", "hill_alpha", "heavy_tail_alpha", "uniform"]


def _names(model):
    return tuple(layer.name for layer in find_layers(model))


@contextlib.contextmanager
def _forward_hooks(pairs):
    handles = [module.register_forward_hook(hook, with_kwargs=True) for module, hook in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model, blocks: Blocks, batch_size: int, on_batch=None):
    """The model over `blocks` without gradients; on_batch(token mask) runs before each batch."""
    check_blocks(model, blocks)
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in blocks.batches(batch_size, device=device):
            if on_batch:
                on_batch(batch["attention_mask"].reshape(-1).bool())
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


def block_influence(model, blocks: Blocks, *, batch_size: int = 4) -> LayerScores:
    """ShortGPT's BI_k = 1 - mean over unpadded tokens of cos(block input, block output)."""
    found = find_layers(model)
    sums, count, state = np.zeros(len(found)), [0], {}

    def hook_for(k):
        def hook(module, args, kwargs, output):
            x, y = block_input(args, kwargs), output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).reshape(-1)[state["mask"]]
            sums[k] += float(torch.nan_to_num(cos, nan=0.5).sum())
        return hook

    def on_batch(mask):
        state["mask"] = mask
        count[0] += int(mask.sum())
    with _forward_hooks([(layer.module, hook_for(layer.index)) for layer in found]):
        _run(model, blocks, batch_size, on_batch)
    return LayerScores(method="shortgpt_bi", values=1 - sums / count[0], names=_names(model),
                       metadata=dict(task=blocks.task, tokens=count[0]))


def input_norms(model, blocks: Blocks, *, batch_size: int = 4) -> dict[tuple[int, str], torch.Tensor]:
    """||X_j||_2 per (layer, module): the norm of input feature j over all unpadded calibration tokens
    (Wanda's activation statistic)."""
    sq, state = {}, {}

    def hook_for(key):
        def hook(module, args, kwargs, output):
            a = args[0].detach().reshape(-1, args[0].shape[-1])[state["mask"]].float()
            sq[key] = sq.get(key, 0) + (a * a).sum(0)
        return hook
    pairs = [(m, hook_for((layer.index, n))) for layer in find_layers(model) for n, m in layer.linears.items()]
    with _forward_hooks(pairs):
        _run(model, blocks, batch_size, lambda mask: state.__setitem__("mask", mask))
    return {k: v.sqrt() for k, v in sq.items()}


def outlier_ratio(model, blocks: Blocks, *, m: float = 5.0, batch_size: int = 4,
                  norms: dict | None = None) -> LayerScores:
    """OWL's layer outlier distribution: percent of Wanda scores above m times their block's mean.
    norms: `input_norms(model, blocks)` when already computed."""
    norms = norms if norms is not None else input_norms(model, blocks, batch_size=batch_size)
    values = []
    for layer in find_layers(model):
        scores = torch.cat([(weight_matrix(mod).detach().float().abs() * norms[(layer.index, n)][None, :]).reshape(-1)
                            for n, mod in layer.linears.items()])
        values.append(100.0 * float((scores > m * scores.mean()).float().mean()))
    return LayerScores(method="owl_lod", values=np.array(values), names=_names(model),
                       metadata=dict(task=blocks.task, m=m))


def hill_alpha(eigenvalues: np.ndarray, *, bins: int = 100) -> float:
    """Power-law exponent of an eigenvalue spectrum by the Hill/MLE estimator with KS-selected xmin
    (AlphaPruning's `xmin_peak`): for xmin = lambda_i and the n = N - i eigenvalues above it,
    alpha = 1 + n / (sum_{j >= i} ln lambda_j - n ln lambda_i); xmin candidates run up to 1.5 x the
    peak of the log-histogram, and the one with the smallest KS distance wins."""
    lam = np.sort(np.asarray(eigenvalues, dtype=float))
    lam = lam[lam > 0]
    if lam.size < 3:
        raise ValueError("need at least 3 positive eigenvalues for a heavy-tail fit")
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    peak = 10 ** edges[np.argmax(counts)]
    n_total = lam.size
    best_alpha, best_d = np.nan, np.inf
    log_lam = np.log(lam)
    suffix = np.cumsum(log_lam[::-1])[::-1]                        # sum_{j >= i} ln lambda_j
    for i in np.flatnonzero(lam <= 1.5 * peak):
        n = n_total - i
        if n < 2:
            continue
        denom = suffix[i] - n * log_lam[i]
        if denom <= 0:
            continue
        alpha = 1 + n / denom
        tail = lam[i:]
        d = np.max(np.abs(1 - (tail / lam[i]) ** (1 - alpha) - np.arange(n) / n))
        if d < best_d:
            best_alpha, best_d = alpha, d
    return float(best_alpha)


def heavy_tail_alpha(model) -> LayerScores:
    """AlphaPruning's block-wise metric: the mean Hill alpha of the ESD of W^T W over a block's matrices
    (singular values in fp32; data-free)."""
    values = []
    for layer in find_layers(model):
        alphas = [hill_alpha(torch.linalg.svdvals(weight_matrix(m).detach().float()).double().cpu().numpy() ** 2)
                  for m in layer.linears.values()]
        values.append(float(np.mean(alphas)))
    return LayerScores(method="alpha_hill", values=np.array(values), names=_names(model), metadata={})


def uniform(model) -> LayerScores:
    """Every layer alike: 1 per decoder block."""
    names = _names(model)
    return LayerScores(method="uniform", values=np.ones(len(names)), names=names, metadata={})
