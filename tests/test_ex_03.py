"""Notebook 03's exercises: each shipped solution passes in a namespace holding only what the notebook
defines by then; a blank answer is "not answered"; typical wrong answers are "wrong" with a message that
says what differs (and, for the usual slips, why); an answer that raises is contained."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.ablation import Cornerstone
from layerq_nb.shapley import exact_from_table


def namespace(**extra):
    return {"np": np, "torch": torch, "lq": lq, "math": math, "os": __import__("os"), **extra}


@pytest.fixture(scope="module")
def influence_identity():
    (fn,) = ex.run_solution("03.1", namespace())
    return fn


@pytest.fixture(scope="module")
def permutation_shapley():
    (fn,) = ex.run_solution("03.2", namespace())
    return fn


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("key", ["03.1", "03.2"])
def test_blank_is_unanswered(key):
    assert ex.check(key, None).status == "unanswered"
    assert ex.check(key, stub).status == "unanswered"
    assert ex.check(key, lambda *args: None).status == "unanswered"


# ----------------------------------------------------------------------------- 03.1 LayerIF, identity curvature

def test_03_1_shipped_solution_passes(influence_identity):
    v = ex.check("03.1", influence_identity)
    assert v and v.points == 3, v.message


@pytest.mark.real_model
def test_03_1_shipped_solution_passes_on_the_real_model(influence_identity, real):
    model, tokenizer = real
    train = lq.load_task("prose", tokenizer, split="train", n_blocks=2, block_size=32)
    validation = lq.load_task("prose", tokenizer, split="validation", n_blocks=2, block_size=32)
    v = ex.check("03.1", influence_identity, model=model, train=train, validation=validation)
    assert v, v.message


def test_03_1_wrong_answers_say_why(influence_identity):
    no_damping = lambda model, tr, va, k, lam: influence_identity(model, tr, va, k, lam) * lam       # noqa: E731
    flipped = lambda *args: -influence_identity(*args)                                            # noqa: E731
    averaged = lambda model, tr, va, k, lam: influence_identity(model, tr, va, k, lam) / len(va)  # noqa: E731
    twice = lambda model, tr, va, k, lam: influence_identity(model, tr, va, k, lam) / lam         # noqa: E731
    for wrong, fragment in ((no_damping, "did not divide by the damping"), (flipped, "sign is flipped"),
                            (averaged, "do not average them"), (twice, "divide by lambda once, not twice")):
        v = ex.check("03.1", wrong)
        assert v.status == "wrong" and "hidden instance 1" in v.message and fragment in v.message, v.message


def test_03_1_a_learner_who_freezes_parameters_leaves_the_models_as_they_were(influence_identity, tiny):
    model, _ = tiny

    def freezes(model, train, validation, k, damping):     # right numbers, but turns requires_grad off for speed
        model.requires_grad_(False)
        for m in lq.layers(model)[k].linears.values():
            m.weight.requires_grad_(True)
        return influence_identity(model, train, validation, k, damping)
    from layerq_nb.exercises.nb03 import _tiny_model
    train = lq.load_task("prose", _tokenizer(tiny), split="train", n_blocks=2, block_size=16)
    validation = lq.load_task("prose", _tokenizer(tiny), split="validation", n_blocks=1, block_size=16)
    flags = [p.requires_grad for p in model.parameters()]
    assert ex.check("03.1", freezes, model=model, train=train, validation=validation)
    assert all(p.requires_grad for p in _tiny_model().parameters())          # the check's cached model
    assert [p.requires_grad for p in model.parameters()] == flags            # and the notebook's
    assert ex.check("03.1", influence_identity)           # the next check, in the same kernel, still passes


def _tokenizer(tiny):
    return tiny[1]


def test_layer_influence_of_some_layers_matches_the_full_matrix(tiny):
    model, tokenizer = tiny
    train = lq.load_task("prose", tokenizer, split="train", n_blocks=2, block_size=16)
    validation = lq.load_task("prose", tokenizer, split="validation", n_blocks=1, block_size=16)
    full = lq.layer_influence(model, train, validation, curvature="identity", progress=False)
    one = lq.layer_influence(model, train, validation, curvature="identity", only={1}, progress=False)
    assert np.allclose(one.matrix[:, 1], full.matrix[:, 1], rtol=1e-6, atol=0)
    assert np.isnan(one.matrix[:, [0, 2]]).all() and np.isnan(one.zeta2[[0, 2]]).all()
    for bad in ({3}, set()):
        with pytest.raises(ValueError, match="one or more layer indices 0 .. 2"):
            lq.layer_influence(model, train, validation, curvature="identity", only=bad, progress=False)


def test_03_1_attention_only_is_wrong():
    def attention_only(model, train, validation, k, damping):     # the released LayerIF code's choice, not the paper's
        maps = [m for name, m in lq.layers(model)[k].linears.items() if "attn" in name]

        def grad(blocks, j):
            model.zero_grad()
            model(input_ids=blocks.input_ids[j:j + 1], labels=blocks.labels[j:j + 1]).loss.backward()
            return torch.cat([m.weight.grad.flatten() for m in maps])
        g_val = sum(grad(validation, j) for j in range(len(validation)))
        return np.array([-float(g_val @ grad(train, i)) / damping for i in range(len(train))])
    v = ex.check("03.1", attention_only)
    assert v.status == "wrong" and "expected" in v.message and "hidden instance 1" in v.message


def test_03_1_raising_answer_is_contained():
    v = ex.check("03.1", lambda model, train, validation, k, damping: lq.layers(model)[k + 10])
    assert v.status == "wrong" and "raised IndexError" in v.message


# ----------------------------------------------------------------------------- 03.2 permutation Shapley

def test_03_2_shipped_solution_passes_and_matches_the_worked_instance(permutation_shapley):
    v = ex.check("03.2", permutation_shapley)
    assert v and v.points == 3, v.message
    square = lambda c: np.asarray(c, bool).sum(1).astype(float) ** 2       # noqa: E731  v(S) = |S|^2
    assert np.array_equal(permutation_shapley(square, 3, [(2, 0, 1)]), [3.0, 5.0, 1.0])


def test_03_2_real_game_context(permutation_shapley):
    table = np.random.default_rng(7).normal(size=2 ** 5)
    value = lambda c: table[np.asarray(c, bool).astype(int) @ (1 << np.arange(5))]   # noqa: E731
    v = ex.check("03.2", permutation_shapley, value=value, n_players=5, exact=exact_from_table(table))
    assert v and "efficiency" in v.message
    v = ex.check("03.2", permutation_shapley, value=value, n_players=5, exact=exact_from_table(table) + 0.1)
    assert v.status == "wrong" and "real model's layer game" in v.message


def by_position(value, n, orders):
    phi = np.zeros(n)
    for order in orders:
        prefixes = np.zeros((n + 1, n), bool)
        for i, player in enumerate(order):
            prefixes[i + 1:, player] = True
        phi += np.diff(value(prefixes))          # marginal of the i-th joiner stored at index i
    return phi / len(orders)


def one_coalition_at_a_time(value, n, orders):
    phi = np.zeros(n)
    for order in orders:
        c = np.zeros(n, bool)
        before = value(c)                        # a (n,) array where (1, n) is expected
        for p in order:
            c[p] = True
            now = value(c)
            phi[p] += now - before
            before = now
    return phi / len(orders)


def test_03_2_wrong_answers_say_why(permutation_shapley):
    over_factorial = lambda value, n, orders: permutation_shapley(value, n, orders) * len(orders) / math.factorial(n)  # noqa: E731
    flipped = lambda *args: -permutation_shapley(*args)                                  # noqa: E731
    for wrong, fragment in ((by_position, "not out[i]"), (flipped, "sign is flipped"),
                            (over_factorial, "not by 5! = 120"), (one_coalition_at_a_time, "shape (m, 3)")):
        v = ex.check("03.2", wrong)
        assert v.status == "wrong" and "hidden game" in v.message and fragment in v.message, v.message
    v = ex.check("03.2", flipped)
    assert "Efficiency fails" in v.message


def test_03_2_raising_answer_is_contained():
    v = ex.check("03.2", lambda value, n, orders: np.zeros(n) / orders[0][99])
    assert v.status == "wrong" and "raised" in v.message


# ----------------------------------------------------------------------------- 03.3 cornerstones (a number)

def fake_cornerstone():
    drop = np.array([9.0, 0.1, 0.2, 4.0, 3.9, 0.05])         # span log V - full = 8: threshold 4 at f = 0.5
    return Cornerstone(full_loss=2.0, dropped_loss=2.0 + drop, empty_loss=12.0, chance_loss=10.0,
                       names=tuple(f"layers.{i}" for i in range(6)))


def test_03_3_solution_blank_and_wrong():
    cs = fake_cornerstone()
    (answer,) = ex.run_solution("03.3", namespace(cs=cs))
    assert answer == [0, 3]
    v = ex.check("03.3", answer, result=cs)
    assert v and v.points == 1
    assert ex.check("03.3", None, result=cs).status == "unanswered"
    v = ex.check("03.3", [0], result=cs)                      # the boundary layer (drop exactly 4.0) forgotten
    assert v.status == "wrong" and "4.000 nats" in v.message
    v = ex.check("03.3", [0, 3, 4], result=cs)                # 0.5 * drop range instead of the way to chance
    assert v.status == "wrong"
    assert ex.check("03.3", "layer 0", result=cs).status == "wrong"
    mask = cs.drop >= 0.5 * (cs.chance_loss - cs.full_loss)
    for as_mask in (mask, list(mask), mask.astype(int).tolist()):   # int() would read a mask as indices 0 and 1
        v = ex.check("03.3", as_mask, result=cs)
        assert v.status == "wrong" and "np.flatnonzero" in v.message, v.message
    v = ex.check("03.3", [0, 3, 99], result=cs)
    assert v.status == "wrong" and "numbered 0 .. 5" in v.message
    at_chance = Cornerstone(full_loss=10.5, dropped_loss=10.5 + cs.drop, empty_loss=12.0, chance_loss=10.0,
                            names=cs.names)             # a random model: worse than a uniform guess
    assert ex.check("03.3", [], result=at_chance)
    v = ex.check("03.3", [0, 3], result=at_chance)
    assert v.status == "wrong" and "no better than chance" in v.message
