"""Checks for notebook 07 (scaling out: bf16, data parallel scoring, bigger models).

Data parallel scoring (`scoring._shard`, `tape.all_reduce`): process `rank` of `world_size` takes every
world_size-th block from its rank, reduces its blocks' statistics locally, and one all-reduce (a sum
across processes) leaves every process with the single-process sums. `run_on_ranks` starts such
processes on this machine (gloo, a fresh file store: no port to collide with another user's) and
returns what each rank's function returned, with a deadline so a learner's bug never hangs a notebook.
"""
from __future__ import annotations

# cpu on purpose (module): hidden instances are small CPU tensors, graded against CPU references
import contextlib
import multiprocessing as mp
import operator
import os
import pickle
import queue as queue_module
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from ._core import Mismatch, MissingContext, NotAnswered, ReturnedNone, call, close, exercise, instance_rng

__all__ = ["NarrowTensor", "RankFailure", "package_reduce_factor", "package_shard", "run_on_ranks"]


class RankFailure(RuntimeError):
    """A rank raised, never answered, or the processes could not start; `.rank`, `.kind` and the message say which."""

    def __init__(self, message: str, rank: int | None = None, kind: str = "error"):
        super().__init__(message)
        self.rank, self.kind = rank, kind


@dataclass(frozen=True)
class NarrowTensor:
    """A tensor in a dtype numpy lacks (bfloat16), sent back widened to float32 with its own dtype's name."""
    dtype: str
    values: np.ndarray


def _to_host(value):
    """Tensors to numpy (pickled back to the parent), containers element-wise, anything else as is."""
    if hasattr(value, "detach"):
        import torch
        if value.dtype == torch.bfloat16:
            return NarrowTensor("bfloat16", value.detach().cpu().float().numpy())
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


def _rank_main(rank, world_size, init_method, fn, args, calls, collective_timeout, results):
    """One process of the group: join it, run fn on each call's arguments, send the results back (an error
    is sent before the group is torn down, so the parent hears the cause before its echoes on other ranks)."""
    try:
        import faulthandler

        import torch
        import torch.distributed as dist
        faulthandler.disable()                        # a gloo abort is reported by the parent, not dumped here
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)                           # gloo's C++ aborts print here; errors come back by queue
        torch.set_num_threads(1)                      # world_size processes share the cores
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout))
    except BaseException as error:            # noqa: BLE001 - report every failure to the parent
        results.put((rank, "error", f"could not join the process group: {type(error).__name__}: {error}"))
        return
    try:
        outs = [_to_host(fn(*call_args, rank, world_size)) for call_args in (calls or [args])]
        try:
            pickle.dumps(outs)
        except Exception as error:                # noqa: BLE001
            raise TypeError(f"the function returned something that cannot be sent between processes ({error}): "
                            "return tensors, arrays or numbers") from None
        dist.barrier()                                # nobody leaves while another is still connecting or reducing
        results.put((rank, "ok", outs if calls else outs[0]))
    except NotImplementedError:
        results.put((rank, "blank", "the function still raises NotImplementedError"))
    except BaseException as error:            # noqa: BLE001
        results.put((rank, "error", f"{type(error).__name__}: {error}"))
    finally:
        with contextlib.suppress(Exception):         # the group may already be broken
            dist.destroy_process_group()


_ECHOES = ("Connection", "collective mismatch", "Timed out", "Received data size", "connectFullMesh")


def run_on_ranks(fn, world_size: int = 2, *args, calls=None, timeout: float = 60.0) -> list:
    """Run `fn(*args, rank, world_size)` in `world_size` new processes that form one torch.distributed
    group (gloo backend, CPU) and return the list of their results, rank 0 first (tensors as numpy).

    `calls`: a list of argument tuples; each rank then runs fn on every one in turn and returns a list.
    The processes are forked, so `fn` may be defined in a notebook; they rendezvous through a file in a
    fresh temporary folder (no TCP port to collide with anyone's). Raises `RankFailure` when a rank
    raises (`kind="error"`, or `"blank"` for NotImplementedError) or when the group has not answered
    within `timeout` seconds (`kind="timeout"`: a rank waiting in a collective another never joined);
    every process is stopped either way.
    """
    if "fork" not in mp.get_all_start_methods():
        raise RankFailure("run_on_ranks needs the 'fork' start method (Linux, macOS): on Windows run "
                          "`torchrun --standalone --nproc_per_node=2` on a script instead", kind="start")
    ctx = mp.get_context("fork")
    folder = tempfile.mkdtemp(prefix="layerq_gloo_")
    init_method = "file://" + os.path.join(folder, "store")
    results = ctx.Queue()
    collective = max(5.0, timeout / 2)
    procs = [ctx.Process(target=_rank_main, args=(rank, world_size, init_method, fn, args, calls, collective, results),
                         daemon=True) for rank in range(world_size)]
    deadline = time.monotonic() + timeout
    got: dict[int, object] = {}
    try:
        for p in procs:
            p.start()
        while len(got) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [r for r in range(world_size) if r not in got]
                raise RankFailure(f"rank(s) {missing} did not finish within {timeout:.0f} s: is every rank calling "
                                  "all_reduce the same number of times, on tensors of the same shape?",
                                  rank=missing[0], kind="timeout")
            try:
                rank, status, value = results.get(timeout=min(left, 0.5))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RankFailure(f"rank {procs.index(dead[0])} died (exit code {dead[0].exitcode}) before answering; "
                                      "gloo aborts a process whose collectives do not match the others': every rank "
                                      "must call all_reduce once per call, on a tensor of the same shape and dtype, "
                                      "even when its shard is empty", rank=procs.index(dead[0]), kind="error") from None
                continue
            if status != "ok":
                if any(word in str(value) for word in _ECHOES):
                    # often the echo of another rank's failure: give that rank a moment to report its cause
                    cause_by = time.monotonic() + 1.0
                    while time.monotonic() < cause_by:
                        try:
                            other = results.get(timeout=0.2)
                        except queue_module.Empty:
                            continue
                        if other[1] != "ok" and not any(word in str(other[2]) for word in _ECHOES):
                            rank, status, value = other
                            break
                if any(word in str(value) for word in _ECHOES):
                    value = (f"{value}. Another rank left the group early or called a different collective: every rank "
                             "must call all_reduce once per call, on a tensor of the same shape and dtype, even when "
                             "its shard is empty")
                raise RankFailure(f"rank {rank}: {value}", rank=rank, kind=status)
            got[rank] = value
        return [got[r] for r in range(world_size)]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- 07.1 bf16 bytes (number)

@exercise("07.1", title="Bytes of the model's parameters in bfloat16", answer="bf16_bytes", kind="number",
          hints=("Count the parameters: sum of p.numel() over model.parameters().",
                 "bfloat16 is a 16-bit format: 1 sign bit, 8 exponent bits, 7 mantissa bits. How many bytes is that?"))
def _bf16_bytes(bf16_bytes, model=None) -> str:
    if model is None:
        raise MissingContext('ex.check("07.1", bf16_bytes, model=model): pass the model')
    n = sum(p.numel() for p in model.parameters())
    try:
        value = float(bf16_bytes)
    except (TypeError, ValueError):
        raise Mismatch(f"expected a whole number of bytes, got a {type(bf16_bytes).__name__}") from None
    if isinstance(bf16_bytes, bool):
        raise Mismatch("expected a whole number of bytes, got a bool")
    for unit, size in (("MiB", 2**20), ("MB", 1e6), ("GiB", 2**30), ("GB", 1e9)):
        if np.isclose(value, 2 * n / size, rtol=1e-3):
            raise Mismatch(f"{value:g} is the size in {unit}; give it in bytes (a whole number)")
    if not np.isfinite(value) or value != round(value):
        raise Mismatch(f"{value:g} is not a whole number of bytes")
    got = int(value)
    if got == 2 * n:
        return f"{2 * n / 2**20:.0f} MiB in bf16 for {n:,} parameters, half of fp32's {4 * n / 2**20:.0f} MiB."
    if got == 4 * n:
        raise Mismatch(f"{got:,} bytes is fp32 (4 bytes per parameter); bfloat16 takes 16 bits")
    if got == 16 * n:
        raise Mismatch("16 is the number of bits per parameter; count bytes")
    if got == n:
        raise Mismatch(f"{got:,} is the parameter count; each takes more than one byte in bfloat16")
    # a number exercise: the expected value would be the answer to paste, so it is not shown
    raise Mismatch(f"{got:,} bytes is not what {n:,} parameters take in bfloat16: parameters x bytes per parameter")


# ----------------------------------------------------------------------------- 07.2 the shard (build)

SHARD_CASES = [(7, 1, 2), (7, 0, 2), (10, 2, 3), (3, 3, 4), (1, 0, 1), (5, 4, 5), (100, 7, 8), (0, 0, 2)]


def package_shard(n_blocks: int, rank: int, world_size: int) -> list[int]:
    """The blocks `scoring._shard` gives process `rank` of `world_size`."""
    return list(range(rank, n_blocks, world_size))


@exercise("07.2", title="Which blocks a process scores", answer="shard",
          hints=(("Every block goes to exactly one process, and the processes take turns: block 0 to rank 0, block 1 to "
                 "rank 1, ..., block world_size to rank 0 again."),
                 "So rank r takes the blocks i with i % world_size == r, in increasing order.",
                 "A range with a start and a step gives exactly those indices."))
def _shard(shard) -> str:
    for i, (n, rank, world) in enumerate(SHARD_CASES):
        where = f"hidden instance {i + 1} (n_blocks = {n}, rank = {rank}, world_size = {world})"
        try:
            got = call(shard, n, rank, world, where=where)
        except ReturnedNone:
            raise Mismatch(f"{where}: your function returned None; return a list, [] when this rank's shard is "
                           "empty") from None
        try:
            got = [operator.index(x) for x in got]      # ints only: reduce_factor indexes blocks[i] with them
        except TypeError:
            raise Mismatch(f"{where}: return the block indices as ints (a list or a range of ints); "
                           f"got {got!r}") from None
        expected = package_shard(n, rank, world)
        if got == expected:
            continue
        if sorted(got) == expected:
            raise Mismatch(f"{where}: the right blocks, {sorted(got)}, but in the order {got}: return them in "
                           "increasing order")
        everyone = sorted(j for r in range(world) for j in list(call(shard, n, r, world, where=where)))
        if everyone != list(range(n)):
            raise Mismatch(f"{where}: expected {expected}, got {got}; over all ranks your shards cover {everyone[:12]}"
                           f"{'...' if len(everyone) > 12 else ''}, not each of the {n} blocks exactly once")
        raise Mismatch(f"{where}: expected {expected}, got {got}. Your shards do partition the blocks (the sums would "
                       "still be right), but the package interleaves them: rank r takes every world_size-th block, "
                       "starting from block r")
    return ("rank r scores blocks r, r + world_size, r + 2 world_size, ...: every block exactly once, and an "
            "empty shard when rank >= n_blocks.")


# ----------------------------------------------------------------------------- 07.3 the all-reduce (build)

def _blocks(rng, n, d, lengths=(3, 10)):
    import torch
    return [torch.from_numpy(rng.normal(size=(int(rng.integers(*lengths)), d))) for _ in range(n)]


def package_reduce_factor(blocks, rank, world_size):
    """The package's path: this rank's K-FAC input factor over its shard, summed by `tape.all_reduce`."""
    import torch

    from ..tape import Reducer, all_reduce
    red = Reducer()
    d = blocks[0].shape[1]
    total = red.state.setdefault(("A", 0, "input"), torch.zeros(d, d, dtype=torch.float64))
    for i in package_shard(len(blocks), rank, world_size):
        total.addmm_(blocks[i].T.double(), blocks[i].double())
        red.tokens += blocks[i].shape[0]
    all_reduce([red])
    return total


def _reduce_instances(inputs=None):
    """(name, blocks, world_size) groups: odd counts, an empty shard, a block with no tokens, three processes."""
    import torch
    two = []
    rng = instance_rng("07.3", 0)
    two.append(("5 blocks, d = 3", _blocks(rng, 5, 3)))
    rng = instance_rng("07.3", 1)
    two.append(("1 block, d = 4 (rank 1's shard is empty)", _blocks(rng, 1, 4)))
    rng = instance_rng("07.3", 2)
    blocks = _blocks(rng, 6, 8)
    blocks[3] = torch.zeros(0, 8, dtype=torch.float64)             # a block whose tokens are all padding
    two.append(("6 blocks, d = 8, one without tokens", blocks))
    if inputs is not None:
        two.append(("the real model's layer-0 attention inputs", [torch.as_tensor(a).double() for a in inputs]))
    rng = instance_rng("07.3", 3)
    three = [("7 blocks, d = 5, three processes", _blocks(rng, 7, 5))]
    return [(2, two), (3, three)]


def _only_its_shard(reduce_factor):
    """The learner's function, each rank's blocks outside its 07.2 shard filled with NaN: a rank that reads
    them (summing every block instead of communicating) returns NaN, and cannot pass by accident."""
    import torch

    def guarded(blocks, rank, world_size):
        mine = set(package_shard(len(blocks), rank, world_size))
        return reduce_factor([b if i in mine else torch.full_like(b, float("nan")) for i, b in enumerate(blocks)],
                             rank, world_size)
    return guarded


def _diagnose(got, blocks, rank, world) -> str:
    if np.isnan(got).any():
        return (f"rank {rank} read blocks outside its shard (the check fills those with NaN on each rank): sum only "
                "the blocks of shard(len(blocks), rank, world_size), then all_reduce, so that the processes share "
                "the work")
    full = sum((b.T @ b).numpy() for b in blocks)
    local = sum(((blocks[i].T @ blocks[i]).numpy() for i in package_shard(len(blocks), rank, world)),
                np.zeros_like(full))
    if got.shape == full.shape:
        if np.allclose(got, local, rtol=1e-6, atol=1e-9) and not np.allclose(local, full):
            return (f"rank {rank} returned only its own shard's sum: call torch.distributed.all_reduce on it so every "
                    "rank ends with the total")
        if np.allclose(got, full / world, rtol=1e-6):
            return "the result is the total divided by world_size: the reducers' state is a sum, not a mean"
    elif got.ndim == 2 and got.shape[0] == got.shape[1]:
        tokens = {b.shape[0] for b in blocks} | {sum(blocks[i].shape[0] for i in package_shard(len(blocks), rank, world))}
        if got.shape[0] in tokens:
            return f"A is d_in x d_in = {full.shape}: sum a^T a over tokens (a has shape (tokens, d_in)), not a a^T"
        return (f"these blocks have d_in = {full.shape[0]}, so A is {full.shape}: build it from the function's "
                "`blocks` argument (not from the notebook's own data)")
    return ""


@exercise("07.3", title="All-reduce one reducer's state: two processes equal one", answer="reduce_factor",
          hints=(("Start from a zero (d_in, d_in) tensor with the blocks' dtype (d_in is the second dimension of any block): every rank "
                 "needs one, even a rank whose shard is empty."),
                 "Add a^T a for each block of this rank's shard (your shard(len(blocks), rank, world_size) from 07.2).",
                 ("Then one collective sums the tensor across the processes, in place; every rank must call it, "
                 "and return the tensor afterwards.")))
def _reduce_factor(reduce_factor, inputs=None) -> str:
    checked = 0
    for world, instances in _reduce_instances(inputs):
        calls = [(blocks,) for _, blocks in instances]
        try:
            learner = run_on_ranks(_only_its_shard(reduce_factor), world, calls=calls, timeout=45.0)
        except RankFailure as failure:
            if failure.kind == "blank":
                raise NotAnswered("your function still raises NotImplementedError: write its body") from None
            raise Mismatch(f"with {world} processes on the hidden instances: {failure}") from None
        package = run_on_ranks(package_reduce_factor, world, calls=calls, timeout=45.0)
        for j, (name, blocks) in enumerate(instances):
            single = sum((b.T @ b).numpy() for b in blocks)                  # one process, every block
            for rank in range(world):
                close(package[rank][j], single, rtol=1e-9, atol=1e-9,
                      where=f"package check '{name}' rank {rank} (report this as a bug)")
                where = f"hidden instance '{name}', rank {rank} of {world}"
                got = learner[rank][j]
                if got is None:
                    answered = [r for r in range(world) if learner[r][j] is not None]
                    if not answered:
                        raise NotAnswered("your function returned None: return the reduced tensor")
                    raise Mismatch(f"{where}: rank {rank} returned None while rank {answered[0]} returned A: after the "
                                   "all-reduce every rank holds the total, so every rank returns it")
                kind = got.dtype if isinstance(got, NarrowTensor) else getattr(got, "dtype", None)
                if kind is not None and str(kind) != "float64":
                    dtype_name = kind if isinstance(kind, str) else np.dtype(kind).name
                    raise Mismatch(f"{where}: A came back as {dtype_name}, the blocks are float64: start from zeros "
                                   "with the blocks' dtype (blocks[0].dtype), or the sum loses digits the float64 "
                                   "statistics keep")
                try:
                    got = np.asarray(got, dtype=float)
                except (TypeError, ValueError):
                    raise Mismatch(f"{where}: return the (d_in, d_in) tensor, got {type(got).__name__}") from None
                scale = float(np.abs(single).max()) if single.size else 1.0
                try:
                    # float64 sums in any order agree to ~1e-15 of the largest entry: 1e-10 tells a float64 sum
                    # from one that went through float32 (~1e-7) on the way
                    close(got, single, where=where, rtol=1e-10, atol=1e-10 * scale, what="A")
                except Mismatch as why:
                    if got.shape == single.shape and np.allclose(got, single, rtol=1e-5, atol=1e-6 * scale):
                        raise Mismatch(f"{where}: A agrees with the float64 sum only to about 1e-7, float32's "
                                       "precision: keep the sum and the all-reduce in float64 (the blocks' dtype) "
                                       "throughout, not only the result") from None
                    advice = _diagnose(got, blocks, rank, world)
                    raise Mismatch(f"{why}" + (f". {advice}" if advice else "")) from None
            checked += 1
    return (f"on {checked} hidden instances with 2 and 3 processes, every rank holds A = sum over all blocks of a^T a, "
            "the single-process sum: statistics that are sums shard and all-reduce exactly.")
