"""Damped curvature blocks H~_kk behind one interface, one fitter per name
(K-FAC: Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
arXiv 1503.05671, section 3; EK-FAC: George, Laurent, Bouthillier, Ballas, Vincent, "Fast Approximate Natural
Gradient Descent in a Kronecker-factored Eigenbasis", arXiv 1806.03884, section 3; the interface follows
curvlinops' operators, Dangel et al.).

`FITTERS` maps a name to a fitter; `fit` runs it and returns one `Solve` per linear module (per layer for
"exact"), each with its mean eigenvalue, `with_damping(value, mode)`, `solve(g)` = (H + lam I)^-1 g,
`matvec(v)` = (H + lam I) v and `zeta2(g)` = g^T (H + lam I)^-1 g. Damping (`damping_level`, the one place
it is computed): "absolute" adds lambda I; "relative" (default) lambda times the mean eigenvalue of H.

    identity  no curvature, unit scale:            zeta^2 = ||g||^2 / lambda (the grad-norm baseline)
    diag      H = diag Fisher (1/N) sum_t (b_t^2)(a_t^2)^T
    kfac      H = A (x) G, A = (1/T) sum_t a a^T, G = (1/N) sum_t b b^T   (Martens & Grosse 2015)
    ekfac     H = Q diag(Lambda) Q^T in the K-FAC eigenbasis Q = Q_A (x) Q_G, with
              Lambda = (1/N) sum_i (Q_G^T g_i Q_A)^2, g_i block i's gradient   (George et al. 2018)

K-FAC's per-token factors drop the correlation between positions of one sequence, so along directions
where the tokens' gradients add up (the mean gradient is one) it can underestimate the curvature by up
to the sequence length; EK-FAC's per-sequence eigenvalues keep those terms.
    exact     H = G_kk = (1/N) sum_t J_tk^T (diag p_t - p_t p_t^T) J_tk, the Gauss-Newton block of layer k
              (= the true Fisher), by Gauss-Newton-vector products: dense on tiny layers, CG otherwise.

T counts the tokens the factors saw and N the loss targets, so A (x) G, diag and EK-FAC share one scale.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp
from tqdm.auto import tqdm

from .data import IGNORE, Blocks, check_batch_size, check_blocks
from .models import layers as find_layers
from .models import weight_matrix
from .shard import local_blocks
from .tape import DiagonalFisher, EKFACCorrection, GradientSum, KFACFactors, Phase, Reducer, all_reduce, run_tape

__all__ = ["CURVATURES", "FACTORED", "DAMPING_MODES", "FISHERS", "FITTERS", "CurvatureOptions", "damping_level",
           "Solve", "ModuleSolve", "IdentitySolve", "ExactSolve", "ModuleSolves", "Passes", "fit",
           "float32_is_enough", "symmetric_eigen", "row_eigen", "kfac_eigen", "ggn_vector_product", "exact_operator",
           "ExactLayer", "exact_layer"]

DAMPING_MODES = ("relative", "absolute")
FISHERS = ("sampled", "empirical")


def check_damping(damping) -> float:
    """damping as a float, or a ValueError that says what to pass."""
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) or not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0 (e.g. 0.1, relative to the mean eigenvalue), "
                         f"got {damping!r}")
    return float(damping)


def damping_level(damping: float, mode: str, mean_eigenvalue: float) -> float:
    """lambda = damping ("absolute") or damping * mean eigenvalue of H ("relative")."""
    if mode == "absolute":
        return check_damping(damping)
    if mode == "relative":
        return check_damping(damping) * float(mean_eigenvalue)
    raise ValueError(f"damping_mode must be one of {', '.join(DAMPING_MODES)}, got {mode!r}")


@dataclass(frozen=True)
class CurvatureOptions:
    """The curvature settings of a scoring pass, checked once, before any pass runs."""
    curvature: str = "kfac"          # a name in FITTERS
    damping: float = 0.1             # lambda ("absolute") or lambda / mean eigenvalue ("relative")
    damping_mode: str = "relative"
    fisher: str = "sampled"          # labels drawn from the model (true Fisher) or the data's (empirical)
    max_dense: int = 1024            # "exact": layers with at most this many weights are built densely

    def __post_init__(self):
        if self.curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {self.curvature!r}: use one of {', '.join(CURVATURES)}")
        damping_level(self.damping, self.damping_mode, 1.0)    # the one check of the damping and its mode
        if self.fisher not in FISHERS:
            raise ValueError(f"fisher must be 'sampled' (true Fisher) or 'empirical' (data labels), got {self.fisher!r}")
        if isinstance(self.max_dense, bool) or not isinstance(self.max_dense, numbers.Integral) or self.max_dense < 0:
            raise ValueError(f"max_dense must be a whole number >= 0, got {self.max_dense!r}")

    def require_factored(self, user: str) -> CurvatureOptions:
        """self, or a ValueError when `user` needs one solve per module and the curvature is "exact"."""
        if self.curvature not in FACTORED:
            raise ValueError(f"{user} uses the factored curvatures: {', '.join(FACTORED)}; got {self.curvature!r}")
        return self


# ----------------------------------------------------------------------------- the solve objects

class Solve:
    """(H + lam I) for one module's (d_out, d_in) weight, or one layer's flattened weights ("exact")."""
    lam: float
    mean_eigenvalue: float           # trace(H) / dimension: what relative damping multiplies

    def with_damping(self, value: float, mode: str = "relative") -> Solve:
        """The same curvature with lam = value ("absolute") or value * mean eigenvalue ("relative")."""
        return dataclasses.replace(self, lam=damping_level(value, mode, self.mean_eigenvalue))

    def solve(self, g: torch.Tensor) -> torch.Tensor:      # pragma: no cover - interface
        raise NotImplementedError

    def matvec(self, v: torch.Tensor) -> torch.Tensor:     # pragma: no cover - interface
        raise NotImplementedError

    def zeta2(self, g: torch.Tensor) -> float:
        """g^T (H + lam I)^-1 g (arXiv 2603.00910, section 3)."""
        return self.zeta2_report(g)[0]

    def zeta2_report(self, g: torch.Tensor) -> tuple[float, dict]:
        """zeta^2 and what the solver says about it (conjugate gradients: iterations and residual)."""
        return float((g.double() * self.solve(g).double()).sum()), {}

    def zeta2_grid(self, g: torch.Tensor, dampings: Iterable[float], mode: str = "relative") -> np.ndarray:
        """zeta^2 at each damping of a grid."""
        return np.array([self.with_damping(d, mode).zeta2(g) for d in dampings])


@dataclass(frozen=True, eq=False)
class ModuleSolve(Solve):
    """H stored as a diagonal in a rotated basis: solve(g) = Q_G [(Q_G^T g Q_A) / (eig + lam)] Q_A^T;
    diag uses Q = I.

    A thin basis (Q_G (d_out, r_g) or Q_A (d_in, r_a) with fewer columns than rows, from `row_eigen`)
    means H is 0 outside it, so the rest of g, g_perp = g - Q_G (Q_G^T g Q_A) Q_A^T, is divided by lam
    alone: solve(g) = Q_G [(Q_G^T g Q_A) / (eig + lam)] Q_A^T + g_perp / lam."""
    eig: torch.Tensor                  # (r_g, r_a) eigenvalues of H in the basis ((d_out, d_in) when full)
    lam: float
    q_a: torch.Tensor | None = None    # (d_in, r_a), r_a = d_in unless thin
    q_g: torch.Tensor | None = None    # (d_out, r_g)

    @property
    def thin(self) -> bool:
        return self.q_a is not None and (self.q_a.shape[1] < self.q_a.shape[0] or self.q_g.shape[1] < self.q_g.shape[0])

    @property
    def dim(self) -> int:
        """The number of weights, d_out * d_in."""
        return self.eig.numel() if self.q_a is None else self.q_a.shape[0] * self.q_g.shape[0]

    @property
    def mean_eigenvalue(self) -> float:
        return float(self.eig.sum(dtype=torch.float64)) / self.dim

    def spectrum(self) -> torch.Tensor:
        """Every eigenvalue of H, the zeros outside a thin basis included."""
        if not self.thin:
            return self.eig
        return torch.cat([self.eig.flatten(), self.eig.new_zeros(self.dim - self.eig.numel())])

    def _rotate(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Q_G^T g Q_A, and g_perp when the basis is thin: formed directly, not as a difference of norms,
        and projected out twice ("twice is enough": Parlett, "The Symmetric Eigenvalue Problem", 1980,
        section 6.9), since the first difference's rounding leaves a part inside the basis that g^T
        solve(g) would divide by a small lam at first order."""
        if self.q_a is None:
            return g, None
        q_a, q_g = self.q_a.to(g.dtype), self.q_g.to(g.dtype)      # zeta2_grid rotates in float64
        rotated = q_g.T @ g @ q_a
        if not self.thin:
            return rotated, None
        rest = g - q_g @ rotated @ q_a.T
        return rotated, rest - q_g @ (q_g.T @ rest @ q_a) @ q_a.T

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        if self.q_a is None:
            return g / (self.eig + self.lam)
        rotated, rest = self._rotate(g)
        step = self.q_g @ (rotated / (self.eig + self.lam)) @ self.q_a.T
        return step if rest is None else step + rest / self.lam

    def zeta2_report(self, g: torch.Tensor) -> tuple[float, dict]:
        """g^T (H + lam I)^-1 g = sum_i (Q^T g)_i^2 / (e_i + lam) (+ ||g_perp||^2 / lam when thin): one
        rotation of g (and a way back only for a thin basis)."""
        rotated, rest = self._rotate(g)
        zeta2 = (rotated.double().square() / (self.eig.double() + self.lam)).sum()
        return float(zeta2 if rest is None else zeta2 + rest.double().square().sum() / self.lam), {}

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.q_a is None:
            return v * (self.eig + self.lam)
        rotated, rest = self._rotate(v)
        out = self.q_g @ (rotated * (self.eig + self.lam)) @ self.q_a.T
        return out if rest is None else out + self.lam * rest

    def zeta2_grid(self, g: torch.Tensor, dampings: Iterable[float], mode: str = "relative") -> np.ndarray:
        """sum_i (Q^T g)_i^2 / (e_i + lam) (+ ||g_perp||^2 / lam) per damping, in float64: the gradient is
        rotated once, so a slider over the grid costs no matmul."""
        rotated, rest = self._rotate(g.double())
        r2, rest2 = rotated ** 2, 0.0 if rest is None else float((rest ** 2).sum())
        eig, mean = self.eig.double().expand_as(r2), self.mean_eigenvalue
        lams = [damping_level(d, mode, mean) for d in dampings]
        return np.array([float((r2 / (eig + lam)).sum()) + (rest2 / lam if rest2 else 0.0) for lam in lams])


@dataclass(frozen=True, eq=False)
class IdentitySolve(Solve):
    """No curvature: (lam I)^-1 g = g / lam, so zeta^2 = ||g||^2 / lam. Its scale is 1, so both damping
    modes give lam = damping."""
    lam: float
    mean_eigenvalue = 1.0

    def spectrum(self) -> torch.Tensor:
        return torch.ones(1)       # cpu on purpose: the unit scale, for plots

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        return g / self.lam

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.lam

    def zeta2_grid(self, g: torch.Tensor, dampings: Iterable[float], mode: str = "relative") -> np.ndarray:
        return float((g.double() ** 2).sum()) / np.array([damping_level(d, mode, 1.0) for d in dampings])


# float32 is kept when eps32 * sqrt(n) * (largest / mean eigenvalue) stays under this (see
# float32_is_enough). On SmolLM2-135M at 2,048 prose tokens the worst of its 330 factors (layer 11's
# down_proj input, largest / mean = 1,535 over n = 1,536) sits at 7.2e-3, and zeta^2 with every factor in
# float32 is within 9.1e-5 of the float64 path on every layer (benchmarks/README.md): the bound is
# pessimistic by two orders, so 1e-2 keeps those factors and still sends a 4,864-wide factor with one
# dominant direction (4.1e-2) to float64.
FLOAT32_SPREAD_TOLERANCE = 1e-2


def float32_is_enough(eig: torch.Tensor) -> bool:
    """Whether a float32 eigendecomposition with eigenvalues `eig` is accurate enough for the damped solves.

    A backward-stable eigh returns the exact decomposition of F + E with ||E|| ~ sqrt(n) eps ||F||
    (Demmel, "Applied Numerical Linear Algebra", 1997, section 5.2). The solves damp by a multiple of the
    mean eigenvalue, so what matters is ||E|| relative to the mean: sqrt(n) eps32 lambda_max / mean(lambda).
    Factors whose spectrum is dominated by a few directions (the ratio grows) are redone in float64."""
    eig = eig.double()
    mean = float(eig.clamp_min(0).mean())
    if not torch.isfinite(eig).all() or mean <= 0:
        return False
    spread = float(eig.max()) / mean
    return torch.finfo(torch.float32).eps * eig.numel() ** 0.5 * spread <= FLOAT32_SPREAD_TOLERANCE


def symmetric_eigen(matrix: torch.Tensor, dtype=None):
    """Eigenvalues (clipped at 0: the factors are PSD) and eigenvectors of a symmetric factor, on the
    matrix's device (a GPU's solver when the factor lives there).

    dtype None (default): float32 where the factor's conditioning allows (`float32_is_enough`), float64
    otherwise: float32 costs about half on a CPU, and far less on most GPUs. Pass torch.float64 for the
    float64 path alone."""
    if dtype is not None:
        eig, vec = torch.linalg.eigh(matrix.to(dtype))
        return eig.clamp_min(0).float(), vec.float()
    try:
        eig, vec = torch.linalg.eigh(matrix.float())
        if float32_is_enough(eig):
            return eig.clamp_min(0), vec
    except torch.linalg.LinAlgError:      # float32 did not converge: float64 will
        pass
    eig, vec = torch.linalg.eigh(matrix.double())
    return eig.clamp_min(0).float(), vec.float()


def row_eigen(rows: torch.Tensor, scale: float, dtype=torch.float64):
    """The eigenpairs of F = X^T X / scale from its T rows X (T, d), T < d: F has rank at most T, and with
    X^T = Q R (thin QR), F = Q (R R^T / scale) Q^T, so the (T, T) eigh of R R^T / scale gives the
    eigenvalues and Q its eigenvectors: (T,) and (d, T), against a (d, d) eigh of F (the R-SVD: Chan,
    "An improved algorithm for computing the singular value decomposition", ACM TOMS 8(1), 1982).

    F's other d - T eigenvalues are exactly 0 (`ModuleSolve` treats the directions outside Q that way),
    where a (d, d) eigh of the summed factor returns rounding noise there, which the damped solves divide
    by (e_A e_G + lambda) with e_G as large as G's top eigenvalue. float64 by default: on (T, T) it costs
    a fraction of a float32 (d, d) eigh. A factor less than twice as wide as its rows gets the full (d, d)
    eigh of its float64 sum instead, which is cheaper there (`benchmarks/bench_eigh.py`) and as exact."""
    if rows.shape[1] < 2 * rows.shape[0]:
        x = rows.to(dtype)
        eig, vec = torch.linalg.eigh(x.T @ x / scale)
        return eig.clamp_min(0).float(), vec.float()
    q, r = torch.linalg.qr(rows.T.to(dtype))
    eig, vec = torch.linalg.eigh(r @ r.T / scale)
    return eig.clamp_min(0).float(), (q @ vec).float()


def kfac_eigen(A: torch.Tensor, G: torch.Tensor, dtype=torch.float64):
    """Eigendecompositions of the K-FAC factors: (alpha, Q_A, gamma, Q_G)."""
    alpha, q_a = symmetric_eigen(A, dtype)
    gamma, q_g = symmetric_eigen(G, dtype)
    return alpha, q_a, gamma, q_g


# ----------------------------------------------------------------------------- exact Gauss-Newton

@contextlib.contextmanager
def _eager_attention(model):
    """Forward-mode AD has no rule for fused SDPA kernels: use eager attention inside, restore after."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    try:
        if switch:
            model.set_attn_implementation("eager")
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


def _layer_params(model, layer_index):
    layer = find_layers(model)[layer_index]
    names = [f"{layer.name}.{m}.weight" for m in layer.linears]
    return layer, names


def ggn_vector_product(model, blocks: Blocks, layer_index: int, v: dict, batch_size: int = 4) -> dict:
    """G_kk v = (1/N) sum_t J_tk^T (diag p_t - p_t p_t^T) J_tk v over the blocks' N targets.

    J v by forward-mode AD (jvp), the output-space Gauss-Newton matrix applied in closed form, and
    J^T u by reverse mode (vjp); v and the result map parameter names to weight-shaped tensors.
    """
    check_blocks(model, blocks)
    _, names = _layer_params(model, layer_index)
    params = {k: p.detach() for k, p in model.named_parameters()}
    theta = {n: params[n] for n in names}
    n_targets = blocks.n_targets
    out = {n: torch.zeros_like(t) for n, t in theta.items()}
    device = next(model.parameters()).device
    # out of place throughout: `exact_operator` maps this over many v at once (torch.func.vmap)
    with _eager_attention(model), torch.enable_grad():
        for batch in blocks.batches(batch_size, device=device):
            ids, mask, targets = batch["input_ids"], batch["attention_mask"], batch["labels"][:, 1:]

            def logits_of(th, ids=ids, mask=mask):     # bound now: jvp and vjp call it within this batch
                return functional_call(model, {**params, **th}, (ids,), {"attention_mask": mask, "use_cache": False}).logits[:, :-1]

            logits, jv = jvp(logits_of, (theta,), ({n: v[n] for n in names},))
            p = torch.softmax(logits.float(), dim=-1)
            u = p * jv - p * (p * jv).sum(-1, keepdim=True)          # (diag p - p p^T) J v per position
            u = u * (targets != IGNORE).unsqueeze(-1) / n_targets
            _, pullback = vjp(logits_of, theta)
            (grads,) = pullback(u.to(logits.dtype))
            out = {n: out[n] + grads[n] for n in names}
    return out


@dataclass(frozen=True, eq=False)
class ExactSolve(Solve):
    """G_kk + lam I for one layer's flattened weights (dimension D): Cholesky on the dense block when it
    was built, else conjugate gradients on Gauss-Newton-vector products."""
    gvp: Callable[[torch.Tensor], torch.Tensor]   # x (D,) float64 -> G_kk x
    mean_eigenvalue: float                         # trace / D (Hutchinson estimate on the CG path)
    lam: float = 0.0
    dense: torch.Tensor | None = None              # (D, D) float64 G_kk when built densely
    cg_tol: float = 1e-6
    cg_max_iter: int = 200

    def cg(self, g: torch.Tensor) -> tuple[torch.Tensor, int, float]:
        """(G_kk + lam I)^-1 g, the CG iterations (0 when dense) and the relative residual ||r|| / ||g||."""
        if self.dense is not None:
            eye = torch.eye(len(self.dense), dtype=torch.float64, device=self.dense.device)
            chol = torch.linalg.cholesky(self.dense + self.lam * eye)
            return torch.cholesky_solve(g[:, None], chol)[:, 0], 0, 0.0
        return _conjugate_gradients(lambda y: self.gvp(y) + self.lam * y, g, self.cg_tol, self.cg_max_iter)

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        return self.cg(g)[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return (self.gvp(v) if self.dense is None else self.dense @ v) + self.lam * v

    def zeta2_report(self, g: torch.Tensor) -> tuple[float, dict]:
        x, iterations, residual = self.cg(g)
        return float(g @ x), {"cg_iterations": iterations, "cg_residual": residual}


def batched_products(fn: Callable[[torch.Tensor], torch.Tensor], vectors: torch.Tensor, *, chunk: int) -> torch.Tensor:
    """fn applied to each row of `vectors`, stacked: one batched call per `chunk` rows (torch.func.vmap),
    or one call per row where the model has an operation vmap cannot batch (its error says which)."""
    try:
        return torch.func.vmap(fn, chunk_size=max(1, min(len(vectors), chunk)))(vectors)
    except RuntimeError as err:
        message = str(err).lower()
        if isinstance(err, torch.OutOfMemoryError) or ("vmap" not in message and "batching rule" not in message):
            raise
        warnings.warn(f"the Gauss-Newton products could not be batched ({str(err).splitlines()[0][:200]}); "
                      "computing them one at a time", RuntimeWarning, stacklevel=2)
        return torch.stack([fn(v) for v in vectors])


def exact_operator(model: nn.Module, blocks: Blocks, layer_index: int, *, max_dense: int = 1024,
                   hutchinson_probes: int = 8, seed: int = 0, batch_size: int = 4, cg_tol: float = 1e-6,
                   cg_max_iter: int = 200) -> ExactSolve:
    """Layer k's undamped Gauss-Newton block: dense (D <= max_dense), built column by column from
    Gauss-Newton-vector products, or as products alone with the mean eigenvalue a Hutchinson trace
    estimate (Rademacher probes, seeded; Hutchinson, "A stochastic estimator of the trace of the influence
    matrix", 1990)."""
    _, names = _layer_params(model, layer_index)
    like = {n: p for n, p in model.named_parameters() if n in names}
    device = next(model.parameters()).device         # the products run there

    def gvp(x):
        return _flatten(ggn_vector_product(model, blocks, layer_index, _unflatten(x.float(), like, names),
                                           batch_size=batch_size), names).double()

    dim = sum(p.numel() for p in like.values())
    if dim <= max_dense:
        # all D columns G_kk e_j as one batched product (torch.func.vmap), in chunks whose logit tangents
        # (batch x positions x vocabulary floats per column) stay under about 256 MB
        per_column = min(batch_size, len(blocks)) * blocks.block_size * model.config.vocab_size
        dense = batched_products(gvp, torch.eye(dim, dtype=torch.float64, device=device), chunk=(1 << 26) // per_column).T
        dense = (dense + dense.T) / 2
        return ExactSolve(gvp, float(torch.trace(dense)) / dim, dense=dense)
    # cpu on purpose: the probes are drawn on the CPU so a seed gives the same trace estimate on any device
    gen = torch.Generator().manual_seed(seed)
    probes = [torch.randint(0, 2, (dim,), generator=gen).to(device).double() * 2 - 1  # cpu on purpose: as above
              for _ in range(hutchinson_probes)]
    mean_eig = float(sum(z @ gvp(z) for z in probes)) / (hutchinson_probes * dim)
    return ExactSolve(gvp, mean_eig, cg_tol=cg_tol, cg_max_iter=cg_max_iter)


@dataclass(frozen=True, eq=False)
class ExactLayer:
    """The exact damped Gauss-Newton block of one layer: zeta^2 = g^T (G_kk + lam I)^-1 g."""
    zeta2: float
    lam: float
    mean_eigenvalue: float
    dense: torch.Tensor | None        # (D, D) G_kk when built densely, else None
    cg_iterations: int                # 0 on the dense path
    cg_residual: float                # relative residual ||r|| / ||g|| of the final CG iterate


def exact_layer(model: nn.Module, blocks: Blocks, layer_index: int, grad: dict, *, damping: float = 0.1,
                damping_mode: str = "relative", max_dense: int = 1024, cg_tol: float = 1e-6, cg_max_iter: int = 200,
                hutchinson_probes: int = 8, seed: int = 0, batch_size: int = 4) -> ExactLayer:
    """zeta_k^2 with the exact Gauss-Newton block (`exact_operator`); `grad` maps parameter names to
    weight-shaped gradients."""
    _, names = _layer_params(model, layer_index)
    op = exact_operator(model, blocks, layer_index, max_dense=max_dense, hutchinson_probes=hutchinson_probes,
                        seed=seed, batch_size=batch_size, cg_tol=cg_tol, cg_max_iter=cg_max_iter)
    op = op.with_damping(damping, damping_mode)
    zeta2, report = op.zeta2_report(_flatten(grad, names).to(next(model.parameters()).device).double())
    return ExactLayer(zeta2, op.lam, op.mean_eigenvalue, None if op.dense is None else op.dense.float(),
                      report["cg_iterations"], report["cg_residual"])


def _flatten(d: dict, names) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in names])


def _unflatten(x: torch.Tensor, like: dict, names) -> dict:
    out, i = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = x[i:i + size].view_as(like[n])
        i += size
    return out


def _conjugate_gradients(matvec, b, tol, max_iter):
    """Solve M x = b for symmetric positive definite M; returns x, iterations, relative residual
    (Hestenes & Stiefel, "Methods of Conjugate Gradients for Solving Linear Systems", 1952)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    norm_b = float(b.norm()) or 1.0
    for it in range(1, max_iter + 1):
        mp = matvec(p)
        alpha = rs / (p @ mp)
        x += alpha * p
        r -= alpha * mp
        rs_new = r @ r
        if float(rs_new.sqrt()) / norm_b < tol:
            return x, it, float(rs_new.sqrt()) / norm_b
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, max_iter, float(rs.sqrt()) / norm_b


# ----------------------------------------------------------------------------- fitting

@dataclass(frozen=True)
class Passes:
    """How the statistics passes run: model, blocks (each process takes its shard), batch size, the
    sampled labels' seed, and the layers whose modules are reduced (`only`, None for all)."""
    model: nn.Module
    blocks: Blocks
    batch_size: int = 1
    seed: int = 0
    progress: bool = True
    only: frozenset | None = None

    def __post_init__(self):
        check_blocks(self.model, self.blocks)      # before any pass: type, context, vocabulary
        if self.blocks.n_targets == 0:
            raise ValueError(f"every label of the {self.blocks.task!r} blocks is masked: there is no loss to "
                             "differentiate")
        check_batch_size(self.batch_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")

    def layers(self) -> list:
        return [layer for layer in find_layers(self.model) if self.only is None or layer.index in self.only]

    def keys(self) -> list[tuple[int, str]]:
        """(layer index, module name) of every module reduced, in model order."""
        return [(layer.index, name) for layer in self.layers() for name in layer.linears]

    def run(self, reducers: list[Reducer], labels: str, reduction: str, desc: str,
            gradients: GradientSum | None = None) -> None:
        """One pass over this process's blocks feeding `reducers` (and `gradients` of the mean data loss from
        the same forward pass), the sums then all-reduced across processes (see `tape.run_tape`)."""
        shard, ids = local_blocks(self.blocks)
        then = [Phase([gradients], "data", "mean")] if gradients is not None else None
        run_tape(self.model, shard, reducers, labels=labels, reduction=reduction, batch_size=self.batch_size,
                 seed=self.seed, block_ids=ids, n_targets=self.blocks.n_targets, progress=self.progress, desc=desc,
                 only=self.only, then=then)
        all_reduce([*reducers, *([gradients] if gradients is not None else [])])

    def gradients(self) -> dict:
        """g per (layer, module): the weight gradient of the mean loss over all of the blocks' targets."""
        grads = GradientSum()
        self.run([grads], "data", "mean", "gradients")
        return grads.state


@dataclass(frozen=True, eq=False)
class ModuleSolves:
    """What `fit` returns: a `Solve` per (layer, module) key ((layer, "*") for "exact"), and, when asked,
    the gradients of the mean data loss under the same keys (flattened per layer for "exact")."""
    solves: dict
    gradients: dict | None = None

    def __iter__(self):      # `solves, grads = module_solves(..., gradients=True)`, as notebook 02 unpacks it
        return iter((self.solves, self.gradients))

    def with_damping(self, value: float, mode: str = "relative") -> ModuleSolves:
        return ModuleSolves({k: s.with_damping(value, mode) for k, s in self.solves.items()}, self.gradients)

    def newton(self) -> tuple[dict, float]:
        """The damped Newton steps Delta_k = (H + lam I)^-1 g_k per key and zeta^2 = sum_k g_k^T Delta_k."""
        steps = {k: s.solve(self.gradients[k]) for k, s in self.solves.items()}
        return steps, float(sum((self.gradients[k].double() * step.double()).sum() for k, step in steps.items()))


class _KFACEigen(KFACFactors):
    """K-FAC factors decomposed one module at a time, each factor freed once decomposed (measured on
    SmolLM2-135M: 1.1 GB of factors against a 4 GiB budget); a factor kept as rows (wider than the tokens
    of the pass) is decomposed from them (`row_eigen`)."""

    def _eigen(self, key: tuple, scale: int) -> tuple:
        rows = self.row_matrix(key)
        if rows is not None:
            del self.rows[key]
            return row_eigen(rows, scale)
        return symmetric_eigen(self.state.pop(key).div_(scale))

    def eigen_all(self, keys: list, n_targets: int, *, workers: int = 1) -> dict:
        """(alpha, Q_A, gamma, Q_G) of A = sum a a^T / T and G = sum b b^T / N for every key; q/k/v (and
        gate/up) share one A, decomposed once. The distinct factors are split over `workers` threads of
        one intra-op thread each: on a CPU that beats one decomposition at a time over all threads
        (`bench_eigh.py`: 0.81x at 1,536 wide on two cores), since two thirds of a dense eigh is the
        reduction to tridiagonal form, whose matrix-vector half is bound by memory traffic, not by the
        cores. Each job pops its own factor when it starts, so the factors are still freed one by one."""
        jobs = {}
        for key in keys:
            jobs.setdefault(("A", *self.a_owner[key]), self.tokens)
            jobs[("G", *key)] = n_targets
        if workers <= 1:
            done = {job: self._eigen(job, scale) for job, scale in jobs.items()}
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)       # process-wide: the pool's threads start with one each
            try:
                with ThreadPoolExecutor(workers) as pool:
                    done = dict(zip(jobs, pool.map(lambda job: self._eigen(*job), jobs.items())))
            finally:
                torch.set_num_threads(threads)
        return {key: (*done[("A", *self.a_owner[key])], *done[("G", *key)]) for key in keys}


# the split was measured on two cores; with more threads one decomposition at a time keeps all of them,
# and a many-core machine never holds dozens of LAPACK workspaces (each a few times a factor) at once
MAX_EIGEN_WORKERS = 4


def _eigen_workers(factors: KFACFactors) -> int:
    """One decomposition per CPU thread on a CPU of 2-4 threads (`_KFACEigen.eigen_all`); otherwise, and
    on a GPU, whose solver takes them one by one, a single worker."""
    tensors = [*factors.state.values(), *(x for rows in factors.rows.values() for x in rows)]
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    threads = torch.get_num_threads()
    return threads if on_cpu and threads <= MAX_EIGEN_WORKERS else 1


def _statistics(passes: Passes, options: CurvatureOptions, reducer: Reducer, desc: str, gradients: bool):
    """The first statistics pass, with the gradients riding on it when asked (one forward, two backwards)."""
    grads = GradientSum() if gradients else None
    passes.run([reducer], "sampled" if options.fisher == "sampled" else "data", "sum", desc, grads)
    return None if grads is None else grads.state


def _fit_identity(passes: Passes, options: CurvatureOptions, gradients: bool):
    return {k: IdentitySolve(lam=0.0) for k in passes.keys()}, passes.gradients() if gradients else None


def _fit_diag(passes: Passes, options: CurvatureOptions, gradients: bool):
    fisher = DiagonalFisher()
    grads = _statistics(passes, options, fisher, "gradients + diag Fisher", gradients)
    n = passes.blocks.n_targets
    return {k: ModuleSolve(fisher.state.pop(k).div_(n), 0.0) for k in passes.keys()}, grads


def _fit_kfac(passes: Passes, options: CurvatureOptions, gradients: bool, corrected: bool = False):
    # K-FAC may keep a wide factor's token rows (a thin eigenbasis); EK-FAC's corrections need full bases
    factors = _KFACEigen(None if corrected else len(passes.blocks) * passes.blocks.block_size)
    grads = _statistics(passes, options, factors, "gradients + K-FAC factors", gradients)
    n = passes.blocks.n_targets
    bases = factors.eigen_all(passes.keys(), n, workers=_eigen_workers(factors))   # k -> (alpha, Q_A, gamma, Q_G)
    if not corrected:
        return {k: ModuleSolve(torch.outer(gamma, alpha), 0.0, q_a, q_g)
                for k, (alpha, q_a, gamma, q_g) in bases.items()}, grads
    # EK-FAC never forms K-FAC's eigenvalue grid (0.4 GB on SmolLM2-135M)
    corr = EKFACCorrection({k: (q_a, q_g) for k, (_, q_a, _, q_g) in bases.items()})
    passes.run([corr], "sampled" if options.fisher == "sampled" else "data", "sum", "EK-FAC corrections")
    return {k: ModuleSolve(corr.state.pop(k).div_(n), 0.0, q_a, q_g) for k, (_, q_a, _, q_g) in bases.items()}, grads


def _param_shaped(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """A (d_out, d_in) statistic in the parameter's own layout (transposed for GPT-2's Conv1D)."""
    return matrix if weight_matrix(module) is module.weight else matrix.T


def _fit_exact(passes: Passes, options: CurvatureOptions, gradients: bool):
    found = passes.layers()
    grads = passes.gradients() if gradients else None
    device = next(passes.model.parameters()).device
    solves, flat = {}, {}
    for layer in tqdm(found, desc="exact GGN", unit="layer", disable=not passes.progress, leave=False):
        solves[(layer.index, "*")] = exact_operator(passes.model, passes.blocks, layer.index, max_dense=options.max_dense,
                                                    seed=passes.seed, batch_size=passes.batch_size)
        if grads is not None:        # in the order of the parameters G_kk's products use
            flat[(layer.index, "*")] = torch.cat([_param_shaped(mod, grads[(layer.index, m)]).reshape(-1)
                                                  for m, mod in layer.linears.items()]).to(device).double()
    return solves, flat if gradients else None


FITTERS: dict[str, Callable] = {"identity": _fit_identity, "diag": _fit_diag, "kfac": _fit_kfac,
                                "ekfac": functools.partial(_fit_kfac, corrected=True), "exact": _fit_exact}
CURVATURES = tuple(FITTERS)
FACTORED = tuple(c for c in CURVATURES if c != "exact")     # one solve per module (exact: one per layer)


def fit(passes: Passes, options: CurvatureOptions, *, gradients: bool = False) -> ModuleSolves:
    """The solves of `options.curvature` for the modules of `passes.only` (all by default), damped as
    `options` says; `gradients=True` also returns the gradients of the mean data loss under the same keys."""
    solves, grads = FITTERS[options.curvature](passes, options, gradients)
    return ModuleSolves({k: s.with_damping(options.damping, options.damping_mode) for k, s in solves.items()}, grads)
