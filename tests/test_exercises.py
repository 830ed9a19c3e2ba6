"""The exercise machinery: checks report instead of raising, say which hidden instance failed and how,
hide hints and solutions until asked, and the three modes (learn, solve, blank) behave as documented.
Every registered exercise: a blank answer is "not answered", it has hints that do not give its solution
away, and a solution. (Each notebook's own checks are tested against wrong answers in tests/test_ex_NN.py,
and every solution runs in its notebook in tests/test_notebooks_solved.py.)"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerq_nb import exercises as ex
from layerq_nb.exercises import Mismatch, NotAnswered

ALL = ex.exercises()


def test_every_notebook_has_two_build_exercises_with_points():
    for nb in ex.NOTEBOOKS:
        own = [e for e in ALL if e.notebook == nb]
        assert sum(e.kind == "build" for e in own) >= 2, f"notebook {nb} has fewer than two build-it exercises"
        assert [e.key for e in own] == [f"{nb}.{i}" for i in range(1, len(own) + 1)], "number them NN.1, NN.2, ..."
    for e in ALL:
        assert e.points == (3 if e.kind == "build" else 1) and e.title and e.answer


@pytest.mark.parametrize("e", ALL, ids=lambda e: e.key)
def test_blank_answer_is_reported_not_raised(e, capsys):
    verdict = ex.check(e.key, *([None] * len(e.answer)))
    assert verdict.status == "unanswered" and not verdict and verdict.points == 0
    out = capsys.readouterr().out
    assert out.startswith(f"[{e.key}] Not answered yet") and "Hint" in out
    for hint in e.hints:
        assert hint not in out, "a hint is shown only when asked for"


@pytest.mark.parametrize("e", ALL, ids=lambda e: e.key)
def test_hints_are_graded_and_never_the_solution(e):
    assert 1 <= len(e.hints) <= 4
    code = ex.solution_code(e.key)
    assert code.strip()
    for line in code.splitlines():
        line = line.strip()
        if len(line) > 24 and not line.startswith(("#", "def ", "import ", "from ", "return ")):
            assert all(line not in h for h in e.hints), f"hint of {e.key} gives away: {line}"
    assert ex.hint(e.key, len(e.hints)) == e.hints[-1]
    with pytest.raises(IndexError):
        ex.hint(e.key, len(e.hints) + 1)


def test_call_contains_the_learners_errors():
    def blank(x):
        raise NotImplementedError
    with pytest.raises(NotAnswered):
        ex.call(blank, 1)
    with pytest.raises(NotAnswered, match="returned None"):
        ex.call(lambda x: None, 1)
    with pytest.raises(Mismatch, match="instance 3: your function raised ZeroDivisionError"):
        ex.call(lambda x: x / 0, 1, where="instance 3")
    with pytest.raises(Mismatch, match="expected a function"):
        ex.call(3.0, 1)


def test_call_refuses_an_answer_that_changes_its_inputs_in_place():
    import torch

    def scale(x, factor):
        x *= factor
        return x
    with pytest.raises(Mismatch, match="changed its input `x` in place"):
        ex.call(scale, np.ones(3), 2.0, where="instance 1")
    with pytest.raises(Mismatch, match="changed its input `x` in place"):
        ex.call(scale, torch.ones(3, dtype=torch.bfloat16), 2.0)

    def square_each(grads):                 # a dict of tensors, as notebook 01's gradients
        for g in grads.values():
            g **= 2
        return sum(float(g.sum()) for g in grads.values())
    with pytest.raises(Mismatch, match="changed its input `grads` in place"):
        ex.call(square_each, {(0, "q"): torch.full((2, 2), 3.0)})
    assert ex.call(lambda x: x * 2, np.array([1.0, np.nan]))[0] == 2.0      # a NaN input, untouched, is fine
    assert ex.call(lambda x: x.clone().mul_(2), torch.ones(2)).tolist() == [2.0, 2.0]


def test_none_after_earlier_results_is_wrong_not_unanswered():
    from layerq_nb.exercises._core import _RETURNED, ReturnedNone
    _RETURNED["any"] = False
    with pytest.raises(NotAnswered, match="is a `return` missing"):
        ex.call(lambda x: None, 1)
    ex.call(lambda x: x, 1)
    with pytest.raises(ReturnedNone, match="instance 2: your function returned None here"):
        ex.call(lambda x: None, 1, where="instance 2")
    _RETURNED["any"] = False


def test_a_check_keeps_the_notebooks_random_state():
    import torch
    torch.manual_seed(0)
    np.random.seed(0)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)

    def draws(*args):                       # an answer that draws from the global generators
        np.random.rand(5)
        torch.rand(5)
        raise NotImplementedError
    ex.check("01.1", draws)                 # and a check whose hidden instances build nn.Linear layers
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)


def test_a_checker_error_is_a_verdict_in_learn_mode_and_raises_otherwise(monkeypatch):
    from layerq_nb.exercises import CHECK_ERRORS, MissingContext, _core
    v = ex.check("05.4", lambda W, s: (torch_zeros_mask(W), 0))      # handled by the check itself
    assert v.status == "wrong" and "mask" in v.message and not CHECK_ERRORS
    monkeypatch.setitem(_core.REGISTRY, "99.1", _core.Exercise("99.1", "t", ("f",), lambda f: 1 / 0))
    v = ex.check("99.1", lambda: 1)
    assert v.status == "wrong" and "the check could not finish (ZeroDivisionError" in v.message
    assert CHECK_ERRORS == ["99.1: ZeroDivisionError: division by zero"]
    CHECK_ERRORS.clear()                    # meant here: the autouse fixture fails any other test that has one

    def out_of_memory(f):
        raise MemoryError
    monkeypatch.setitem(_core.REGISTRY, "99.2", _core.Exercise("99.2", "t", ("f",), out_of_memory))
    with pytest.raises(MemoryError):        # not the answer's fault: no verdict
        ex.check("99.2", lambda: 1)
    monkeypatch.setenv("LAYERQ_EXERCISES", "blank")       # CI's modes see the checker's own error
    with pytest.raises(ZeroDivisionError):
        ex.check("99.1", lambda: 1)
    monkeypatch.setenv("LAYERQ_EXERCISES", "learn")
    with pytest.raises(MissingContext, match=r"ex.check\('01.3', ...\): got an unexpected keyword argument 'model'"):
        ex.check("01.3", 3, model=None)
    with pytest.raises(MissingContext, match="pass the model"):
        ex.check("07.1", 12)
    assert ex.check("07.1", None).status == "unanswered"          # a blank answer whatever the call passes


def test_call_outside_a_check_starts_fresh():
    from layerq_nb.exercises import ReturnedNone
    ex.check("07.2", lambda n, r, w: list(range(r, n, w)))          # a check whose answer returned results
    with pytest.raises(NotAnswered):
        ex.call(lambda x: None, 1)
    assert not issubclass(NotAnswered, ReturnedNone)


def torch_zeros_mask(W):
    import torch
    return torch.zeros(W.shape, dtype=torch.bool)


def test_one_number_takes_scalars_and_0d_values_only():
    import torch
    for value in (2.5, np.float32(2.5), np.array(2.5), torch.tensor(2.5, dtype=torch.float64), 2):
        assert ex.one_number(value) == 2.5 or value == 2
    for value, fragment in (([2.5], "shape (1,)"), (np.array([2.5]), ".item()"), (torch.tensor([[2.5]]), "shape (1, 1)"),
                            ("2.5", "not a number"), (True, "not a number"), (None, "not a number")):
        with pytest.raises(Mismatch, match=re.escape(fragment)):
            ex.one_number(value, where="case 1", what="x")


def test_whole_number_reads_counts_and_refuses_what_int_would_bend():
    import torch
    for value in (3, np.int64(3), 3.0, torch.tensor(3)):
        assert ex.whole_number(value) == 3
    for value in ("3", True, 2.7, float("inf"), float("nan"), None, [3]):
        assert ex.whole_number(value) is None


def test_close_says_how_answers_differ():
    e = np.arange(1.0, 7.0).reshape(2, 3)
    ex.close(e * (1 + 1e-9), e)
    with pytest.raises(Mismatch, match="transposed"):
        ex.close(e.T, e)
    with pytest.raises(Mismatch, match="shape"):
        ex.close(e[0], e)
    with pytest.raises(Mismatch, match="sign is flipped"):
        ex.close(-e, e)
    with pytest.raises(Mismatch, match="constant factor 2"):
        ex.close(2 * e, e)
    with pytest.raises(Mismatch, match=r"non-finite"):
        ex.close(np.where(e > 3, np.nan, e), e)
    with pytest.raises(Mismatch, match=r"largest error 0.5 at index \(1, 2\)"):
        ex.close(e + np.array([[0, 0, 0], [0, 0, 0.5]]), e, where="hidden instance 2")
    with pytest.raises(Mismatch, match="not numbers"):
        ex.close("abc", e)
    with pytest.raises(Mismatch, match="all zeros") as zeros:
        ex.close(np.zeros_like(e), e)
    assert "factor" not in str(zeros.value)
    with pytest.raises(Mismatch, match="is in float32 and agrees only to its precision: compute in float64"):
        ex.close((e / 3).astype(np.float32), e / 3, rtol=1e-12, atol=0)


def test_equal_counts_differences():
    mask = np.zeros((3, 4), bool)
    ex.equal(mask.copy(), mask)
    wrong = mask.copy()
    wrong[1, 2] = True
    with pytest.raises(Mismatch, match=r"1 of 12 entries differ; the first at index \(1, 2\)"):
        ex.equal(wrong, mask)
    with pytest.raises(Mismatch, match="boolean"):
        ex.equal(mask.astype(int), mask)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20), st.floats(-1e-9, 1e-9))
def test_close_accepts_answers_within_tolerance(values, jitter):
    e = np.array(values)
    ex.close(e * (1 + jitter), e, rtol=1e-6, atol=1e-9)


def test_hidden_instances_are_fixed_and_distinct():
    a = ex.instance_rng("04.1", 0).normal(size=3)
    assert np.array_equal(a, ex.instance_rng("04.1", 0).normal(size=3))
    assert not np.array_equal(a, ex.instance_rng("04.1", 1).normal(size=3))
    assert not np.array_equal(a, ex.instance_rng("04.2", 0).normal(size=3))


def test_modes(monkeypatch):
    key = "04.1"
    wrong = lambda nu, q, c, beta, lower, upper: q        # noqa: E731
    assert ex.mode() == "learn" and not ex.check(key, wrong)
    monkeypatch.setenv("LAYERQ_EXERCISES", "blank")
    assert ex.check(key, None).status == "unanswered"
    with pytest.raises(AssertionError, match="blank notebook"):
        ex.check(key, wrong)
    monkeypatch.setenv("LAYERQ_EXERCISES", "solve")
    namespace = {"np": np}
    monkeypatch.setattr("layerq_nb.exercises._core._namespace", lambda: namespace)
    assert ex.check(key, None) and ex.passed(key)
    assert "allocation_at" in namespace, "the solution's names stay defined for later cells"
    monkeypatch.setattr("layerq_nb.exercises._core.run_solution", lambda k, ns: (wrong,))
    with pytest.raises(AssertionError, match="shipped solution fails"):
        ex.check(key, None)
    monkeypatch.setenv("LAYERQ_EXERCISES", "bogus")
    with pytest.raises(ValueError, match="learn, solve, blank"):
        ex.mode()


def test_solution_needing_an_undefined_name_fails_where_it_runs():
    (allocation_at,) = ex.run_solution("04.1", {})          # a namespace without numpy
    with pytest.raises(NameError, match="np"):
        allocation_at(0.1, np.ones(2) / 2, np.ones(2), np.ones(2), 0.0, 1.0)


def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="04.1"):
        ex.check("04.99", None)
    with pytest.raises(KeyError, match="choose one of 00"):
        ex.exercises("12")


def test_progress_totals_points(capsys):
    ex.check("04.1", None)
    rows = ex.progress("04")
    assert rows and "total" in capsys.readouterr().out
