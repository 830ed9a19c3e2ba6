"""The factor eigendecompositions in float32 where the spectrum allows: zeta^2 stays within 1e-3 of the
float64 path on every layer, and factors dominated by a few directions go back to float64."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from layerq_nb import curvature as curv
from layerq_nb import load_task, score


def _psd(eigenvalues, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    return (q * torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


@pytest.fixture
def eigh_calls(monkeypatch):
    """The dtypes torch.linalg.eigh was called with."""
    calls, real = [], torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m, *a, **k: calls.append(m.dtype) or real(m, *a, **k))
    return calls


def test_a_spread_spectrum_stays_float32_and_matches_float64(eigh_calls):
    matrix = _psd(np.logspace(0, -6, 200)).float()          # six decades below a flat top: mean / max ~ 1/40
    eig, vec = curv.symmetric_eigen(matrix)
    assert eigh_calls == [torch.float32]
    eig64, vec64 = curv.symmetric_eigen(matrix, torch.float64)
    lam = 0.1 * float(eig64.double().mean())
    solve = curv.ModuleSolve(eig=eig[None, :], lam=lam, q_a=vec, q_g=torch.ones(1, 1))
    solve64 = curv.ModuleSolve(eig=eig64[None, :], lam=lam, q_a=vec64, q_g=torch.ones(1, 1))
    g = torch.randn(1, 200, generator=torch.Generator().manual_seed(1))
    z, z64 = float((g * solve.solve(g)).sum()), float((g * solve64.solve(g)).sum())
    assert abs(z - z64) / z64 < 1e-5


def test_a_spectrum_dominated_by_one_direction_goes_back_to_float64(eigh_calls, monkeypatch):
    # Qwen2.5-0.5B's 4,864-wide factors with one massive-activation direction: eps32 sqrt(n) n = 0.04
    qwen_like = torch.full((4864,), 1e-4)
    qwen_like[0] = 4864.0
    assert not curv.float32_is_enough(qwen_like)
    assert curv.float32_is_enough(torch.ones(4864))
    assert not curv.float32_is_enough(torch.zeros(300))      # an all-zero factor (a dead module): no scale to trust
    # the fallback itself, on a matrix small enough to decompose here: a tighter tolerance sends it back
    spiky = np.full(300, 1e-4)
    spiky[0] = 1e3
    monkeypatch.setattr(curv, "FLOAT32_SPREAD_TOLERANCE", 1e-4)
    matrix = _psd(spiky).float()
    eig, vec = curv.symmetric_eigen(matrix)
    assert eigh_calls == [torch.float32, torch.float64]
    assert (eig.dtype, vec.dtype) == (torch.float32, torch.float32)
    eig64, _ = torch.linalg.eigh(matrix.double())          # the float64 result for the same (float32) factor
    assert torch.allclose(eig.double(), eig64.clamp_min(0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("curvature", ["kfac", "ekfac"])
def test_zeta2_matches_the_float64_path_on_every_layer(tiny, monkeypatch, curvature):
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=4, block_size=32)
    fast = score(model, blocks, curvature=curvature, progress=False)
    monkeypatch.setattr(curv, "symmetric_eigen", functools.partial(curv.symmetric_eigen, dtype=torch.float64))
    exact = score(model, blocks, curvature=curvature, progress=False)
    rel = np.abs(fast.values - exact.values) / np.abs(exact.values)
    assert len(rel) == 3 and np.all(rel <= 1e-3), rel


@pytest.mark.parametrize("curvature", ["kfac", "ekfac"])
def test_decompositions_split_over_threads_give_the_same_scores_and_restore_the_thread_count(
        tiny, monkeypatch, curvature):
    import threading
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=4, block_size=32)
    monkeypatch.setattr(curv, "_eigen_workers", lambda factors: 1)
    one_by_one = score(model, blocks, curvature=curvature, progress=False)
    seen, real = [], curv.symmetric_eigen
    monkeypatch.setattr(curv, "symmetric_eigen", lambda m, *a, **k: (
        seen.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        or real(m, *a, **k)))
    monkeypatch.setattr(curv, "_eigen_workers", lambda factors: 2)
    threads = torch.get_num_threads()
    split = score(model, blocks, curvature=curvature, progress=False)
    assert seen and {on_main for on_main, _ in seen} == {False} and {n for _, n in seen} == {1}
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(split.values, one_by_one.values, rtol=1e-5)

    def broken(m, *a, **k):
        raise torch.linalg.LinAlgError("stand-in failure")
    monkeypatch.setattr(curv, "symmetric_eigen", broken)
    with pytest.raises(torch.linalg.LinAlgError, match="stand-in"):
        score(model, blocks, curvature=curvature, progress=False)
    assert torch.get_num_threads() == threads


def test_decompositions_split_only_over_a_few_cpu_threads(monkeypatch):
    from layerq_nb.tape import KFACFactors
    factors = KFACFactors()
    factors.state[("A", 0, "q")] = torch.eye(3)
    for threads, workers in ((1, 1), (2, 2), (4, 4), (16, 1)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert curv._eigen_workers(factors) == workers
