"""K-FAC factors wider than their token rows are kept as rows and decomposed from them
(`curvature.row_eigen`, a thin eigenbasis with zeros outside it): checked against the dense (d, d)
float64 eigh of the same factor, and the whole fit against the dense path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerq_nb import curvature as curv
from layerq_nb import load_task
from layerq_nb.curvature import CurvatureOptions, ModuleSolve, Passes, fit
from layerq_nb.tape import KFACFactors


def _rows(t, d, seed, decades=3.0):
    """t token rows of width d, with column scales spread over `decades` (a spread spectrum)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t, d, generator=gen) * torch.logspace(0, -decades / 2, d)


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 24), extra=st.integers(1, 40), seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_row_eigen_is_the_eigendecomposition_of_the_factor(t, extra, seed, dtype):
    d = t + extra
    x = _rows(t, d, seed)
    eig, vec = curv.row_eigen(x, scale=t, dtype=dtype)
    k = t if d >= 2 * t else d         # thin from the rows, or (under twice as wide) the full (d, d) eigh of their sum
    assert eig.shape == (k,) and vec.shape == (d, k) and bool((eig >= 0).all())
    factor = x.double().T @ x.double() / t
    dense = torch.linalg.eigvalsh(factor).clamp_min(0)
    top = float(dense.max())
    # the nonzero spectrum is the factor's, the other d - t eigenvalues are (rounding-size) zeros
    assert torch.allclose(eig.double().sort().values, dense[-k:], rtol=0, atol=1e-5 * top)
    assert float(dense[:-t].max()) <= 1e-5 * top        # extra >= 1, so there is at least one
    assert torch.allclose(vec.double().T @ vec.double(), torch.eye(k, dtype=torch.float64), atol=1e-5)
    # F = V diag(e) V^T: the thin basis reconstructs the factor
    assert torch.allclose(vec.double() @ torch.diag(eig.double()) @ vec.double().T, factor, atol=1e-5 * top)


def _solves(t_a, d_a, t_g, d_g, seed, lam_rel=0.1):
    """The same K-FAC block, thin (from rows) and full (float64 eigh of the dense factors)."""
    xa, xg = _rows(t_a, d_a, seed), _rows(t_g, d_g, seed + 1, decades=4.0)
    alpha, q_a = curv.row_eigen(xa, t_a) if t_a < d_a else curv.symmetric_eigen(xa.T @ xa / t_a)
    gamma, q_g = curv.row_eigen(xg, t_g) if t_g < d_g else curv.symmetric_eigen(xg.T @ xg / t_g)
    thin = ModuleSolve(torch.outer(gamma, alpha), 0.0, q_a, q_g).with_damping(lam_rel)
    alpha64, q_a64 = torch.linalg.eigh(xa.T.double() @ xa.double() / t_a)          # all in float64
    gamma64, q_g64 = torch.linalg.eigh(xg.T.double() @ xg.double() / t_g)
    alpha64, gamma64 = alpha64.clamp_min(0), gamma64.clamp_min(0)
    full = ModuleSolve(torch.outer(gamma64, alpha64), 0.0, q_a64, q_g64).with_damping(lam_rel)
    return thin, full, xa, xg


@pytest.mark.parametrize("t_a, t_g", [(8, 8), (8, 40), (30, 8)])     # both thin, A thin, G thin
def test_a_thin_solve_is_the_full_solve(t_a, t_g):
    d_a, d_g = 24, 20
    thin, full, xa, xg = _solves(t_a, d_a, t_g, d_g, seed=3)
    assert thin.thin and not full.thin
    assert np.isclose(thin.mean_eigenvalue, full.mean_eigenvalue, rtol=1e-5)
    assert np.isclose(thin.lam, full.lam, rtol=1e-5)
    assert torch.allclose(thin.spectrum().double().sort().values, full.spectrum().double().flatten().sort().values,
                          rtol=0, atol=1e-5 * float(full.spectrum().max()))
    gen = torch.Generator().manual_seed(7)
    anywhere = torch.randn(d_g, d_a, generator=gen)
    inside = xg.T[:, :3] @ torch.randn(3, 3, generator=gen) @ xa[:3]        # in the span of both factors' rows
    for g in (anywhere, inside):
        z_thin, z_full = thin.zeta2(g), full.zeta2(g.double())
        assert abs(z_thin - z_full) <= 1e-4 * z_full
        assert torch.allclose(thin.solve(g).double(), full.solve(g.double()), rtol=1e-4,
                              atol=1e-4 * float(full.solve(g.double()).abs().max()))
        assert torch.allclose(thin.matvec(g).double(), full.matvec(g.double()), rtol=1e-4,
                              atol=1e-4 * float(full.matvec(g.double()).abs().max()))
        grid = [0.01, 0.1, 1.0]
        assert np.allclose(thin.zeta2_grid(g, grid), full.zeta2_grid(g.double(), grid), rtol=1e-4)
        assert np.isclose(float((g.double() * thin.solve(g).double()).sum()), z_thin, rtol=1e-4)


def test_factors_keep_rows_only_when_wider_than_the_rows_and_fold_to_the_sums():
    a, b = _rows(6, 12, 0), _rows(6, 5, 1)
    rows, sums = KFACFactors(max_rows=6), KFACFactors()
    for reducer in (rows, sums):
        reducer.begin_batch(3)
        reducer.update((0, "m"), a[:3], b[:3], shared=0, bounds=[0, 3])
        reducer.begin_batch(3)
        reducer.update((0, "m"), a[3:], b[3:], shared=0, bounds=[0, 3])
    assert set(rows.rows) == {("A", 0, "m")} and ("G", 0, "m") in rows.state     # 12 > 6 rows > 5
    assert torch.equal(rows.row_matrix(("A", 0, "m")), a)
    rows.fold_rows()
    assert not rows.rows and torch.allclose(rows.state[("A", 0, "m")], sums.state[("A", 0, "m")], atol=1e-6)
    assert torch.allclose(rows.A((0, "m")), sums.A((0, "m")), atol=1e-6)


def test_a_kfac_fit_on_few_tokens_uses_thin_bases_and_matches_the_dense_path(tiny, monkeypatch):
    """16 tokens: the 32- and 64-wide factors keep rows (every A), the 16-wide k/v output factors are summed."""
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=1, block_size=16)
    passes, options = Passes(model, blocks, progress=False), CurvatureOptions("kfac")
    thin = fit(passes, options, gradients=True)
    thin_g = {key[1]: s.q_g.shape[1] < s.q_g.shape[0] for key, s in thin.solves.items()}
    assert all(s.thin for s in thin.solves.values()) and thin_g["self_attn.k_proj"] is False
    assert thin_g["mlp.gate_proj"] is True
    monkeypatch.setattr(curv, "_KFACEigen", _dense_eigen())
    dense = fit(passes, options, gradients=True)
    assert not any(s.thin for s in dense.solves.values())
    for key, solve in thin.solves.items():
        g = thin.gradients[key]
        z_thin, z_dense = solve.zeta2(g), dense.solves[key].zeta2(g)
        assert abs(z_thin - z_dense) <= 1e-3 * z_dense, (key, z_thin, z_dense)
    _, z_thin = thin.newton()
    _, z_dense = dense.newton()
    assert abs(z_thin - z_dense) <= 1e-3 * z_dense


def _dense_eigen():
    """_KFACEigen that never keeps rows (the dense path)."""
    base = curv._KFACEigen

    class Dense(base):
        def __init__(self, max_rows=None):
            super().__init__(None)
    return Dense
