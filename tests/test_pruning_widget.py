"""The Pruning stepper only draws: every number comes from a pure step of `ui/steps.py`, the calibration
statistics are computed once per layer, evaluations run in the caller's thread, and the shared model is
bit-identical after every evaluation, a failed one included."""
from __future__ import annotations

import ast
import inspect
import threading
from collections import Counter

import numpy as np
import pytest

import layerq_nb as lq
from layerq_nb.pruning import apply, weight_fingerprint
from layerq_nb.ui import model_widgets, steps


@pytest.fixture(scope="module")
def blocks(tiny):
    return (lq.load_task("prose", tiny[1], split="train", n_blocks=2, block_size=24),
            lq.load_task("prose", tiny[1], split="test", n_blocks=1, block_size=24))


@pytest.fixture
def stepper(tiny, blocks):
    maps = {"mdl": np.array([1.0, 2.0, 3.0]), "owl": np.array([3.0, 1.0, 2.0])}
    return model_widgets.Pruning(tiny[0], *blocks, maps=maps, sparsity=0.5, with_reference=False,
                                 evaluate_on_arrival=False)


def _count_calls(monkeypatch, name: str, key) -> Counter:
    real, calls = getattr(steps, name), Counter()

    def counted(*args, **kwargs):
        calls[key(*args, **kwargs)] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(steps, name, counted)
    return calls


def test_statistics_once_per_layer_and_masks_once_per_setting(stepper, monkeypatch):
    inputs = _count_calls(monkeypatch, "layer_inputs", lambda model, blocks, layer, **kw: layer)
    masks = _count_calls(monkeypatch, "matrix_mask", lambda weight, method, s, *args: (args[-1], args[-2], method, s))
    w = stepper
    w.go(2)
    for _ in range(2):                      # every control, twice over: statistics are computed once per layer
        for layer in range(3):
            w.stack.set_state({"selected": layer})
            for module in list(w.module.options)[:2]:
                w.module.value = module
                for sparsity in (0.4, 0.5):
                    w.sparsity.value = sparsity
                    computed = sum(masks.values())
                    for _ in range(2):      # back and forth: a setting seen a moment ago is not computed again
                        for method in w.method.options:
                            w.method.value = method
                        w.penalty.value = "quadratic"
                        w.penalty.value = "log"
                        w.map.value = "owl"
                        w.map.value = "mdl"
                        if _ == 0:
                            computed = sum(masks.values())
                    assert sum(masks.values()) == computed and w.error is None
    assert inputs == {0: 1, 1: 1, 2: 1}     # (the cache keeps the last 3 layers: each holds d_in x d_in Hessians)


def _threads() -> set:
    """The live threads but tqdm's monitor (a daemon any progress bar may start)."""
    return {t for t in threading.enumerate() if t.name != "tqdm_monitor"}


def test_evaluation_runs_in_the_callers_thread_and_restores(stepper, tiny, monkeypatch):
    real, threads = steps.prune_evaluation, []

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)
    monkeypatch.setattr(steps, "prune_evaluation", recorded)
    before, running = weight_fingerprint(tiny[0]), _threads()
    for method in lq.pruning.PRUNE_METHODS:
        stepper.method.value = method
        row = stepper.evaluate()
        assert row["restored"] and weight_fingerprint(tiny[0]) == before
    assert threads == [threading.current_thread()] * 3 and _threads() == running


@pytest.fixture(params=["plain", "ipython"])
def shell(request):
    """With and without an IPython shell: inside one, an Output widget swallows the exceptions raised in it
    (found by CI, where earlier tests had started a shell: the failure showed as an UnboundLocalError)."""
    if request.param == "plain":
        yield None
        return
    from IPython.core.interactiveshell import InteractiveShell
    existed = InteractiveShell.initialized()
    yield InteractiveShell.instance()
    if not existed:
        InteractiveShell.clear_instance()


def test_an_evaluation_that_fails_half_way_is_shown_and_restores(shell, stepper, tiny, monkeypatch):
    real, seen = apply.wanda_mask, []

    def faulty(*args, **kwargs):
        seen.append(1)
        if len(seen) == 9:                  # layer 1, after layer 0 is pruned
            raise RuntimeError("fault injected half-way")
        return real(*args, **kwargs)
    monkeypatch.setattr(apply, "wanda_mask", faulty)
    before = weight_fingerprint(tiny[0])
    stepper.method.value = "wanda"
    stepper.go(3)
    stepper.button.click()
    assert "fault injected half-way" in stepper.status.value and isinstance(stepper.eval_error, RuntimeError)
    assert "The evaluation failed" in stepper.text.value and not stepper.button.disabled
    assert weight_fingerprint(tiny[0]) == before and stepper.results == []


def test_the_widget_class_does_no_mask_math_and_starts_no_thread():
    names = {node.id if isinstance(node, ast.Name) else node.attr
             for node in ast.walk(ast.parse(inspect.getsource(model_widgets.Pruning)))
             if isinstance(node, (ast.Name, ast.Attribute))}
    forbidden = {"threading", "Thread", "torch", "magnitude_mask", "wanda_mask", "sparsegpt", "pruned", "sparsity_map",
                 "weights_restored", "input_norms", "register_forward_hook"}
    assert not names & forbidden
