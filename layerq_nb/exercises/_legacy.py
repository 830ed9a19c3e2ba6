"""Checks for the tutorials' exercises, and their solutions (kept here, out of the notebooks).

Every `check_*` prints what is right or wrong with a hint and returns True or False; it never raises
on a wrong answer, so a notebook with unanswered exercises still runs top to bottom. `solution(key)`
returns a widget with a button that reveals the worked solution.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

__all__ = [
    "check_layer_count", "check_perplexity", "check_layer_grad_norms", "check_largest_layer", "check_zeta2",
    "check_quadratic_decrease", "check_shapley", "check_cornerstones", "check_allocation_at", "check_dual_level",
    "check_magnitude_mask", "check_most_pruned", "check_delta", "check_slope", "check_shard", "check_bf16_bytes",
    "SOLUTIONS",
]


class Verdict:
    """True or False, shown in a notebook as one word rather than a bare `False`."""

    def __init__(self, ok: bool):
        self.ok = bool(ok)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return "passed" if self.ok else "not yet (see above)"


def _report(ok: bool, good: str, bad: str) -> Verdict:
    print(("Correct. " + good) if ok else ("Not yet. " + bad))
    return Verdict(ok)


def _unanswered(value, hint: str) -> bool:
    if value is None:
        print("Not answered yet. Hint: " + hint)
        return True
    return False


def _call(fn, *args):
    """Run the student's function; report an exception instead of raising it."""
    try:
        out = fn(*args)
    except Exception as error:          # a student's bug is feedback, not a crash
        return None, f"your function raised {type(error).__name__}: {error}"
    return (None, "your function returned None: write its body") if out is None else (out, None)


# ----------------------------------------------------------------------------- 00 tour

def check_layer_count(n_layers, params_per_layer, model) -> Verdict:
    """00.1: the number of decoder layers and the weights of one layer's linear maps."""
    from ..models import layers
    found = layers(model)
    if _unanswered(n_layers, "len(lq.layers(model)); a Layer has .n_params"):
        return Verdict(False)
    if n_layers != len(found):
        return _report(False, "", f"{n_layers} layers? Count the entries of lq.layers(model).")
    return _report(params_per_layer == found[0].n_params,
                   f"{len(found)} layers of {found[0].n_params:,} weights in their linear maps.",
                   "the layer count is right; one layer's weights are lq.layers(model)[0].n_params "
                   "(q, k, v, o, gate, up, down).")


def check_perplexity(value, loss: float) -> Verdict:
    """00.2: perplexity = exp(mean next-token loss in nats)."""
    if _unanswered(value, "perplexity is exp of the mean loss (natural log)"):
        return Verdict(False)
    return _report(math.isclose(float(value), math.exp(loss), rel_tol=1e-6),
                   f"exp({loss:.4f}) = {math.exp(loss):.3f}: the model is as unsure as a fair choice among that many tokens.",
                   f"{value} is not exp({loss:.4f}). Did you use log base 2 or 10, or forget the exp?")


# ----------------------------------------------------------------------------- 01 gradient isolation

def check_layer_grad_norms(fn, grads: dict, n_layers: int) -> Verdict:
    """01.1: fn(grads, n_layers) -> array of ||g_k||^2, grads keyed by (layer index, module name)."""
    if _unanswered(fn, "sum (g ** 2).sum() over the modules of each layer"):
        return Verdict(False)
    out, error = _call(fn, grads, n_layers)
    if error:
        return _report(False, "", error)
    expected = np.zeros(n_layers)
    for (i, _), g in grads.items():
        expected[i] += float((g.double() ** 2).sum())
    if out is None or np.shape(out) != (n_layers,):
        return _report(False, "", f"return one number per layer: shape ({n_layers},), got {np.shape(out)}")
    ok = np.allclose(np.asarray(out, dtype=float), expected, rtol=1e-5)
    return _report(ok, "Each layer's squared gradient norm is the sum over its linear modules.",
                   "the values differ. Square every entry, sum, and add the modules of the same layer.")


def check_largest_layer(k, isolation) -> Verdict:
    """01.2: the layer with the largest ||g_k||^2."""
    if _unanswered(k, "np.argmax over the layers' squared gradient norms"):
        return Verdict(False)
    best = int(np.argmax(isolation.layer_norm2))
    return _report(int(k) == best, f"layer {best} holds {100 * isolation.share(best):.1f}% of ||g||^2.",
                   f"layer {k} holds {100 * isolation.share(int(k)):.1f}%; one layer holds more.")


# ----------------------------------------------------------------------------- 02 curvature

def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def check_zeta2(fn) -> Verdict:
    """02.1: fn(g, H, lam) -> g^T (H + lam I)^-1 g for a dense symmetric H."""
    if _unanswered(fn, "np.linalg.solve(H + lam * np.eye(len(g)), g), then a dot product"):
        return Verdict(False)
    rng = np.random.default_rng(0)
    for d, lam in ((3, 0.1), (8, 1.0), (5, 0.0)):
        g, H = rng.normal(size=d), _spd(rng, d)
        out, error = _call(fn, g, H, lam)
        if error:
            return _report(False, "", error)
        expected = float(g @ np.linalg.solve(H + lam * np.eye(d), g))
        if out is None or not math.isclose(float(out), expected, rel_tol=1e-6):
            return _report(False, "", f"for d = {d}, lam = {lam} expected {expected:.6g}, got {out}. "
                           "Solve with (H + lam I), not H alone, and do not invert g.")
    return _report(True, "zeta^2 is the squared gradient in the metric of the inverse curvature.", "")


def check_quadratic_decrease(fn) -> Verdict:
    """02.2: fn(zeta2, t) -> decrease of the quadratic model after t times the Newton step."""
    if _unanswered(fn, "plug Delta = -t H^-1 g into -(g^T Delta + Delta^T H Delta / 2)"):
        return Verdict(False)
    for z, t in ((2.0, 1.0), (0.5, 0.5), (3.0, 2.0), (1.0, 0.0)):
        out, error = _call(fn, z, t)
        if error:
            return _report(False, "", error)
        if out is None or not math.isclose(float(out), (t - t * t / 2) * z, rel_tol=1e-9, abs_tol=1e-12):
            return _report(False, "", f"at zeta^2 = {z}, t = {t} expected {(t - t * t / 2) * z}, got {out}. "
                           "The linear term gives t zeta^2, the curvature term takes back t^2 zeta^2 / 2.")
    return _report(True, "(t - t^2/2) zeta^2: largest at t = 1 (zeta^2/2), zero again at t = 2.", "")


# ----------------------------------------------------------------------------- 03 layer quality

def check_shapley(fn) -> Verdict:
    """03.1: fn(value) -> Shapley values of 3 players, value(frozenset) -> float."""
    from itertools import permutations
    if _unanswered(fn, "average each player's marginal contribution over all 3! orders"):
        return Verdict(False)
    rng = np.random.default_rng(1)
    table = {frozenset(s): float(rng.normal()) for s in
             [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]}
    table[frozenset()] = 0.0
    expected = np.zeros(3)
    for order in permutations(range(3)):
        seen = set()
        for p in order:
            expected[p] += table[frozenset(seen | {p})] - table[frozenset(seen)]
            seen.add(p)
    expected /= 6
    out, error = _call(fn, table.__getitem__)
    if error:
        return _report(False, "", error)
    ok = out is not None and np.allclose(np.asarray(out, float), expected, atol=1e-9)
    return _report(ok, f"phi = {np.round(expected, 4)} sums to v(N) - v(empty) = {table[frozenset({0, 1, 2})]:.4f}.",
                   f"expected {np.round(expected, 4)}, got {out}. Weight each marginal by 1/3! per order.")


def check_cornerstones(layers_list, result, fraction: float = 0.5) -> Verdict:
    """03.2: the cornerstone layers of an `ablation.Cornerstone` result at `fraction`."""
    if _unanswered(layers_list, "layers whose drop moves the loss >= fraction of the way to log V"):
        return Verdict(False)
    expected = result.cornerstones(fraction)
    return _report(sorted(int(i) for i in layers_list) == expected,
                   f"cornerstones: {expected}; dropping any of them sends the model most of the way to chance.",
                   f"compare result.drop with {fraction} * (chance_loss - full_loss) = "
                   f"{fraction * (result.chance_loss - result.full_loss):.3f} nats.")


# ----------------------------------------------------------------------------- 04 allocation

def check_allocation_at(fn) -> Verdict:
    """04.1: fn(nu, q, c, beta, lower, upper) -> r(nu) = clip(q/(nu c) - beta, lower, upper)."""
    from ..mdl import allocate
    if _unanswered(fn, "set d/dr_k of the Lagrangian to zero: q_k / (beta_k + r_k) = nu c_k, then clip"):
        return Verdict(False)
    q, c, beta = np.array([0.1, 0.3, 0.6]), np.array([1.0, 2.0, 1.0]), np.array([1.0, 0.5, 2.0])
    for nu in (0.02, 0.1, 0.5):
        expected = allocate(q, 1.0, cost=c, beta=beta, lower=0.0, upper=4.0).problem.x_of_nu(nu)
        out, error = _call(fn, nu, q, c, beta, 0.0, 4.0)
        if error:
            return _report(False, "", error)
        if out is None or not np.allclose(np.asarray(out, float), expected, atol=1e-9):
            return _report(False, "", f"at nu = {nu} expected {np.round(expected, 4)}, got {out}.")
    return _report(True, "one dual level nu sets every layer's allocation.", "")


def check_dual_level(nu, q, budget, cost=1.0, beta=1.0, lower=0.0, upper=np.inf) -> Verdict:
    """04.2: the nu at which the spend sum_k c_k r_k(nu) equals the budget."""
    from ..mdl import allocate, budget_curve
    if _unanswered(nu, "bisect on nu: the spend falls as nu rises"):
        return Verdict(False)
    sol = allocate(q, budget, cost=cost, beta=beta, lower=lower, upper=upper)
    spend = float(budget_curve(sol, [float(nu)])[0])
    return _report(math.isclose(float(nu), sol.nu, rel_tol=1e-6),
                   f"nu* = {sol.nu:.6g}; the spend there is {spend:.6g} = B.",
                   f"at nu = {nu} the spend is {spend:.6g}, the budget {budget:g}: "
                   f"{'raise' if spend > budget else 'lower'} nu.")


# ----------------------------------------------------------------------------- 05 pruning

def check_magnitude_mask(fn) -> Verdict:
    """05.1: fn(weight (numpy 2-d), sparsity) -> boolean mask, True on the floor(s * numel) smallest |W|."""
    if _unanswered(fn, "np.argsort(np.abs(W), axis=None)[:count]"):
        return Verdict(False)
    rng = np.random.default_rng(2)
    for shape, s in (((4, 6), 0.5), ((16, 8), 0.25), ((5, 5), 0.0)):
        w = rng.normal(size=shape)
        out, error = _call(fn, w, s)
        if error:
            return _report(False, "", error)
        count = int(s * w.size)
        if out is None or np.shape(out) != shape:
            return _report(False, "", f"return a mask of shape {shape}, got {np.shape(out)}")
        out = np.asarray(out, bool)
        if out.sum() != count:
            return _report(False, "", f"prune exactly floor(s * numel) = {count} weights, you pruned {out.sum()}")
        if count and np.abs(w[out]).max() > np.abs(w[~out]).min():
            return _report(False, "", "a pruned weight is larger than a kept one: prune the smallest |W|")
    return _report(True, "the smallest magnitudes go first: magnitude pruning.", "")


def check_most_pruned(k, q, sparsity, sizes) -> Verdict:
    """05.2: which layer the MDL map (program B) prunes most."""
    from ..mdl import prune
    if _unanswered(k, "s_k = 1 - q_k / (nu n_k): the smallest gain per weight is pruned most"):
        return Verdict(False)
    s = prune(q, sparsity, sizes=sizes).x
    best = int(np.argmax(s))
    return _report(int(k) == best, f"layer {best} takes s = {s[best]:.3f}: lowest gain per weight.",
                   f"layer {k} takes s = {s[int(k)]:.3f}; another takes more.")


# ----------------------------------------------------------------------------- 06 transfer regret

def check_delta(value, q_source, q_target) -> Verdict:
    """06.1: delta = ||q_T - q_S||_2 on the simplex (normalise first)."""
    from ..mdl import normalise
    if _unanswered(value, "normalise both score vectors to sum 1, then the Euclidean norm of the difference"):
        return Verdict(False)
    expected = float(np.linalg.norm(normalise(q_target) - normalise(q_source)))
    return _report(math.isclose(float(value), expected, rel_tol=1e-6), f"delta = {expected:.5f}.",
                   f"expected {expected:.5f}, got {value}. Did you normalise the scores first?")


def check_slope(value, curve) -> Verdict:
    """06.2: the log-log slope of regret against delta."""
    if _unanswered(value, "np.polyfit(np.log(delta), np.log(regret), 1)[0]"):
        return Verdict(False)
    expected = curve.slope()
    return _report(abs(float(value) - expected) < 0.05, f"slope {expected:.2f}: regret is quadratic in the score error.",
                   f"expected about {expected:.2f}, got {value}. Fit in log-log space.")


# ----------------------------------------------------------------------------- 07 scaling out

def check_shard(indices, n_blocks: int, rank: int, world_size: int) -> Verdict:
    """07.1: the blocks process `rank` of `world_size` scores (every world_size-th, from rank)."""
    if _unanswered(indices, "range(rank, n_blocks, world_size)"):
        return Verdict(False)
    expected = list(range(rank, n_blocks, world_size))
    return _report(list(indices) == expected, f"rank {rank} takes {expected}; the reducer sums are all-reduced.",
                   f"expected {expected}, got {list(indices)}.")


def check_bf16_bytes(value, model) -> Verdict:
    """07.2: bytes to hold the model's parameters in bfloat16."""
    if _unanswered(value, "2 bytes per parameter"):
        return Verdict(False)
    n = sum(p.numel() for p in model.parameters())
    return _report(int(value) == 2 * n, f"{2 * n / 2**20:.0f} MiB in bf16, half of fp32's {4 * n / 2**20:.0f} MiB.",
                   f"expected {2 * n:,} bytes for {n:,} parameters.")


# ----------------------------------------------------------------------------- solutions

SOLUTIONS = {
    "00.1": "n_layers = len(lq.layers(model))\nparams_per_layer = lq.layers(model)[0].n_params",
    "00.2": "value = math.exp(loss)",
    "01.1": ("def layer_grad_norms(grads, n_layers):\n    out = np.zeros(n_layers)\n"
             "    for (layer, module), g in grads.items():\n        out[layer] += float((g.double() ** 2).sum())\n"
             "    return out"),
    "01.2": "k = int(np.argmax(iso.layer_norm2))",
    "02.1": "def zeta2(g, H, lam):\n    return float(g @ np.linalg.solve(H + lam * np.eye(len(g)), g))",
    "02.2": "def decrease(zeta2, t):\n    return (t - t ** 2 / 2) * zeta2",
    "03.1": ("from itertools import permutations\n\ndef shapley3(value):\n    phi = np.zeros(3)\n"
             "    for order in permutations(range(3)):\n        seen = frozenset()\n        for p in order:\n"
             "            phi[p] += value(seen | {p}) - value(seen)\n            seen = seen | {p}\n    return phi / 6"),
    "03.2": ("span = result.chance_loss - result.full_loss\n"
             "layers_list = [int(k) for k in np.flatnonzero(result.drop >= 0.5 * span)]"),
    "04.1": ("def allocation_at(nu, q, c, beta, lower, upper):\n"
             "    return np.clip(q / (nu * c) - beta, lower, upper)"),
    "04.2": ("lo, hi = 1e-8, 1e8\nfor _ in range(200):\n    nu = np.sqrt(lo * hi)          # bisect in log nu\n"
             "    if spend(nu) > budget:\n        lo = nu\n    else:\n        hi = nu"),
    "05.1": ("def magnitude(W, s):\n    mask = np.zeros(W.size, bool)\n"
             "    mask[np.argsort(np.abs(W), axis=None)[:int(s * W.size)]] = True\n    return mask.reshape(W.shape)"),
    "05.2": "k = int(np.argmax(lq.prune(q, sparsity, sizes=sizes).x))",
    "06.1": "value = np.linalg.norm(q_T / q_T.sum() - q_S / q_S.sum())",
    "06.2": "ok = (curve.delta > 0) & (curve.regret > 0)\nvalue = np.polyfit(np.log(curve.delta[ok]), np.log(curve.regret[ok]), 1)[0]",
    "07.1": "indices = list(range(rank, n_blocks, world_size))",
    "07.2": "value = 2 * sum(p.numel() for p in model.parameters())",
}


def _legacy_solution(key: str):
    """A 'Show solution' button for exercise `key` (e.g. "02.1"); the code appears only when pressed."""
    import ipywidgets as widgets
    if key not in SOLUTIONS:
        raise KeyError(f"no exercise {key!r}: choose one of {', '.join(SOLUTIONS)}")
    code = widgets.HTML()
    button = widgets.Button(description=f"Show solution {key}", icon="eye")

    def reveal(_):
        import html
        code.value = f"<pre>{html.escape(SOLUTIONS[key])}</pre>"
        button.disabled = True
    button.on_click(reveal)
    box = widgets.VBox([button, code])
    box.reveal = lambda: reveal(None)
    return box


def _checks() -> dict:
    """name -> function, for the tests."""
    return {name: fn for name, fn in globals().items() if name.startswith("check_") and inspect.isfunction(fn)}
