"""Notebook 07's exercises (scaling out): each shipped solution passes in a namespace holding only what the
notebook defines by then; a blank answer is "not answered"; typical wrong answers are "wrong" with a message
that says what differs; an answer that raises, or a rank that skips the all-reduce, is contained (no hang).
Also `run_on_ranks`, the two-process launcher the notebook and the check use."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import layerq_nb as lq
from layerq_nb import exercises as ex
from layerq_nb.exercises.nb07 import RankFailure, package_reduce_factor, run_on_ranks


def namespace(**names):
    return {"np": np, "torch": torch, "lq": lq, "math": math, **names}


# ----------------------------------------------------------------------------- 07.1

def test_07_1_solution_blank_and_wrong():
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 12), torch.nn.Linear(12, 50))
    (value,) = ex.run_solution("07.1", namespace(model=model))
    n = sum(p.numel() for p in model.parameters())
    v = ex.check("07.1", value, model=model)
    assert v and v.points == 1 and value == 2 * n, v.message
    assert ex.check("07.1", None, model=model).status == "unanswered"
    v = ex.check("07.1", 4 * n, model=model)
    assert v.status == "wrong" and "fp32" in v.message
    v = ex.check("07.1", n, model=model)
    assert v.status == "wrong" and "parameter count" in v.message
    v = ex.check("07.1", 16 * n, model=model)
    assert v.status == "wrong" and "bits" in v.message
    assert ex.check("07.1", "two bytes", model=model).status == "wrong"
    v = ex.check("07.1", 3 * n, model=model)              # a number exercise does not show the number
    assert v.status == "wrong" and f"{2 * n:,}" not in v.message and str(2 * n) not in v.message
    v = ex.check("07.1", 2 * n / 2**20, model=model)      # MiB, which int() would have truncated to 0
    assert v.status == "wrong" and "MiB" in v.message and "bytes" in v.message
    v = ex.check("07.1", 2 * n + 0.6, model=model)        # int() would have passed it
    assert v.status == "wrong" and "whole number" in v.message
    with pytest.raises(TypeError, match="pass the model"):
        ex.check("07.1", 2 * n)


# ----------------------------------------------------------------------------- 07.2

def test_07_2_solution_blank_and_wrong():
    (fn,) = ex.run_solution("07.2", namespace())
    v = ex.check("07.2", fn)
    assert v and v.points == 3, v.message
    assert fn(7, 1, 2) == [1, 3, 5] and fn(3, 3, 4) == []
    assert ex.check("07.2", lambda n, r, w: (_ for _ in ()).throw(NotImplementedError())).status == "unanswered"

    def contiguous(n, rank, world):
        size = -(-n // world)
        return list(range(rank * size, min(n, (rank + 1) * size)))
    v = ex.check("07.2", contiguous)
    assert v.status == "wrong" and "partition" in v.message and "interleaves" in v.message
    v = ex.check("07.2", lambda n, rank, world: list(range(rank, n, 2)))          # world_size hard-coded
    assert v.status == "wrong" and "exactly once" in v.message
    v = ex.check("07.2", lambda n, rank, world: list(range(rank + 1, n, world)))  # off by one
    assert v.status == "wrong" and "expected" in v.message
    v = ex.check("07.2", lambda n, rank, world: n // 0)
    assert v.status == "wrong" and "ZeroDivisionError" in v.message
    v = ex.check("07.2", lambda n, rank, world: 3)
    assert v.status == "wrong" and "as ints" in v.message
    v = ex.check("07.2", lambda n, rank, world: [float(i) for i in range(rank, n, world)])   # blocks[2.0] fails
    assert v.status == "wrong" and "as ints" in v.message
    assert ex.check("07.2", lambda n, rank, world: np.arange(rank, n, world))            # numpy ints are ints
    v = ex.check("07.2", lambda n, rank, world: list(range(rank, n, world))[::-1])     # right blocks, wrong order
    assert v.status == "wrong" and "increasing order" in v.message and "partition" not in v.message
    v = ex.check("07.2", lambda n, rank, world: list(range(rank, n, world)) or None)   # None for an empty shard
    assert v.status == "wrong" and "[] when" in v.message and "instance 4" in v.message


# ----------------------------------------------------------------------------- 07.3

def _inputs():
    rng = np.random.default_rng(3)
    return [torch.from_numpy(rng.normal(size=(t, 6))) for t in (5, 0, 7)]


def test_07_3_solution_passes_with_real_shaped_inputs():
    ns = namespace(inputs=_inputs(), dist=dist)
    ex.run_solution("07.2", ns)                            # 07.3's solution uses the learner's shard
    (fn,) = ex.run_solution("07.3", ns)
    v = ex.check("07.3", fn, inputs=_inputs())
    assert v and v.points == 3, v.message
    assert "2 and 3 processes" in v.message


def _local(blocks, rank, world_size):
    d = blocks[0].shape[1]
    A = torch.zeros(d, d, dtype=torch.float64)
    for i in range(rank, len(blocks), world_size):
        A += blocks[i].T @ blocks[i]
    return A


def test_07_3_blank_and_wrong_answers():
    def blank(blocks, rank, world_size):
        raise NotImplementedError
    assert ex.check("07.3", blank).status == "unanswered"
    assert ex.check("07.3", lambda b, r, w: None).status == "unanswered"

    def no_all_reduce(blocks, rank, world_size):
        return _local(blocks, rank, world_size)
    v = ex.check("07.3", no_all_reduce)
    assert v.status == "wrong" and "only its own shard" in v.message

    def every_block(blocks, rank, world_size):
        A = sum(b.T @ b for b in blocks)
        dist.all_reduce(A)
        return A
    v = ex.check("07.3", every_block)
    assert v.status == "wrong" and "outside its shard" in v.message

    def no_sharing(blocks, rank, world_size):      # every rank sums everything alone: right total, no work shared
        return sum(b.T @ b for b in blocks)
    v = ex.check("07.3", no_sharing)
    assert v.status == "wrong" and "outside its shard" in v.message

    def float32(blocks, rank, world_size):
        A = torch.zeros(blocks[0].shape[1], blocks[0].shape[1])
        A += _local(blocks, rank, world_size)
        dist.all_reduce(A)
        return A
    v = ex.check("07.3", float32)
    assert v.status == "wrong" and "float32" in v.message and "blocks' dtype" in v.message

    def mean(blocks, rank, world_size):
        A = _local(blocks, rank, world_size)
        dist.all_reduce(A)
        return A / world_size
    v = ex.check("07.3", mean)
    assert v.status == "wrong" and "not a mean" in v.message

    def outer(blocks, rank, world_size):
        A = torch.zeros(blocks[0].shape[0], blocks[0].shape[0], dtype=torch.float64)
        if rank == 0:
            A += blocks[0] @ blocks[0].T
        dist.all_reduce(A)
        return A
    v = ex.check("07.3", outer)
    assert v.status == "wrong" and "not a a^T" in v.message

    def raises(blocks, rank, world_size):
        raise KeyError("oops")
    v = ex.check("07.3", raises)
    assert v.status == "wrong" and "KeyError" in v.message


def test_07_3_near_misses_get_their_own_message():
    def through_float32(blocks, rank, world_size):        # float32 inside, cast back: right dtype, float32 digits
        A = _local(blocks, rank, world_size).float()
        dist.all_reduce(A)
        return A.double()
    v = ex.check("07.3", through_float32)
    assert v.status == "wrong" and "float32's precision" in v.message

    def bfloat16(blocks, rank, world_size):               # the dtype the notebook is about; numpy has none
        A = _local(blocks, rank, world_size).to(torch.bfloat16)
        dist.all_reduce(A)
        return A
    v = ex.check("07.3", bfloat16)
    assert v.status == "wrong" and "came back as bfloat16" in v.message and "TypeError" not in v.message

    visible = [torch.from_numpy(np.random.default_rng(0).normal(size=(4, 9))) for _ in range(3)]

    def notebook_data(blocks, rank, world_size):          # the notebook's own blocks, not the argument
        A = _local(visible, rank, world_size)
        dist.all_reduce(A)
        return A
    v = ex.check("07.3", notebook_data)
    assert v.status == "wrong" and "`blocks` argument" in v.message and "a a^T" not in v.message

    def rank_zero_only(blocks, rank, world_size):         # the reduce-to-rank-0 habit
        A = _local(blocks, rank, world_size)
        dist.all_reduce(A)
        return A if rank == 0 else None
    v = ex.check("07.3", rank_zero_only)
    assert v.status == "wrong" and "rank 1 returned None" in v.message


def test_07_3_a_rank_that_skips_the_collective_is_contained():
    def skip_empty(blocks, rank, world_size):
        ids = list(range(rank, len(blocks), world_size))
        A = torch.zeros(blocks[0].shape[1], blocks[0].shape[1], dtype=torch.float64)
        if not ids:                                       # rank 1 of the 1-block instance never joins
            return A
        for i in ids:
            A += blocks[i].T @ blocks[i]
        dist.all_reduce(A)
        return A
    start = time.monotonic()
    v = ex.check("07.3", skip_empty)
    assert v.status == "wrong" and "every rank" in v.message
    assert time.monotonic() - start < 60


def test_run_on_ranks_results_errors_and_deadline():
    out = run_on_ranks(package_reduce_factor, 2, _inputs())
    expected = sum(a.T @ a for a in _inputs()).numpy()
    assert len(out) == 2 and all(np.allclose(A, expected) for A in out)
    assert run_on_ranks(lambda x, rank, world: (x, rank, world), 3, "hi") == [("hi", 0, 3), ("hi", 1, 3), ("hi", 2, 3)]
    with pytest.raises(RankFailure) as failure:
        run_on_ranks(lambda rank, world: 1 / rank, 2)
    assert failure.value.rank == 0 and failure.value.kind == "error" and "ZeroDivisionError" in str(failure.value)

    def stuck(rank, world):
        if rank == 0:
            time.sleep(30)
        return rank
    start = time.monotonic()
    with pytest.raises(RankFailure) as failure:
        run_on_ranks(stuck, 2, timeout=3)
    assert failure.value.kind == "timeout" and failure.value.rank == 0
    assert time.monotonic() - start < 15
