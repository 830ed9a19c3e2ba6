"""Notebook 01's exercises: each shipped solution passes in a namespace holding only what the notebook
defines by then; a blank answer is "not answered"; typical wrong answers are "wrong" with a message that
says what differs; an answer that raises is contained; a check never leaves hooks or gradients on the
model. The real-model parts run on the tiny random Llama."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.scoring import layer_gradients
from layerq_nb.ui.steps import gradient_isolation


def namespace(**names):
    return {"np": np, "torch": torch, "lq": lq, "math": math, **names}


@pytest.fixture(scope="module")
def prose(tiny):
    model, tokenizer = tiny
    return lq.load_task("prose", tokenizer, split="train", n_blocks=2, block_size=48)


def stub(*args):
    raise NotImplementedError


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- 01.1

def hooked(module, loss_fn, finish):
    saved = {}

    def keep(mod, inputs, output):
        saved["a"] = inputs[0]
        output.register_hook(lambda grad: saved.__setitem__("b", grad))
    handle = module.register_forward_hook(keep)
    loss_fn().backward()
    if finish != "leak":
        handle.remove()
    a, b = saved["a"], saved["b"]
    if finish == "unflattened":
        return b.T @ a
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return {"transposed": a.T @ b, "divided": b.T @ a / a.shape[0], "leak": b.T @ a, "ok": b.T @ a}[finish]


def test_01_1_solution_passes_on_hidden_instances_and_a_model(tiny, prose):
    model, _ = tiny
    flags = [p.requires_grad for p in model.parameters()]
    (fn,) = ex.run_solution("01.1", namespace(model=model, blocks=prose))
    v = ex.check("01.1", fn, model=model, blocks=prose)
    assert v and v.points == 3, v.message
    assert "on the real model" in v.message
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert ex.check("01.1", lambda module, loss_fn: hooked(module, loss_fn, "ok"))


def test_01_1_blank_is_unanswered():
    assert ex.check("01.1", None).status == "unanswered"
    assert ex.check("01.1", stub).status == "unanswered"


def test_01_1_reading_grad_is_told_the_weights_are_frozen():
    def reads_grad(module, loss_fn):
        loss_fn().backward()
        return module.weight.grad
    v = ex.check("01.1", reads_grad)
    assert v.status == "unanswered" and "weights are frozen" in v.message


@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")
@pytest.mark.parametrize("finish, fragment", [
    ("transposed", "transposed?"),
    ("divided", "already carries the loss's normalisation"),
    ("leak", "left 1 hook(s)"),
    ("unflattened", "flatten them to (B*T, d)"),
])
def test_01_1_wrong_answers(finish, fragment):
    v = ex.check("01.1", lambda module, loss_fn: hooked(module, loss_fn, finish))
    assert v.status == "wrong" and fragment in v.message and "hidden instance" in v.message, v.message


def test_01_1_wrong_answer_on_the_model_leaves_it_clean(tiny, prose):
    model, _ = tiny
    calls = []

    def right_on_toys_wrong_on_the_model(module, loss_fn):     # leaks its hook on the model only
        calls.append(1)
        return hooked(module, loss_fn, "leak" if len(calls) > 5 else "ok")
    v = ex.check("01.1", right_on_toys_wrong_on_the_model, model=model, blocks=prose)
    assert v.status == "wrong" and "the real model" in v.message and "left 1 hook" in v.message
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def test_01_1_a_global_hook_left_behind_is_wrong_and_removed():
    from torch.nn.modules import module as torch_module

    def global_hook(module, loss_fn):      # a hook on every module, never removed
        saved = {}

        def keep(mod, inputs, output):
            if mod is module:
                saved["a"] = inputs[0]
                output.register_hook(lambda grad: saved.__setitem__("b", grad))
        torch.nn.modules.module.register_module_forward_hook(keep)
        loss_fn().backward()
        a, b = saved["a"], saved["b"]
        return b.reshape(-1, b.shape[-1]).T @ a.reshape(-1, a.shape[-1])
    before = len(torch_module._global_forward_hooks)
    v = ex.check("01.1", global_hook)
    assert v.status == "wrong" and "left 1 hook(s) behind" in v.message, v.message
    assert len(torch_module._global_forward_hooks) == before


def test_01_1_keeps_the_learners_own_grads_and_accepts_a_float32_sum(tiny, prose):
    model, _ = tiny
    (fn,) = ex.run_solution("01.1", namespace(model=model, blocks=prose))
    first = next(model.parameters())
    first.grad = torch.full_like(first, 7.0)             # from the learner's own experiment
    try:
        assert ex.check("01.1", fn, model=model, blocks=prose)
        assert first.grad is not None and bool((first.grad == 7.0).all())
    finally:
        first.grad = None

    def float32_loop(module, loss_fn):                  # a float32 accumulator, token by token
        saved = {}

        def keep(mod, inputs, output):
            saved["a"] = inputs[0]
            output.register_hook(lambda grad: saved.__setitem__("b", grad))
        handle = module.register_forward_hook(keep)
        try:
            loss_fn().backward()
        finally:
            handle.remove()
        a, b = saved["a"].reshape(-1, module.in_features), saved["b"].reshape(-1, module.out_features)
        g = torch.zeros(module.out_features, module.in_features)
        for t in range(a.shape[0]):
            g += torch.outer(b[t], a[t]).float()
        return g
    assert ex.check("01.1", float32_loop)


def test_01_1_wants_a_tensor():
    v = ex.check("01.1", lambda module, loss_fn: hooked(module, loss_fn, "ok").detach().numpy())
    assert v.status == "wrong" and "return a torch tensor" in v.message


def test_01_1_raising_answer_is_contained():
    def returns_a_tuple_from_the_hook(module, loss_fn):
        saved = {}
        module.register_forward_hook(lambda m, i, o: (saved.setdefault("a", i[0]), o))
        return loss_fn()
    v = ex.check("01.1", returns_a_tuple_from_the_hook)
    assert v.status == "wrong" and "raised TypeError" in v.message and "replaces the module's output" in v.message


# ----------------------------------------------------------------------------- 01.2

def test_01_2_solution_passes_on_hidden_instances_and_a_model(tiny, prose):
    model, _ = tiny
    grads = layer_gradients(model, prose, progress=False)
    n = len(lq.layers(model))
    (fn,) = ex.run_solution("01.2", namespace(grads=grads, n_layers=n))
    v = ex.check("01.2", fn, grads=grads, n_layers=n)
    assert v and v.points == 3 and f"all {n} layers" in v.message, v.message
    assert np.allclose(fn(grads, n), gradient_isolation(model, prose).layer_norm2, rtol=1e-10)


def test_01_2_blank_is_unanswered():
    assert ex.check("01.2", None).status == "unanswered"
    assert ex.check("01.2", stub).status == "unanswered"
    assert ex.check("01.2", lambda grads, n: None).status == "unanswered"


def by_position(grads, n_layers):
    values = [float((g.double() ** 2).sum()) for g in grads.values()]
    return np.array(values).reshape(n_layers, -1).sum(1)


def not_squared(grads, n_layers):
    out = np.zeros(n_layers)
    for (layer, _), g in grads.items():
        out[layer] += float(g.abs().sum())
    return out


def norms_not_squares(grads, n_layers):
    out = np.zeros(n_layers)
    for (layer, _), g in grads.items():
        out[layer] += float(g.norm())
    return out


@pytest.mark.parametrize("wrong, fragment", [
    (by_position, "wrong layers"),
    (not_squared, "hidden instance 1"),
    (norms_not_squares, "hidden instance 1"),
    (lambda grads, n: np.zeros(n + 1), "shape"),
])
def test_01_2_wrong_answers(wrong, fragment):
    v = ex.check("01.2", wrong)
    assert v.status == "wrong" and fragment in v.message and "expected" in v.message, v.message


def squares_in_place(grads, n_layers):        # would leave the notebook's gradients squared
    out = np.zeros(n_layers)
    for (layer, _), g in grads.items():
        g **= 2
        out[layer] += float(g.double().sum())
    return out


def sized_from_the_keys(grads, n_layers):      # ignores n_layers: short when the last layer has no entry
    out = np.zeros(max(layer for layer, _ in grads) + 1)
    for (layer, _), g in grads.items():
        out[layer] += float((g.double() ** 2).sum())
    return out


def as_a_list(grads, n_layers):
    out = [0.0] * n_layers
    for (layer, _), g in grads.items():
        out[layer] += float((g.double() ** 2).sum())
    return out


@pytest.mark.parametrize("wrong, fragment", [
    (squares_in_place, "changed its input `grads` in place"),
    (sized_from_the_keys, "hidden instance 6"),
    (as_a_list, "return a NumPy array"),
])
def test_01_2_answers_that_pass_the_numbers_but_break_the_notebook(wrong, fragment):
    v = ex.check("01.2", wrong)
    assert v.status == "wrong" and fragment in v.message, v.message


def test_01_2_raising_answer_is_contained():
    v = ex.check("01.2", lambda grads, n: np.array([g.norm() for g in grads]))
    assert v.status == "wrong" and "raised AttributeError" in v.message


# ----------------------------------------------------------------------------- 01.3

def test_01_3_solution_blank_and_wrong(tiny, prose):
    model, _ = tiny
    iso = gradient_isolation(model, prose)
    (k,) = ex.run_solution("01.3", namespace(iso=iso))
    v = ex.check("01.3", k, iso=iso)
    assert v and v.points == 1, v.message
    assert ex.check("01.3", None, iso=iso).status == "unanswered"
    other = (k + 1) % len(iso.layer_norm2)
    v = ex.check("01.3", other, iso=iso)
    assert v.status == "wrong" and "another layer holds more" in v.message
    assert ex.check("01.3", 99, iso=iso).status == "wrong"
    assert ex.check("01.3", "top", iso=iso).status == "wrong"
    assert ex.check("01.3", str(k), iso=iso).status == "wrong"                 # a string is no index
    v = ex.check("01.3", float(np.max(iso.layer_norm2)) + 0.5, iso=iso)       # the value, not its index
    assert v.status == "wrong" and "np.argmax" in v.message
