"""Checks for notebook 02 (curvature): the dense zeta^2, the quadratic model along the Newton step, and
K-FAC for one linear map (its factors A and G, then the damped solve in their eigenbasis).

Conventions checked here are the package's (`tape.KFACFactors`, `scoring.module_solves`,
`curvature.ModuleSolve`): A = a^T a / T over the T positions the tape saw, G = b^T b / N over the N loss
targets (b: per-token gradients of the *summed* loss), eigenvalues clipped at 0, and relative damping
lambda = damping * mean eigenvalue of A (x) G = damping * mean(alpha) * mean(gamma).
"""
from __future__ import annotations

# cpu on purpose (module): hidden instances are small CPU tensors, graded against CPU references
import numpy as np

from ._core import Mismatch, _low_precision, call, close, exercise, instance_rng, one_number

# ----------------------------------------------------------------------------- helpers


def _psd(rng: np.random.Generator, d: int, rank: int | None = None, scale: float = 1.0) -> np.ndarray:
    """A random symmetric PSD matrix of the given rank (full by default), spread-out eigenvalues."""
    rank = d if rank is None else rank
    x = rng.normal(size=(d, rank)) * rng.uniform(0.3, 3.0, size=rank)
    return scale * (x @ x.T) / rank


def _any_low_precision(*values) -> bool:
    """Whether any of a learner's results is a float32 / float16 / bfloat16 array or tensor."""
    return any(_low_precision(v) for v in values)


PRECISION = (" (your result is in float32: these systems are ill-conditioned, so compute in float64, the "
             "precision of the inputs)")


def _close_or_explain(got, expected, wrong: dict, *, where: str, rtol: float, atol: float, what: str) -> None:
    """close(), and when it fails, name the typical mistake the answer matches (wrong: reason -> value)."""
    try:
        close(got, expected, where=where, rtol=rtol, atol=atol, what=what)
    except Mismatch as error:
        g = np.asarray(got, dtype=float)
        for reason, value in wrong.items():
            v = np.asarray(value, dtype=float)
            if g.shape == v.shape and np.all(np.isfinite(v)) and np.allclose(g, v, rtol=max(rtol, 1e-6), atol=atol):
                raise Mismatch(f"{error} <- {reason}") from None
        raise


# ----------------------------------------------------------------------------- 02.1 dense zeta^2

def _dense_instances():
    """(d, lam, kind) of the hidden instances of 02.1."""
    return [(3, 0.1, "random"), (8, 0.0, "random"), (6, 0.5, "singular"), (5, 0.3, "zero gradient"),
            (4, 0.2, "eigenvector"), (1, 2.0, "random")]


@exercise("02.1", title="zeta^2 = g^T (H + lambda I)^-1 g for a dense H", answer="zeta2_dense",
          hints=("zeta^2 is an inner product: g with the solution x of (H + lambda I) x = g.",
                 "Solve the linear system rather than inverting: np.linalg.solve(M, g) with M = H + lambda I "
                 "(np.eye(len(g)) is the identity).",
                 "Return float(g @ x) where x solves (H + lam * np.eye(len(g))) x = g."))
def _zeta2_dense(zeta2_dense) -> str:
    for i, (d, lam, kind) in enumerate(_dense_instances()):
        rng = instance_rng("02.1", i)
        H = _psd(rng, d, rank=2 if kind == "singular" else None)
        g = rng.normal(size=d)
        if kind == "zero gradient":
            g = np.zeros(d)
        elif kind == "eigenvector":
            g = 1.7 * np.linalg.eigh(H)[1][:, -1]
        where = f"hidden instance {i + 1} (d = {d}, lam = {lam}, {kind} {'H' if kind == 'singular' else 'case'})"
        raw = call(zeta2_dense, g.copy(), H.copy(), lam, where=where)
        got = one_number(raw, where=where, what="zeta^2")
        M = H + lam * np.eye(d)
        expected = float(g @ np.linalg.solve(M, g))
        wrong = {"you multiplied by H + lambda I; zeta^2 uses its inverse (solve the system)": float(g @ M @ g),
                 "that is ||g||^2 / lambda, the identity curvature; use H too": float(g @ g / lam) if lam else np.nan,
                 "that is ||g||^2 (no curvature at all)": float(g @ g)}
        if kind != "singular" and lam > 0:
            wrong["you forgot the damping: solve with H + lambda I, not H"] = float(g @ np.linalg.solve(H, g))
        try:
            _close_or_explain(got, expected, wrong, where=where, rtol=1e-5, atol=1e-10, what="zeta^2")
        except Mismatch as error:
            raise Mismatch(f"{error}{PRECISION if _low_precision(raw) else ''}") from None
    return ("zeta^2 = g^T (H + lambda I)^-1 g: the squared gradient measured in the metric of the inverse "
            "curvature, twice the best decrease of the damped quadratic model.")


# ----------------------------------------------------------------------------- 02.2 the quadratic decrease

@exercise("02.2", title="The quadratic model's decrease along t times the Newton step", answer="decrease",
          kind="number",
          hints=("Put Delta = -t H~^-1 g into the model m(Delta) = g^T Delta + Delta^T H~ Delta / 2 and use "
                 "zeta^2 = g^T H~^-1 g.",
                 "The linear term gives -t zeta^2; the curvature term gives + t^2 zeta^2 / 2.",
                 "The decrease is -m(t Delta): a factor (t - t^2/2) times zeta^2; it is largest at t = 1."))
def _decrease(decrease) -> str:
    # no case where two of the slips below agree (t = 1 makes "forgot the 1/2" zero; t = 1/2 makes t zeta^2
    # equal zeta^2 / 2), so a slip is named only when it reproduces the answer on every case
    cases = [(2.0, 0.8), (0.5, 0.3), (3.0, 2.0), (1.0, 0.0), (1.5, 3.0), (0.0, 0.7), (4.0, 0.25), (2.5, 1.0)]
    slips = {"you forgot the 1/2 of the curvature term: it gives + t^2 zeta^2 / 2": lambda z, t: (t - t * t) * z,
             "that is only the linear term t zeta^2; the curvature term takes some back": lambda z, t: t * z,
             "that is the decrease of the full step (t = 1) for every t": lambda z, t: z / 2,
             "that is m(t Delta) itself, which is negative: the decrease is minus it":
                 lambda z, t: -(t - t * t / 2) * z}
    answers = []
    for i, (z, t) in enumerate(cases):
        where = f"hidden case {i + 1} (zeta^2 = {z}, t = {t})"
        answers.append((where, z, t, one_number(call(decrease, z, t, where=where), where=where, what="decrease")))
    named = [why for why, slip in slips.items()
             if all(np.isclose(got, slip(z, t), rtol=1e-9, atol=1e-12) for _, z, t, got in answers)]
    for where, z, t, got in answers:
        expected = (t - t * t / 2) * z
        wrong = {why: slips[why](z, t) for why in named}
        _close_or_explain(got, expected, wrong, where=where, rtol=1e-9, atol=1e-12, what="decrease")
    return ("(t - t^2/2) zeta^2: largest at t = 1 (zeta^2 / 2), zero again at t = 2, negative beyond: "
            "a step twice the Newton step gains nothing on the model.")


# ----------------------------------------------------------------------------- 02.3 the K-FAC factors

def package_factors(a, b, n_targets: int):
    """The package's K-FAC factors for one module: `tape.KFACFactors` on (a, b), normalised as in
    `scoring.module_solves` (A by the tokens the tape saw, G by the loss targets). float64 numpy."""
    import torch

    from ..tape import KFACFactors
    a_t, b_t = torch.as_tensor(np.asarray(a, dtype=float)), torch.as_tensor(np.asarray(b, dtype=float))
    reducer, key = KFACFactors(), (0, "m")
    reducer.begin_batch(a_t.shape[0])
    reducer.update(key, a_t, b_t, 0, [0, a_t.shape[0]])
    return (reducer.A(key) / reducer.tokens).numpy(), (reducer.state[("G", *key)] / n_targets).numpy()


def _factor_instances():
    """(tokens T, d_in, d_out, targets N, masked rows) of the hidden instances of 03: masked rows of b are 0."""
    return [(5, 3, 2, 5, 0), (12, 6, 4, 10, 2), (3, 7, 5, 3, 0), (9, 4, 4, 6, 3), (40, 2, 3, 39, 1)]


def _pair(got, where: str, names: str):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mismatch(f"{where}: return the pair ({names}), got a {type(got).__name__}"
                       + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
    return got


def _as_array(x, where: str, what: str) -> np.ndarray:
    try:
        return np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=float)
    except (TypeError, ValueError):
        raise Mismatch(f"{where}: your {what} is a {type(x).__name__}, not an array") from None


@exercise("02.3", title="K-FAC's factors A and G of one linear map", answer="kfac_factors",
          hints=("Both factors are second moments: A of the inputs a (rows are tokens), G of the output "
                 "gradients b. Each is a.T @ a or b.T @ b, divided by a count.",
                 "The counts differ: every one of the T positions has an input a_t, but only the N positions with "
                 "a loss target have a gradient (b_t = 0 elsewhere). The package averages A over T and G over N.",
                 "A = a.T @ a / a.shape[0] and G = b.T @ b / n_targets; return (A, G)."))
def _kfac_factors(kfac_factors, a=None, b=None, n_targets=None) -> str:
    instances = []
    for i, (T, d_in, d_out, N, masked) in enumerate(_factor_instances()):
        rng = instance_rng("02.3", i)
        a_i = rng.normal(size=(T, d_in)) * rng.uniform(0.5, 2.0, size=d_in)
        b_i = rng.normal(size=(T, d_out)) * 0.1
        if masked:
            b_i[-masked:] = 0.0                         # positions whose target is masked: no gradient
        where = f"hidden instance {i + 1} (T = {T} tokens, N = {N} targets, d_in = {d_in}, d_out = {d_out})"
        instances.append((a_i, b_i, N, where))
    if a is not None:
        instances.append((np.asarray(a, float), np.asarray(b, float), int(n_targets),
                          f"the real module's a {tuple(np.shape(a))} and b {tuple(np.shape(b))}, N = {n_targets}"))
    for a_i, b_i, N, where in instances:
        T = a_i.shape[0]
        A_got, G_got = _pair(call(kfac_factors, a_i.copy(), b_i.copy(), N, where=where), where, "A, G")
        if not all(isinstance(x, np.ndarray) for x in (A_got, G_got)):   # tensors here make 02.4's numpy fail
            raise Mismatch(f"{where}: return numpy arrays (A, G), like the inputs a and b; got "
                           f"({type(A_got).__name__}, {type(G_got).__name__})")
        A_got, G_got = _as_array(A_got, where, "A"), _as_array(G_got, where, "G")
        A, G = package_factors(a_i, b_i, N)
        _close_or_explain(A_got, A, {
            "A is averaged over the T = a.shape[0] positions (every position has an input), not over N": A * T / N,
            "you forgot to divide A by the number of tokens T": A * T},
            where=where + ", A", rtol=1e-5, atol=1e-7 * np.abs(A).max(), what="A")
        _close_or_explain(G_got, G, {
            "G is averaged over the N loss targets (n_targets), not over the T positions": G * N / T,
            "you forgot to divide G by the number of targets N": G * N},
            where=where + ", G", rtol=1e-5, atol=1e-7 * np.abs(G).max(), what="G")
    return ("A = a^T a / T and G = b^T b / N: the package's K-FAC factors (tape.KFACFactors, normalised as in "
            "scoring.module_solves), so that A (x) G approximates (1/N) sum_t (a_t a_t^T) (x) (b_t b_t^T).")


# ----------------------------------------------------------------------------- 02.4 the damped K-FAC solve

def package_kfac_solve(A, G, grad, damping: float):
    """The package's K-FAC solve for one module: `curvature.kfac_eigen` (eigenvalues clipped at 0),
    `curvature.damping_level` (relative) and `curvature.ModuleSolve`. Returns (step, zeta^2), float64 numpy;
    the package keeps the eigenvectors in float32, so agreement is to about 1e-5 relative."""
    import torch

    from .. import curvature as curv
    alpha, q_a, gamma, q_g = curv.kfac_eigen(torch.as_tensor(np.asarray(A, float)), torch.as_tensor(np.asarray(G, float)))
    eig = torch.outer(gamma, alpha)
    solve = curv.ModuleSolve(eig=eig, lam=curv.damping_level(damping, "relative", float(eig.double().mean())),
                             q_a=q_a, q_g=q_g)
    g = torch.as_tensor(np.asarray(grad, float)).float()
    step = solve.solve(g).double().numpy()
    return step, float((np.asarray(grad, float) * step).sum())


def _dense_kronecker(A, G, grad, lam):
    """(A (x) G + lam I)^-1 vec(grad) by one dense solve; vec stacks columns, so (A (x) G) vec(X) = vec(G X A)."""
    d_out, d_in = grad.shape
    H = np.kron(A, G)
    x = np.linalg.solve(H + lam * np.eye(H.shape[0]), grad.ravel(order="F"))
    return x.reshape((d_out, d_in), order="F")


def _eigen_parts(A, G):
    alpha, q_a = np.linalg.eigh(A)
    gamma, q_g = np.linalg.eigh(G)
    return np.clip(alpha, 0, None), q_a, np.clip(gamma, 0, None), q_g


def _implied_damping(A, G, grad, step):
    """The lambda a learner's solve used, if it is an (A (x) G + lambda I)^-1 solve for some lambda; else None."""
    alpha, q_a, gamma, q_g = _eigen_parts(A, G)
    r = q_g.T @ grad @ q_a
    s = q_g.T @ step @ q_a
    keep = np.abs(s) > 1e-8 * np.abs(s).max() if np.abs(s).max() > 0 else np.zeros(s.shape, bool)
    if keep.sum() < 2:
        return None
    lam = (r[keep] / s[keep]) - np.outer(gamma, alpha)[keep]
    spread = np.abs(lam - np.median(lam)).max()
    return float(np.median(lam)) if spread <= 1e-6 * (abs(np.median(lam)) + np.outer(gamma, alpha).max()) else None


def _solve_instances():
    """(d_in, d_out, tokens, damping, kind) of 02.4's hidden instances."""
    return [(3, 2, 20, 0.1, "random"), (5, 4, 3, 0.01, "rank-deficient factors"), (4, 3, 10, 0.1, "zero gradient"),
            (4, 4, 12, 1.0, "square"), (3, 5, 15, 0.05, "eigenvector gradient"),
            (6, 3, 30, 1e-3, "factors of very different scales")]


def _layout_slips(A, G, grad, lam) -> dict:
    """What the usual layout slips of a Kronecker solve give (reason -> step): the vec convention, the
    rotation's transposes, the eigenvalue grid's orientation, damping each factor by sqrt(lambda)."""
    alpha, q_a, gamma, q_g = _eigen_parts(A, G)
    d_out, d_in = grad.shape
    slips = {}
    with np.errstate(all="ignore"):
        row_major = np.linalg.solve(np.kron(A, G) + lam * np.eye(d_in * d_out), grad.ravel()).reshape(grad.shape)
        slips["vec stacks columns: (A (x) G) vec(g) = vec(G g A) with vec(g) = g.ravel(order='F'); with numpy's "
              "row-major ravel/reshape the matrix is np.kron(G, A)"] = row_major
        grid = np.outer(gamma, alpha) + lam
        rotated = q_g @ grad @ q_a.T
        slips["rotate into the eigenbasis with the transposes, R = Q_G^T grad Q_A (the eigenvectors are Q's "
              "columns), and back with Q_G R Q_A^T"] = q_g @ (rotated / grid) @ q_a.T
        slips["rotate into the eigenbasis with R = Q_G^T grad Q_A and back with Q_G R Q_A^T (yours goes the other "
              "way round)"] = q_g.T @ (rotated / grid) @ q_a
        if d_in == d_out:
            slips["the eigenvalue grid is gamma_i alpha_j, np.outer(gamma, alpha): rows follow G (d_out), "
                  "columns A (d_in)"] = q_g @ ((q_g.T @ grad @ q_a) / (np.outer(alpha, gamma) + lam)) @ q_a.T
        root = np.sqrt(lam)
        slips["that damps each factor by sqrt(lambda), (A + sqrt(lambda) I) (x) (G + sqrt(lambda) I), which adds "
              "cross terms: add one lambda to every eigenvalue gamma_i alpha_j"] = (
            q_g @ ((q_g.T @ grad @ q_a) / np.outer(gamma + root, alpha + root)) @ q_a.T)
    return {why: step for why, step in slips.items() if np.all(np.isfinite(step))}


@exercise("02.4", title="K-FAC's damped solve and zeta^2 of one linear map", answer="kfac_solve",
          hints=("Eigendecompose both factors (np.linalg.eigh; clip tiny negative eigenvalues at 0). In the basis "
                 "Q_A (x) Q_G the matrix A (x) G is diagonal, with eigenvalue gamma_i alpha_j at entry (i, j).",
                 "Rotate the gradient: R = Q_G^T grad Q_A, divide entrywise by np.outer(gamma, alpha) + lam, rotate "
                 "back with Q_G (.) Q_A^T. The damping is relative: lam = damping * mean of the eigenvalues.",
                 "lam = damping * alpha.mean() * gamma.mean() (the mean of the outer product); zeta^2 = (grad * step).sum(). "
                 "Return (step, zeta2)."))
def _kfac_solve(kfac_solve, a=None, b=None, n_targets=None, grad=None) -> str:
    instances = []
    for i, (d_in, d_out, T, damping, kind) in enumerate(_solve_instances()):
        rng = instance_rng("02.4", i)
        damping = float(damping)
        scale_a, scale_g = (50.0, 1e-5) if kind.startswith("factors") else (1.0, 1.0)
        rank = min(T, d_in), min(T, d_out)
        A_i = _psd(rng, d_in, rank=rank[0], scale=scale_a)
        G_i = _psd(rng, d_out, rank=rank[1], scale=scale_g)
        grad_i = rng.normal(size=(d_out, d_in)) * np.sqrt(scale_a * scale_g)
        if kind == "zero gradient":
            grad_i = np.zeros((d_out, d_in))
        elif kind == "eigenvector gradient":
            grad_i = 0.8 * np.outer(np.linalg.eigh(G_i)[1][:, 0], np.linalg.eigh(A_i)[1][:, -1])
        where = f"hidden instance {i + 1} (d_in = {d_in}, d_out = {d_out}, damping = {damping}, {kind})"
        instances.append((A_i, G_i, grad_i, damping, where, True))
    if a is not None:
        A, G = package_factors(a, b, int(n_targets))
        instances.append((A, G, np.asarray(grad, float), 0.1,
                          f"the real module (grad {tuple(np.shape(grad))}, damping = 0.1)", False))
    for A_i, G_i, grad_i, damping, where, dense in instances:
        got = _pair(call(kfac_solve, A_i.copy(), G_i.copy(), grad_i.copy(), damping, where=where), where, "step, zeta2")
        step = _as_array(got[0], where, "step")
        zeta2 = one_number(got[1], where=where, what="zeta^2")
        low = _any_low_precision(got[0], got[1])
        alpha, _, gamma, _ = _eigen_parts(A_i, G_i)
        lam = damping * alpha.mean() * gamma.mean()
        package_step, package_zeta2 = package_kfac_solve(A_i, G_i, grad_i, damping)
        size = np.abs(package_step).max() or 1.0
        if dense:
            expected = _dense_kronecker(A_i, G_i, grad_i, lam)
            wrong = {"that is the Newton step -(H + lambda I)^-1 g: return the solve itself, without the minus": -expected,
                     **_layout_slips(A_i, G_i, grad_i, lam)}
            try:
                close(step, expected, where=where + ", step (against a dense Kronecker solve)", rtol=1e-4,
                      atol=1e-5 * size, what="step")
            except Mismatch as error:
                message = str(error)
                if low:
                    raise Mismatch(message + PRECISION) from None
                for reason, value in wrong.items():
                    if value.shape == step.shape and np.allclose(step, value, rtol=1e-4, atol=1e-5 * size):
                        raise Mismatch(f"{message} <- {reason}") from None
                if step.shape == expected.shape and np.all(np.isfinite(step)) and np.any(grad_i):
                    used = _implied_damping(A_i, G_i, grad_i, step)
                    want = f"expected lambda = damping * mean(alpha) * mean(gamma) = {lam:.6g}"
                    if used is None:
                        raise Mismatch(f"{message} <- your step is not (A (x) G + lambda I)^-1 g for any one lambda: "
                                       "check the rotation (R = Q_G^T grad Q_A in, Q_G R Q_A^T out), the eigenvalue "
                                       "grid (gamma_i alpha_j: rows follow G, columns A) and that one lambda is added "
                                       "to every gamma_i alpha_j") from None
                    if abs(used) <= 1e-9 * (1 + lam):
                        raise Mismatch(f"{message} <- your solve has no damping (lambda = 0); {want}") from None
                    if not np.isclose(used, lam, rtol=1e-4):
                        detail = (" (the absolute damping lambda = damping; the package damps relative to the mean "
                                  "eigenvalue)" if np.isclose(used, damping, rtol=1e-4) else "")
                        raise Mismatch(f"{message} <- your solve used lambda = {used:.6g}{detail}; {want}") from None
                if not np.all(np.isfinite(step)):
                    raise Mismatch(f"{message} <- some eigenvalues gamma_i alpha_j are 0 here: add lambda to every "
                                   "one of them before dividing") from None
                raise
            try:
                close(zeta2, float((grad_i * expected).sum()), where=where + ", zeta^2", rtol=1e-4, atol=1e-12,
                      what="zeta^2")
            except Mismatch as error:
                raise Mismatch(f"{error} <- your step is right; zeta^2 is its inner product with the gradient, "
                               "(grad * step).sum()") from None
        try:
            close(step, package_step, where=where + ", step (against the package's K-FAC)", rtol=1e-4,
                  atol=1e-5 * size, what="step")
        except Mismatch as error:
            raise Mismatch(f"{error}{PRECISION if low else ''}") from None
        try:
            close(zeta2, package_zeta2, where=where + ", zeta^2 (against the package's K-FAC)", rtol=1e-4, atol=1e-12,
                  what="zeta^2")
        except Mismatch as error:
            raise Mismatch(f"{error} <- your step is right; zeta^2 is its inner product with the gradient, "
                           "(grad * step).sum()") from None
    return ("(A (x) G + lambda I)^-1 vec(g) in the eigenbasis Q_A (x) Q_G, lambda = damping * mean(alpha) * "
            "mean(gamma): equal to a dense Kronecker solve and to the package's K-FAC (curvature.ModuleSolve).")
