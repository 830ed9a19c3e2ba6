"""Notebook 00's exercises: each shipped solution passes in a namespace holding only what the notebook
defines by then; a blank answer is "not answered"; typical wrong answers are "wrong" with a message that
says what differs; an answer that raises is contained. The real-model parts run on the tiny random Llama."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.scores import LayerScores


def namespace(**names):
    return {"np": np, "torch": torch, "lq": lq, "math": math, **names}


@pytest.fixture(scope="module")
def tiny_blocks(tiny):
    model, tokenizer = tiny
    return lq.load_task("arithmetic", tokenizer, split="test", n_blocks=2, block_size=64)


def stub(*args):
    raise NotImplementedError


# ----------------------------------------------------------------------------- 00.1

def test_00_1_solution_blank_and_wrong(tiny):
    model, _ = tiny
    answer = ex.run_solution("00.1", namespace(model=model))
    v = ex.check("00.1", *answer, model=model)
    assert v and v.points == 1, v.message
    assert ex.check("00.1", None, None, model=model).status == "unanswered"
    n, per_layer = answer
    one_map = lq.layers(model)[0].linears["self_attn.q_proj"].weight.numel()
    v = ex.check("00.1", n + 1, per_layer, model=model)
    assert v.status == "wrong" and "count the entries" in v.message
    v = ex.check("00.1", n, one_map, model=model)
    assert v.status == "wrong" and "one linear map" in v.message
    v = ex.check("00.1", n, "many", model=model)
    assert v.status == "wrong"


# ----------------------------------------------------------------------------- 00.2

def test_00_2_solution_passes_on_hidden_instances_and_a_model(tiny, tiny_blocks):
    model, _ = tiny
    (fn,) = ex.run_solution("00.2", namespace(model=model))
    v = ex.check("00.2", fn, model=model, blocks=tiny_blocks)
    assert v and v.points == 3, v.message
    assert "lq.perplexity" in v.message
    assert ex.check("00.2", fn)


def test_00_2_blank_is_unanswered():
    assert ex.check("00.2", None).status == "unanswered"
    assert ex.check("00.2", stub).status == "unanswered"
    assert ex.check("00.2", lambda logits, labels: None).status == "unanswered"


def _flat(logits, labels, **kw):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), **kw)


def no_shift(logits, labels):
    return _flat(logits, labels)


def shift_backwards(logits, labels):
    return _flat(logits[:, 1:], labels[:, :-1])


def masked_counted(logits, labels):
    nll = _flat(logits[:, :-1], labels[:, 1:], reduction="none")
    return nll.sum() / nll.numel()


def summed(logits, labels):
    return _flat(logits[:, :-1], labels[:, 1:], reduction="sum")


def mean_of_rows(logits, labels):
    return torch.stack([F.cross_entropy(z[:-1], y[1:]) for z, y in zip(logits, labels)]).nanmean()


def per_position(logits, labels):
    return _flat(logits[:, :-1], labels[:, 1:], reduction="none")


@pytest.mark.parametrize("wrong, fragment", [
    (no_shift, "not shifted"),
    (shift_backwards, "wrong way"),
    (masked_counted, "masked targets are counted"),
    (summed, "the sum, not the mean"),
    (mean_of_rows, "each row's mean"),
    (per_position, "should be one number"),
])
def test_00_2_wrong_answers(wrong, fragment):
    v = ex.check("00.2", wrong)
    assert v.status == "wrong" and fragment in v.message and "hidden instance" in v.message


def test_00_2_raising_answer_is_contained():
    def gather_without_mask(logits, labels):
        logp = torch.log_softmax(logits[:, :-1], -1)
        return -logp.gather(-1, labels[:, 1:, None]).mean()
    v = ex.check("00.2", gather_without_mask)
    assert v.status == "wrong" and "raised RuntimeError" in v.message and "-100 marks a target" in v.message


# ----------------------------------------------------------------------------- 00.3

def scores_like():
    return LayerScores(method="zeta2[diag]", values=np.array([0.5, 0.0, 2.0, 1.5]),
                       names=tuple(f"model.layers.{i}" for i in range(4)), metadata={})


def test_00_3_solution_blank_and_real_scores():
    (fn,) = ex.run_solution("00.3", namespace())
    v = ex.check("00.3", fn, scores=scores_like())
    assert v and v.points == 3 and "layer 2" in v.message, v.message
    assert ex.check("00.3", None).status == "unanswered"
    assert ex.check("00.3", stub).status == "unanswered"


def unguarded(g):
    return g / g.sum()


def checks_all_but_negative(g):
    if not np.all(np.isfinite(g)) or g.sum() <= 0:
        raise ValueError("bad gains")
    return g / g.sum()


def in_place(g):
    if not np.all(np.isfinite(g)) or np.any(g < 0) or g.sum() <= 0:
        raise ValueError("bad gains")
    g /= g.sum()
    return g


def asserts(g):
    assert np.all(np.isfinite(g)) and np.all(g >= 0) and g.sum() > 0
    return g / g.sum()


@pytest.mark.parametrize("wrong, fragment", [
    (lambda g: np.exp(g) / np.exp(g).sum(), "expected [0.75, 0.25]"),           # softmax
    (lambda g: g / np.linalg.norm(g), "constant factor"),                     # unit length, not unit sum
    (unguarded, "raise ValueError"),
    (checks_all_but_negative, "a gain is negative"),
    (in_place, "changed its input"),
    (asserts, "should raise ValueError; your function raised AssertionError"),
])
def test_00_3_wrong_answers(wrong, fragment):
    v = ex.check("00.3", wrong)
    assert v.status == "wrong" and fragment in v.message, v.message


def test_00_3_none_for_bad_gains_is_wrong():
    def prints_and_returns_none(g):
        if not np.all(np.isfinite(g)) or np.any(g < 0) or g.sum() <= 0:
            return None
        return g / g.sum()
    v = ex.check("00.3", prints_and_returns_none)
    assert v.status == "wrong" and "should raise ValueError; your function returned None" in v.message


def test_00_3_raising_answer_is_contained():
    v = ex.check("00.3", lambda g: g / g.total())
    assert v.status == "wrong" and "raised AttributeError" in v.message
