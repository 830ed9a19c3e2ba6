"""`pruned` never leaves the model half-changed: a fault injected after some layers are already pruned
(in a mask, in a block's forward pass, or an interrupt) still gives back every parameter bit for bit, and
no hook stays registered."""
from __future__ import annotations

import pytest
import torch

from layerq_nb.models import layers
from layerq_nb.pruning import apply, pruned, weight_fingerprint


@pytest.fixture(scope="module")
def calibration(tiny):
    from layerq_nb import load_task
    return load_task("prose", tiny[1], split="train", n_blocks=2, block_size=24)


def _no_hooks(model) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _fail_on_call(monkeypatch, name: str, call: int, model, before: str, error=RuntimeError):
    """Make apply.<name> raise on its `call`-th use, after checking the model is pruned part-way by then."""
    real, seen = getattr(apply, name), []

    def faulty(*args, **kwargs):
        seen.append(1)
        if len(seen) == call:
            assert weight_fingerprint(model) != before        # earlier matrices are already pruned
            raise error("fault injected half-way")
        return real(*args, **kwargs)
    monkeypatch.setattr(apply, name, faulty)


@pytest.mark.parametrize("method, mask", [("magnitude", "magnitude_mask"), ("wanda", "wanda_mask"),
                                          ("sparsegpt", "sparsegpt")])
def test_a_mask_that_fails_half_way_leaves_every_weight_as_it_was(tiny, calibration, monkeypatch, method, mask):
    model = tiny[0]
    before = weight_fingerprint(model)
    n_linears = len(layers(model)[0].linears)
    _fail_on_call(monkeypatch, mask, n_linears + 2, model, before)      # the third matrix of layer 1
    with pytest.raises(RuntimeError, match="fault injected"):
        with pruned(model, [0.5, 0.6, 0.7], method, blocks=calibration, batch_size=1, progress=False):
            pytest.fail("the block must not run")
    assert weight_fingerprint(model) == before and _no_hooks(model)


def test_an_interrupt_half_way_leaves_every_weight_as_it_was(tiny, calibration, monkeypatch):
    model = tiny[0]
    before = weight_fingerprint(model)
    _fail_on_call(monkeypatch, "wanda_mask", 9, model, before, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        with pruned(model, 0.5, "wanda", blocks=calibration, batch_size=1, progress=False):
            pass
    assert weight_fingerprint(model) == before and _no_hooks(model)


def test_a_forward_pass_that_fails_half_way_leaves_every_weight_as_it_was(tiny, calibration):
    model = tiny[0]
    before = weight_fingerprint(model)
    last = layers(model)[-1].module

    def fail(module, args):      # the last block's statistics run after the layers below are pruned
        assert weight_fingerprint(model) != before
        raise RuntimeError("fault injected in a forward pass")
    handle = last.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="forward pass"):
            with pruned(model, 0.5, "sparsegpt", blocks=calibration, batch_size=1, progress=False):
                pass
    finally:
        handle.remove()
    assert weight_fingerprint(model) == before and _no_hooks(model)


def test_a_failing_body_and_a_second_run_see_the_dense_model(tiny, calibration):
    model = tiny[0]
    before = weight_fingerprint(model)
    with pytest.raises(ValueError, match="in the body"):
        with pruned(model, 0.5, "wanda", blocks=calibration, batch_size=1, progress=False):
            raise ValueError("in the body")
    assert weight_fingerprint(model) == before
    with pruned(model, 0.5, "wanda", blocks=calibration, batch_size=1, progress=False) as first:
        pruned_once = [p.detach().clone() for p in model.parameters()]
    with pruned(model, 0.5, "wanda", blocks=calibration, batch_size=1, progress=False) as second:
        assert all(torch.equal(a, b) for a, b in zip(pruned_once, model.parameters()))
    assert (first.achieved == second.achieved).all() and weight_fingerprint(model) == before
