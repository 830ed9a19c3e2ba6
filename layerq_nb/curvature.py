"""Damped curvature blocks H~_kk and their solves, one strategy per name
(K-FAC: Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
arXiv 1503.05671; EK-FAC: George et al., "Fast Approximate Natural Gradient Descent in a Kronecker-factored
Eigenbasis", arXiv 1806.03884).

Every strategy returns, per linear module (or per layer for "exact"), an object with `solve(g)`
computing (H + lambda I)^-1 g and the damping `lam` it used. Damping: `"absolute"` adds lambda I;
`"relative"` (default) adds lambda times the mean eigenvalue of H (trace / dimension).

    identity  H = I, lambda absolute:              zeta^2 = ||g||^2 / lambda (the grad-norm baseline)
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
from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp, vjp

from .data import IGNORE, Blocks
from .models import layers as find_layers

__all__ = ["CURVATURES", "DAMPING_MODES", "damping_level", "ModuleSolve", "float32_is_enough", "symmetric_eigen",
           "kfac_eigen", "ggn_vector_product", "ExactLayer", "exact_layer"]

CURVATURES = ("identity", "diag", "kfac", "ekfac", "exact")
DAMPING_MODES = ("relative", "absolute")


def damping_level(damping: float, mode: str, mean_eigenvalue: float) -> float:
    """lambda = damping ("absolute") or damping * mean eigenvalue of H ("relative")."""
    if not (isinstance(damping, (int, float)) or hasattr(damping, "__float__")) or not float(damping) >= 0 \
            or float(damping) == float("inf"):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    if mode == "absolute":
        return float(damping)
    if mode == "relative":
        return float(damping) * float(mean_eigenvalue)
    raise ValueError(f"damping_mode must be 'absolute' or 'relative', got {mode!r}")


@dataclass(frozen=True, eq=False)
class ModuleSolve:
    """(H + lam I)^-1 for one module's (d_out, d_in) weight, stored as a diagonal in a rotated basis:
    solve(g) = Q_G [(Q_G^T g Q_A) / (eig + lam)] Q_A^T; identity and diag use Q = I."""
    eig: torch.Tensor                  # (d_out, d_in) eigenvalues of H in the basis
    lam: float
    q_a: torch.Tensor | None = None    # (d_in, d_in)
    q_g: torch.Tensor | None = None    # (d_out, d_out)

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        if self.q_a is None:
            return g / (self.eig + self.lam)
        rotated = self.q_g.T @ g @ self.q_a
        return self.q_g @ (rotated / (self.eig + self.lam)) @ self.q_a.T

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """(H + lam I) v, for checks against dense references."""
        if self.q_a is None:
            return v * (self.eig + self.lam)
        return self.q_g @ ((self.q_g.T @ v @ self.q_a) * (self.eig + self.lam)) @ self.q_a.T


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
    _, names = _layer_params(model, layer_index)
    params = {k: p.detach() for k, p in model.named_parameters()}
    theta = {n: params[n] for n in names}
    n_targets = blocks.n_targets
    out = {n: torch.zeros_like(t) for n, t in theta.items()}
    device = next(model.parameters()).device
    with _eager_attention(model), torch.enable_grad():
        for batch in blocks.batches(batch_size):
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            targets = batch["labels"][:, 1:].to(device)

            def logits_of(th):
                return functional_call(model, {**params, **th}, (ids,), {"attention_mask": mask, "use_cache": False}).logits[:, :-1]

            logits, jv = jvp(logits_of, (theta,), ({n: v[n] for n in names},))
            p = torch.softmax(logits.float(), dim=-1)
            u = p * jv - p * (p * jv).sum(-1, keepdim=True)          # (diag p - p p^T) J v per position
            u = u * (targets != IGNORE).unsqueeze(-1) / n_targets
            _, pullback = vjp(logits_of, theta)
            (grads,) = pullback(u.to(logits.dtype))
            for n in names:
                out[n] += grads[n]
    return out


@dataclass(frozen=True, eq=False)
class ExactLayer:
    """The exact damped Gauss-Newton block of one layer: zeta^2 = g^T (G_kk + lam I)^-1 g."""
    zeta2: float
    lam: float
    mean_eigenvalue: float
    dense: torch.Tensor | None        # (D, D) G_kk when built densely, else None
    cg_iterations: int                # 0 on the dense path
    cg_residual: float                # relative residual ||r|| / ||g|| of the final CG iterate


def _flatten(d: dict, names) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in names])


def _unflatten(x: torch.Tensor, like: dict, names) -> dict:
    out, i = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = x[i:i + size].view_as(like[n])
        i += size
    return out


def exact_layer(model, blocks: Blocks, layer_index: int, grad: dict, damping: float = 0.1,
                damping_mode: str = "relative", max_dense: int = 1024, cg_tol: float = 1e-6,
                cg_max_iter: int = 200, hutchinson_probes: int = 8, seed: int = 0, batch_size: int = 4) -> ExactLayer:
    """zeta_k^2 with the exact Gauss-Newton block: dense (D <= max_dense) or conjugate gradients.

    Dense: G_kk column by column from Gauss-Newton-vector products, then a Cholesky solve. CG: the
    mean eigenvalue for relative damping is a Hutchinson trace estimate (Rademacher probes, seeded).
    """
    _, names = _layer_params(model, layer_index)
    g = _flatten(grad, names).to(next(model.parameters()).device).double()   # the products run there
    dim = g.numel()

    def gvp(x):
        return _flatten(ggn_vector_product(model, blocks, layer_index, _unflatten(x.float(), grad, names),
                                           batch_size=batch_size), names).double()

    if dim <= max_dense:
        dense = torch.stack([gvp(e) for e in torch.eye(dim, dtype=torch.float64, device=g.device)], dim=1)
        dense = (dense + dense.T) / 2
        mean_eig = float(torch.trace(dense)) / dim
        lam = damping_level(damping, damping_mode, mean_eig)
        chol = torch.linalg.cholesky(dense + lam * torch.eye(dim, dtype=torch.float64, device=g.device))
        x = torch.cholesky_solve(g[:, None], chol)[:, 0]
        return ExactLayer(float(g @ x), lam, mean_eig, dense.float(), 0, 0.0)
    # cpu on purpose: the probes are drawn on the CPU so a seed gives the same trace estimate on any device
    gen = torch.Generator().manual_seed(seed)
    probes = [torch.randint(0, 2, (dim,), generator=gen).to(g.device).double() * 2 - 1  # cpu on purpose: as above
              for _ in range(hutchinson_probes)]
    mean_eig = float(sum(z @ gvp(z) for z in probes)) / (hutchinson_probes * dim)
    lam = damping_level(damping, damping_mode, mean_eig)
    x, iters, res = _conjugate_gradients(lambda y: gvp(y) + lam * y, g, cg_tol, cg_max_iter)
    return ExactLayer(float(g @ x), lam, mean_eig, None, iters, res)


def _conjugate_gradients(matvec, b, tol, max_iter):
    """Solve M x = b for symmetric positive definite M; returns x, iterations, relative residual."""
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
