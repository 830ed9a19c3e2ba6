"""Masks of one (d_out, d_in) weight matrix; True marks a pruned weight. torch only, no model.

    magnitude   the floor(s d_out d_in) smallest |W_ij| of the whole matrix
    wanda       per output row, the floor(s d_in) smallest |W_ij| ||X_j||_2 (Sun, Liu, Bair, Kolter, "A Simple
                and Effective Pruning Approach for Large Language Models", arXiv 2306.11695, section 3, eq. 1)
    sparsegpt   optimal brain surgeon with lazy column blocks of 128, damping 1% of the mean diagonal of
                H = sum_t a_t a_t^T (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
                Pruned in One-Shot", arXiv 2301.00774, section 3, algorithm 1)
    n_m=(N, M)  any of them as N:M sparsity: N pruned in each group of M consecutive inputs of a row.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["PRUNE_METHODS", "magnitude_mask", "wanda_mask", "sparsegpt", "check_n_m"]

PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")


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


def check_n_m(n_m, sparsity=None) -> tuple[int, int] | None:
    """None, or n_m as a pair of ints (N, M) with 0 < N < M: N = 0 would prune nothing and N = M every
    weight, past MAX_SPARSITY. N:M fixes the sparsity at N / M, so a `sparsity` (one number or one per
    layer) that asks for another is refused rather than quietly ignored."""
    if n_m is None:
        return None
    try:
        n, m = n_m
    except (TypeError, ValueError):
        n = m = None
    whole = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, m))
    if isinstance(n_m, str) or not whole or not 0 < n < m:
        raise ValueError(f"n_m must be a pair (N, M) of whole numbers with 0 < N < M, e.g. (2, 4): N pruned in each "
                         f"group of M consecutive inputs; got {n_m!r}")
    if sparsity is not None:
        asked = np.atleast_1d(np.asarray(sparsity, dtype=float))
        off = np.flatnonzero(~np.isclose(asked, n / m, rtol=0, atol=1e-9))
        if off.size:
            raise ValueError(f"n_m=({n}, {m}) fixes the sparsity at N/M = {n / m:g}, but sparsity asks for "
                             f"{asked[off[0]]:g}" + (f" (layer {off[0]})" if asked.size > 1 else "") +
                             f": pass sparsity={n}/{m} with n_m=({n}, {m}), or leave out n_m for unstructured "
                             "sparsity")
    return int(n), int(m)


def _n_m(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Within each group of m consecutive inputs of a row, the n smallest."""
    rows, cols = metric.shape
    if cols % m:
        raise ValueError(f"N:M sparsity needs the input dimension ({cols}) to be a multiple of M = {m}")
    groups = metric.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, sparsity: float, *, n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """True where pruned: the floor(s * numel) smallest |W_ij| of the whole matrix (or N:M per row)."""
    n_m = check_n_m(n_m, sparsity)
    metric = weight.detach().float().abs()
    return _n_m(metric, *n_m) if n_m else _lowest(metric, int(sparsity * metric.numel()))


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float, *,
               n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """True where pruned: per output row, the floor(s * d_in) smallest S_ij = |W_ij| ||X_j||_2 (Wanda, Sun et
    al., arXiv 2306.11695, eq. 1; the comparison group is one output row, section 3). input_norm: (d_in,)."""
    n_m = check_n_m(n_m, sparsity)
    metric = weight.detach().float().abs() * input_norm.float()[None, :]
    return _n_m(metric, *n_m) if n_m else _lowest(metric, int(sparsity * metric.shape[1]), dim=1)


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *, n_m: tuple[int, int] | None = None,
              block: int = 128, damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's OBS pruning of one (d_out, d_in) matrix with H = sum_t a_t a_t^T of its inputs (Frantar &
    Alistarh, arXiv 2301.00774, algorithm 1).

    H gets damping * mean diag(H) on its diagonal (relative damping). Columns are visited left to right in
    lazy blocks of `block`; the mask of each block keeps the largest w^2 / [H^-1]_jj^2 (exactly
    floor(s * block entries) pruned); each pruned column's error is spread over the later columns,
    w -= (w_j / [H^-1]_jj) [H^-1]_j,: (upper Cholesky form). Returns (updated weight, mask of pruned entries)."""
    n_m = check_n_m(n_m, sparsity)
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
