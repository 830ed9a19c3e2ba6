"""Notebook 05's exercises: each shipped solution passes its check (run in a namespace like the notebook's),
a blank answer is "unanswered", typical mistakes are "wrong" with a message that says how, and an answer
that raises is contained."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.models import weight_matrix
from layerq_nb.pruning import layer_sizes

Q_SMALL, SIZES_SMALL = np.array([0.5, 0.2, 0.3]), np.array([1.0, 1.0, 2.0])


def _namespace(**names) -> dict:
    return dict(np=np, torch=torch, lq=lq, math=math, ex=ex, q_small=Q_SMALL, S_small=0.5, sizes_small=SIZES_SMALL,
                **names)


def _solved(*keys) -> dict:
    """The namespace after running the solutions of `keys` in order, as the solved notebook does."""
    ns = _namespace()
    for key in keys:
        ex.run_solution(key, ns)
    return ns


def _wrong(key, *answer, fragment: str, **context):
    verdict = ex.check(key, *answer, **context)
    assert verdict.status == "wrong", verdict
    assert fragment in verdict.message, verdict.message
    return verdict


def _mask_from(score, count, dim=1):
    """True on the `count` lowest scores along `dim` (1: per output row, 0: per input column)."""
    mask = torch.zeros(score.shape, dtype=torch.bool)
    mask.scatter_(dim, torch.argsort(score, dim=dim).narrow(dim, 0, count), True)
    return mask


def test_every_exercise_has_a_solution():
    keys = [e.key for e in ex.exercises("05")]
    assert keys == ["05.1", "05.2", "05.3", "05.4", "05.5"]
    assert sum(e.kind == "build" for e in ex.exercises("05")) == 4
    for key in keys:
        assert ex.solution_code(key)


# ----------------------------------------------------------------------------- 05.1

def test_most_pruned_layer():
    context = dict(q=Q_SMALL, sparsity=0.5, sizes=SIZES_SMALL)
    (k,) = ex.run_solution("05.1", _namespace())
    assert k == 2 and ex.check("05.1", k, **context)
    _wrong("05.1", int(np.argmin(Q_SMALL)), fragment="another layer further", **context)   # smallest q, not q / n
    _wrong("05.1", 7, fragment="does not exist", **context)
    _wrong("05.1", "two", fragment="layer index", **context)
    _wrong("05.1", "2", fragment="whole number", **context)             # int() would parse it
    _wrong("05.1", 2.7, fragment="whole number", **context)             # int() would truncate it
    _wrong("05.1", float("inf"), fragment="whole number", **context)    # int() would overflow
    assert ex.check("05.1", None, **context).status == "unanswered"


# ----------------------------------------------------------------------------- 05.2 and 05.3

def test_sparsity_at():
    (fn,) = ex.run_solution("05.2", _namespace())
    assert np.allclose(fn(0.5, Q_SMALL, SIZES_SMALL, 0.0, 0.99), [0.0, 0.6, 0.7])
    assert ex.check("05.2", fn)
    _wrong("05.2", lambda nu, q, n, lo, hi: 1 - q / (nu * n), fragment="hidden instance 2")            # no clip
    _wrong("05.2", lambda nu, q, n, lo, hi: np.clip(q / (nu * n), lo, hi), fragment="expected")         # 1 - forgotten
    _wrong("05.2", lambda nu, q, n, lo, hi: np.clip(1 - q / nu, lo, hi), fragment="hidden instance 1")  # no n_k
    _wrong("05.2", lambda nu, q, n, lo, hi: 1 / 0, fragment="ZeroDivisionError")                       # contained


def test_sparsity_at_blank():
    def stub(nu, q, n, lower, upper):
        raise NotImplementedError
    assert ex.check("05.2", stub).status == "unanswered"
    assert ex.check("05.2", lambda *a: None).status == "unanswered"
    assert ex.check("05.2", None).status == "unanswered"


def test_prune_map(tiny):
    ns = _solved("05.2", "05.3")
    fn = ns["prune_map"]
    assert np.allclose(fn(Q_SMALL, 0.5, SIZES_SMALL, 0.0, 0.99), [0.0, 0.6, 0.7])
    assert ex.check("05.3", fn)
    sizes = layer_sizes(tiny[0])
    q = np.linspace(1.0, 2.0, sizes.size)
    verdict = ex.check("05.3", fn, q=q, sparsity=0.6, sizes=sizes, band=0.1)
    assert verdict, verdict.message
    sparsity_at = ns["sparsity_at"]

    def unweighted(q, S, n, lower, upper):        # forgot the sizes: meets the plain mean of s, not the weighted one
        return _bisect(lambda nu: sparsity_at(nu, q, n, lower, upper).mean(), S,
                       lambda nu: sparsity_at(nu, q, n, lower, upper))
    _wrong("05.3", unweighted, fragment="not S =")
    _wrong("05.3", lambda q, S, n, lo, hi: np.full(len(q), S), fragment="expected")          # the uniform map
    _wrong("05.3", lambda q, S, n, lo, hi: fn(q[::-1], S, n[::-1], lo, hi), fragment="hidden instance")  # reversed
    _wrong("05.3", lambda q, S, n, lo, hi: 1 / 0, fragment="ZeroDivisionError")
    assert ex.check("05.3", None).status == "unanswered"

    def fixed_bracket(q, S, n, lower, upper):     # never widens [0, 1]: right wherever nu* < 1
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if n @ sparsity_at(mid, q, n, lower, upper) < S * n.sum() else (lo, mid)
        return sparsity_at(hi, q, n, lower, upper)
    _wrong("05.3", fixed_bracket, fragment="hidden instance 5")
    _wrong("05.3", lambda q, S, n, lo, hi: (np.full(len(q), S), 1.0), fragment="a numpy array of K numbers")
    _wrong("05.3", lambda q, S, n, lo, hi: torch.as_tensor(fn(q, S, n, lo, hi)), fragment="got a Tensor")
    _wrong("05.3", lambda q, S, n, lo, hi: lq.prune(q, S, sizes=n, lower=lo, upper=hi), fragment="got a Solution")
    # float32 is precise enough for a sparsity map: its rounding at a bound is no clipping mistake
    assert ex.check("05.3", lambda q, S, n, lo, hi: fn(q, S, n, lo, hi).astype(np.float32))


def _bisect(mean_of, target, s_of):
    lo, hi = 0.0, 1.0
    while mean_of(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_of(mid) < target else (lo, mid)
    return s_of(hi)


# ----------------------------------------------------------------------------- 05.4 and 05.5

def test_magnitude():
    (fn,) = ex.run_solution("05.4", _namespace())
    assert fn(torch.tensor([[3.0, -1.0], [0.5, -4.0]]), 0.5).tolist() == [[False, True], [True, False]]
    assert ex.check("05.4", fn)
    _wrong("05.4", _lowest_flat, fragment="prunes a weight with |W|")                                # no abs
    _wrong("05.4", lambda W, s: _mask_from(W.abs(), int(s * W.shape[1])), fragment="prunes")                      # per row
    _wrong("05.4", lambda W, s: fn(W, s).float(), fragment="boolean mask")
    _wrong("05.4", lambda W, s: fn(W, s).T, fragment="transposed")
    _wrong("05.4", lambda W, s: (fn(W, s), 0), fragment="one boolean mask")

    def prunes_in_place(W, s):                    # notebook 05 passes the real model's weight
        mask = fn(W, s)
        W[mask] = 0.0
        return mask
    _wrong("05.4", prunes_in_place, fragment="changed its input `W` in place")
    assert ex.check("05.4", lambda W, s: None).status == "unanswered"


def _lowest_flat(W, s):
    mask = torch.zeros(W.numel(), dtype=torch.bool)
    mask[torch.argsort(W.reshape(-1))[:int(s * W.numel())]] = True    # the most negative, not the smallest |W|
    return mask.reshape(W.shape)


def test_wanda(tiny):
    (fn,) = ex.run_solution("05.5", _namespace())
    W, X = torch.tensor([[1.0, 2.0], [3.0, 1.0]]), torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    assert fn(W, X, 0.5).tolist() == [[False, True], [False, True]]          # the notebook's worked instance
    assert ex.check("05.5", fn)
    linear = lq.layers(tiny[0])[0].linears["self_attn.q_proj"]
    W_real = weight_matrix(linear).detach()
    X_real = torch.randn(40, W_real.shape[1])
    assert ex.check("05.5", fn, weight=W_real, inputs=X_real, sparsity=0.6)

    _wrong("05.5", lambda W, X, s: _mask_from(W.abs(), int(s * W.shape[1])),                 # forgot ||X_j||
           fragment="but keeps one with")
    _wrong("05.5", lambda W, X, s: _mask_from(W.abs() * X.norm(dim=0), round(s * W.shape[1])),  # round, not floor
           fragment="must prune exactly floor(s * d_in) = 3")
    _wrong("05.5", lambda W, X, s: _mask_from(W.abs() * X.norm(dim=0), int(s * W.shape[0]), dim=0),  # per column
           fragment="per input column")
    _wrong("05.5", lambda W, X, s: (W.abs() * X.norm(dim=1)) < 0, fragment="RuntimeError")   # norm over tokens
    _wrong("05.5", lambda W, X, s: fn(W, X, s).int(), fragment="boolean mask")

    def whole_matrix(W, X, s):
        score = (W.abs() * X.norm(dim=0)).reshape(-1)
        mask = torch.zeros(W.numel(), dtype=torch.bool)
        mask[torch.argsort(score)[:int(s * W.numel())]] = True
        return mask.reshape(W.shape)
    _wrong("05.5", whole_matrix, fragment="output row")
    assert ex.check("05.5", lambda W, X, s: None).status == "unanswered"


def test_wanda_accepts_any_tie_break_and_numpy():
    (fn,) = ex.run_solution("05.5", _namespace())

    def reversed_ties(W, X, s):            # breaks ties from the right: a different mask, equally correct
        flipped = fn(W.flip(1), X.flip(1), s)
        return flipped.flip(1).numpy()
    assert ex.check("05.5", reversed_ties)


@pytest.mark.parametrize("key", ["05.1", "05.2", "05.3", "05.4", "05.5"])
def test_hints_are_graded_and_never_the_code(key):
    hints = ex.get(key).hints
    assert 2 <= len(hints) <= 3
    code = ex.solution_code(key)
    for hint in hints:
        assert not re.search(r"\bdef \w+\(|lambda\b", hint), hint
    assert not any(line.strip() and line.strip() in " ".join(hints) for line in code.splitlines()
                   if len(line.strip()) > 25)
