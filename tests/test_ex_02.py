"""Notebook 02's exercises: the shipped solutions pass their checks, blanks are unanswered, typical wrong
answers are wrong with a message that names the mistake, and an answer that raises is contained."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.exercises.nb02 import package_factors, package_kfac_solve


def _solution(key: str, **names):
    scope = dict(np=np, math=math, torch=torch, lq=lq, **names)
    (fn,) = ex.run_solution(key, scope)
    return fn


def _wrong(key: str, answer, fragment: str, **context):
    verdict = ex.check(key, answer, **context)
    assert verdict.status == "wrong", verdict
    assert fragment in verdict.message, verdict.message
    return verdict


@pytest.fixture(scope="module")
def kfac_solve():
    return _solution("02.4")


@pytest.fixture(scope="module")
def module_data(tiny):
    """a, b (sampled labels, summed loss), the gradient and N for one module of the tiny model, as the
    notebook collects them, and the package's own module_solves for that layer."""
    from layerq_nb.scoring import module_solves
    from layerq_nb.tape import GradientSum, Reducer, run_tape
    model, tok = tiny
    blocks = lq.load_task("prose", tok, split="train", n_blocks=2, block_size=16)
    key = (1, "self_attn.k_proj")

    class Keep(Reducer):
        def update(self, k, a, b, shared, bounds):
            if k == key:
                self.state.setdefault("a", []).append(a.double().clone())
                self.state.setdefault("b", []).append(b.double().clone())
    keep, grads = Keep(), GradientSum()
    run_tape(model, blocks, [keep], labels="sampled", reduction="sum", batch_size=1, only={1}, progress=False,
             then=[([grads], "data", "mean")])
    solves, package_grads = module_solves(model, blocks, "kfac", only={1}, gradients=True, progress=False)
    return dict(a=torch.cat(keep.state["a"]).numpy(), b=torch.cat(keep.state["b"]).numpy(),
                grad=grads.state[key].double().numpy(), n_targets=blocks.n_targets,
                solve=solves[key], package_grad=package_grads[key])


# ----------------------------------------------------------------------------- 02.1 dense zeta^2

def test_02_1_dense_zeta2():
    assert ex.check("02.1", _solution("02.1"))
    assert ex.check("02.1", lambda g, H, lam: g @ np.linalg.inv(H + lam * np.eye(len(g))) @ g)   # written differently
    by_eigenvalues = lambda g, H, lam: float(((np.linalg.eigh(H)[1].T @ g) ** 2 / (np.linalg.eigh(H)[0] + lam)).sum())
    assert ex.check("02.1", by_eigenvalues)
    assert ex.check("02.1", None).status == "unanswered"
    assert ex.check("02.1", lambda g, H, lam: None).status == "unanswered"
    _wrong("02.1", lambda g, H, lam: float(g @ np.linalg.solve(H, g)), "forgot the damping")
    _wrong("02.1", lambda g, H, lam: float(g @ (H + lam * np.eye(len(g))) @ g), "its inverse")
    _wrong("02.1", lambda g, H, lam: float(g @ g / lam), "identity curvature")
    _wrong("02.1", lambda g, H, lam: np.linalg.solve(H + lam * np.eye(len(g)), g), "one number")
    _wrong("02.1", lambda g, H, lam: 1 / 0, "raised ZeroDivisionError")


def test_02_2_quadratic_decrease():
    assert ex.check("02.2", _solution("02.2"))
    assert ex.check("02.2", None).status == "unanswered"
    _wrong("02.2", lambda z, t: (t - t * t) * z, "forgot the 1/2")
    _wrong("02.2", lambda z, t: -(t - t * t / 2) * z, "minus it")
    _wrong("02.2", lambda z, t: t * z, "only the linear term")
    _wrong("02.2", lambda z, t: z / 2, "full step (t = 1) for every t")
    # a slip is named only when it reproduces every case: these match none
    for other in (lambda zeta2, t: 0.0, lambda t, zeta2: (t - t * t / 2) * zeta2, lambda z, t: (t - t * t) / 2 * z):
        verdict = ex.check("02.2", other)
        assert verdict.status == "wrong" and "<-" not in verdict.message, verdict.message


# ----------------------------------------------------------------------------- 02.3 K-FAC factors

def test_02_3_kfac_factors(module_data):
    real = {k: module_data[k] for k in ("a", "b", "n_targets")}
    assert ex.check("02.3", _solution("02.3"), **real)
    as_torch = lambda a, b, n: (torch.tensor(a).T @ torch.tensor(a) / len(a), torch.tensor(b).T @ torch.tensor(b) / n)
    _wrong("02.3", as_torch, "return numpy arrays (A, G)")       # cell 21 slices them and cell 26 hands them on
    assert ex.check("02.3", None, **real).status == "unanswered"
    _wrong("02.3", lambda a, b, n: (a.T @ a / n, b.T @ b / n), "not over N")
    _wrong("02.3", lambda a, b, n: (a.T @ a / len(a), b.T @ b / len(b)), "not over the T positions")
    _wrong("02.3", lambda a, b, n: (a.T @ a, b.T @ b), "forgot to divide")
    _wrong("02.3", lambda a, b, n: (a @ a.T / len(a), b.T @ b / n), "got shape")
    _wrong("02.3", lambda a, b, n: a.T @ a, "return the pair")
    _wrong("02.3", lambda a, b, n: a.undefined, "raised AttributeError")


def test_02_3_package_factors_are_the_scoring_factors(module_data):
    """The factors the check holds as expected are the ones module_solves decomposes: its eigenvalues."""
    A, G = package_factors(module_data["a"], module_data["b"], module_data["n_targets"])
    eig = np.outer(np.clip(np.linalg.eigvalsh(G), 0, None), np.clip(np.linalg.eigvalsh(A), 0, None))
    assert np.allclose(np.sort(eig.ravel()), np.sort(module_data["solve"].spectrum().double().numpy().ravel()),
                       rtol=1e-4, atol=1e-6 * eig.max())


# ----------------------------------------------------------------------------- 02.4 the K-FAC solve

def test_02_4_kfac_solve(kfac_solve, module_data):
    real = {k: module_data[k] for k in ("a", "b", "n_targets", "grad")}
    assert ex.check("02.4", kfac_solve, **real)
    assert ex.check("02.4", None, **real).status == "unanswered"

    def absolute(A, G, grad, damping):          # lambda = damping, not relative to the mean eigenvalue
        scale = np.linalg.eigvalsh(A).clip(0).mean() * np.linalg.eigvalsh(G).clip(0).mean()
        return kfac_solve(A, G, grad, damping / scale)
    _wrong("02.4", absolute, "absolute damping")
    _wrong("02.4", lambda A, G, grad, d: kfac_solve(A, G, grad, 0.0), "no damping")
    _wrong("02.4", lambda A, G, grad, d: (-kfac_solve(A, G, grad, d)[0], kfac_solve(A, G, grad, d)[1]), "Newton step")

    def factored(A, G, grad, d):                # damping added to each factor: not one lambda on A (x) G
        lam = d * np.linalg.eigvalsh(A).mean() * np.linalg.eigvalsh(G).mean()
        return kfac_solve(A + np.sqrt(lam) * np.eye(len(A)), G + np.sqrt(lam) * np.eye(len(G)), grad, 0.0)
    _wrong("02.4", factored, "damps each factor by sqrt(lambda)")

    def row_major_kron(A, G, grad, d):          # np.kron(A, G) with numpy's row-major ravel: the vec slip
        lam = d * np.linalg.eigvalsh(A).clip(0).mean() * np.linalg.eigvalsh(G).clip(0).mean()
        x = np.linalg.solve(np.kron(A, G) + lam * np.eye(A.size and len(A) * len(G)), grad.ravel())
        step = x.reshape(grad.shape)
        return step, float((grad * step).sum())
    _wrong("02.4", row_major_kron, "vec stacks columns")

    def rotated_without_transposes(A, G, grad, d):
        alpha, q_a = np.linalg.eigh(A)
        gamma, q_g = np.linalg.eigh(G)
        eig = np.outer(gamma.clip(0), alpha.clip(0))
        step = q_g @ ((q_g @ grad @ q_a.T) / (eig + d * eig.mean())) @ q_a.T
        return step, float((grad * step).sum())
    _wrong("02.4", rotated_without_transposes, "with the transposes")

    def bad_zeta(A, G, grad, d):
        step, _ = kfac_solve(A, G, grad, d)
        return step, float((step * step).sum())
    _wrong("02.4", bad_zeta, "inner product with the gradient")
    _wrong("02.4", lambda A, G, grad, d: (kfac_solve(A, G, grad, d)[0].T, 1.0), "transposed")
    _wrong("02.4", lambda A, G, grad, d: kfac_solve(A, G, grad, d)[0], "return the pair")
    _wrong("02.4", lambda A, G, grad, d: np.linalg.cholesky(-A), "raised LinAlgError")

    def in_float32(A, G, grad, d):              # right formula, single precision: the real module tells
        step, zeta2 = kfac_solve(A, G, grad, d)
        A32, G32, g32 = (torch.tensor(x, dtype=torch.float32) for x in (A, G, grad))
        alpha, q_a = torch.linalg.eigh(A32)
        gamma, q_g = torch.linalg.eigh(G32)
        eig = torch.outer(gamma.clamp_min(0), alpha.clamp_min(0))
        step = q_g @ ((q_g.T @ g32 @ q_a) / (eig + d * eig.mean())) @ q_a.T
        return step, (g32 * step).sum()
    verdict = ex.check("02.4", in_float32, **real)
    assert verdict or "float32" in verdict.message, verdict.message


def test_02_4_matches_module_solves_on_the_model(kfac_solve, module_data):
    """On the tiny model the learner's solve of the collected (a, b) equals the package's module_solves."""
    A, G = package_factors(module_data["a"], module_data["b"], module_data["n_targets"])
    assert np.allclose(module_data["grad"], module_data["package_grad"].double().numpy(), atol=1e-7)
    step, zeta2 = kfac_solve(A, G, module_data["grad"], 0.1)
    expected = module_data["solve"].solve(module_data["package_grad"]).double().numpy()
    assert np.allclose(step, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
    assert math.isclose(zeta2, package_kfac_solve(A, G, module_data["grad"], 0.1)[1], rel_tol=1e-4)


def test_02_every_exercise_is_in_the_notebook_once():
    import nbformat
    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "02_curvature.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for exercise in ex.exercises("02"):
        assert code.count(f'ex.check("{exercise.key}"') == 1, exercise.key
        assert code.count(f'ex.solution("{exercise.key}")') == 1, exercise.key
    assert sum(e.kind == "build" for e in ex.exercises("02")) >= 2
