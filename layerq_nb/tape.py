"""One hooked forward/backward pass that hands per-module inputs a and output gradients b to reducers.

For a linear map s = W a (per token), the weight gradient of a loss is sum_t b_t a_t^T with
b_t = dLoss/ds_t. Every statistic the scoring core needs is a reduction of (a, b) over tokens
(K-FAC: Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
arXiv 1503.05671; EK-FAC: George et al., "Fast Approximate Natural Gradient Descent in a Kronecker-factored
Eigenbasis", arXiv 1806.03884):

    gradient        sum_t b_t a_t^T                      (d_out, d_in)
    K-FAC factors   A = sum_t a_t a_t^T,  G = sum_t b_t b_t^T
    diag Fisher     sum_t (b_t * b_t) (a_t * a_t)^T
    EK-FAC          sum_i (Q_G^T [sum_{t in i} b_t a_t^T] Q_A)^2  (per-sequence gradients, squared in
                    the K-FAC eigenbasis: keeps the cross-position terms that K-FAC's per-token factors drop)

The weights are frozen during the pass and the embedding output is made to require grad, so backward
computes activation gradients only (no weight gradients: the reducers form them). Padding (attention
mask 0) is removed before reducing. An input shared by several modules (q/k/v, gate/up) is one
tensor; reducers may key work on it by `shared` so it is done once.

Loss conventions: `labels="data"` backpropagates the mean loss over all targets of all blocks (so the
gradient reduction sums to the true g); `labels="sampled"` backpropagates the *summed* loss of labels
sampled from the model's own predictive distribution (the true Fisher's per-token gradients).
Reducer state is plain tensors in a dict, summed across processes by `all_reduce`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .data import IGNORE, Blocks, check_batch_size, check_blocks
from .evaluate import token_nll
from .models import layers as find_layers

__all__ = ["Reducer", "GradientSum", "KFACFactors", "DiagonalFisher", "EKFACCorrection", "Phase", "run_tape",
           "all_reduce", "module_keys"]

LABELS = ("data", "sampled")
REDUCTIONS = ("mean", "sum", "block_mean")


Key = tuple[int, str]       # (layer index, module name relative to its block)


def module_keys(model: torch.nn.Module) -> list[tuple[int, str]]:
    """(layer index, module name) for every linear module of every decoder block, in order."""
    return [(layer.index, name) for layer in find_layers(model) for name in layer.linears]


class Reducer:
    """Accumulates one statistic per module. Subclasses implement `update`; `state` is plain tensors."""

    def __init__(self):
        self.state: dict[tuple[int, str], torch.Tensor] = {}
        self.tokens = 0
        self._scratch: dict = {}

    def begin_batch(self, n_tokens: int) -> None:
        self.tokens += n_tokens
        self._shared: dict[int, torch.Tensor] = {}

    def once(self, shared: int, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """fn() computed once per batch for an input shared by several modules (q/k/v, gate/up)."""
        if shared not in self._shared:
            self._shared[shared] = fn()
        return self._shared[shared]

    def total(self, key: tuple, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The running sum for `key`, zeros on first use. Reducers add into it in place (addmm_,
        addcmul_): a fresh (d, d) result per batch would be a large new allocation, and on CPU those
        page-fault on every batch (measured: as slow as the matmul itself for 1536 x 1536 factors)."""
        if key not in self.state:
            self.state[key] = like.new_zeros(shape)
        return self.state[key]

    def scratch(self, name: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """A reusable work buffer (same reason as `total`): valid until the next call with this name/shape."""
        key = (name, tuple(shape), like.dtype, like.device)
        if key not in self._scratch:
            self._scratch[key] = like.new_empty(shape)
        return self._scratch[key]

    def update(self, key: Key, a: torch.Tensor, b: torch.Tensor, shared: int,
               bounds: Sequence[int]) -> None:   # pragma: no cover - interface
        """a (T, d_in), b (T, d_out) for the batch's unpadded tokens; bounds[i]:bounds[i+1] are block i's rows."""
        raise NotImplementedError


class GradientSum(Reducer):
    """sum_t b_t a_t^T: the weight gradient of the backpropagated loss."""

    def update(self, key: Key, a: torch.Tensor, b: torch.Tensor, shared: int, bounds: Sequence[int]) -> None:
        self.total(key, (b.shape[1], a.shape[1]), a).addmm_(b.T, a)      # (d_out, d_in)


class KFACFactors(Reducer):
    """G = sum_t b_t b_t^T (d_out, d_out) per module and A = sum_t a_t a_t^T (d_in, d_in) per input:
    modules that read one input (q/k/v, gate/up) share one A, stored under the first of them.

    `max_rows`: the most token rows this process will reduce. A factor wider than that has rank at most
    `max_rows`, so it keeps its rows instead (`rows[kind, *key]`, (T, d)): they take less memory than the
    (d, d) sum, and `curvature.row_eigen` decomposes them exactly, null space included, for a fraction of
    a (d, d) eigh. `fold_rows` turns them into sums (before sums cross processes)."""

    def __init__(self, max_rows: int | None = None):
        super().__init__()
        self.a_owner: dict = {}     # module key -> key whose ("A", ...) entry holds its input factor
        self.max_rows = max_rows
        self.rows: dict[tuple, list[torch.Tensor]] = {}

    def _add(self, key: tuple, x: torch.Tensor) -> None:
        if self.max_rows is not None and x.shape[1] > self.max_rows:
            self.rows.setdefault(key, []).append(x.detach().clone())
        else:
            self.total(key, (x.shape[1],) * 2, x).addmm_(x.T, x)

    def update(self, key: Key, a: torch.Tensor, b: torch.Tensor, shared: int, bounds: Sequence[int]) -> None:
        owner = self.a_owner.setdefault(key, self.once(shared, lambda: key))
        if owner == key:
            self._add(("A", *key), a)
        self._add(("G", *key), b)

    def row_matrix(self, key: tuple) -> torch.Tensor | None:
        """The rows kept for ("A" or "G", *module key), stacked (T, d), or None when summed instead."""
        if key not in self.rows:
            return None
        if len(self.rows[key]) > 1:
            self.rows[key] = [torch.cat(self.rows[key])]
        return self.rows[key][0]

    def fold_rows(self) -> None:
        """Every kept set of rows X becomes its sum X^T X in `state`."""
        for key in list(self.rows):
            x = self.row_matrix(key)
            self.state[key] = x.T @ x
            del self.rows[key]

    def A(self, key: Key) -> torch.Tensor:
        self.fold_rows()
        return self.state[("A", *self.a_owner[key])]


class DiagonalFisher(Reducer):
    """sum_t (b_t * b_t)(a_t * a_t)^T: the diagonal of sum_t vec(b_t a_t^T) vec(b_t a_t^T)^T."""

    def update(self, key: Key, a: torch.Tensor, b: torch.Tensor, shared: int, bounds: Sequence[int]) -> None:
        a2 = self.once(shared, lambda: a * a)
        b2 = torch.mul(b, b, out=self.scratch("b2", b.shape, b))
        self.total(key, (b.shape[1], a.shape[1]), a).addmm_(b2.T, a2)


class EKFACCorrection(Reducer):
    """sum_i (Q_G^T g_i Q_A)^2 with g_i = sum_{t in block i} b_t a_t^T: second moments of per-sequence
    gradients in the K-FAC eigenbasis (George et al. 2018; kronfluence does the same)."""

    def __init__(self, eigenbases: dict):
        super().__init__()
        self.eigenbases = eigenbases                   # key -> (Q_A, Q_G)

    def update(self, key: Key, a: torch.Tensor, b: torch.Tensor, shared: int, bounds: Sequence[int]) -> None:
        q_a, q_g = self.eigenbases[key]
        a_rot = self.once(shared, lambda: a @ q_a)     # (T, d_in), shared inputs rotated once
        b_rot = torch.mm(b, q_g, out=self.scratch("b_rot", b.shape, b))          # (T, d_out)
        total = self.total(key, (b.shape[1], a.shape[1]), a)
        g_i = self.scratch("g_i", total.shape, a)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            torch.mm(b_rot[lo:hi].T, a_rot[lo:hi], out=g_i)       # block i's gradient, rotated
            total.addcmul_(g_i, g_i)


def all_reduce(reducers: Iterable[Reducer]) -> None:
    """Sum every reducer's tensors (and token counts) across torch.distributed processes."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    # NCCL reduces only CUDA tensors, gloo CPU ones: the count travels on the backend's device
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for reducer in reducers:
        if isinstance(reducer, KFACFactors):
            reducer.fold_rows()         # rows cannot be summed across processes, their products can
        for key in sorted(reducer.state, key=str):      # the same order on every process
            dist.all_reduce(reducer.state[key])
        count = torch.tensor([reducer.tokens], dtype=torch.float64, device=device)
        dist.all_reduce(count)
        reducer.tokens = int(count.item())


def _entry_hook(module, args, kwargs):
    """Start autograd at this block's input: what feeds it is computed without a graph."""
    if args:
        args = (args[0].detach().requires_grad_(True), *args[1:])
    else:
        kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_(True)}
    return args, kwargs


@contextlib.contextmanager
def _hooks(model, on_pair, only: Collection[int] | None = None):
    """Hook every linear module of every block: forward keeps a, a tensor hook on the output gets b.
    Weights are frozen and autograd starts at the embedding output, or, when only some layers are
    reduced (`only`), at the input of the lowest of them: the backward stops there, since nothing below
    feeds a statistic. Everything is restored on exit."""
    handles, saved_flags = [], [(p, p.requires_grad) for p in model.parameters()]
    layers = find_layers(model)
    by_index = {layer.index: layer for layer in layers}
    lowest = min(only) if only else None
    if lowest is not None and lowest not in by_index:
        raise ValueError(f"only names layer {lowest}, which the model does not have (layers "
                         f"{layers[0].index}-{layers[-1].index})")
    try:
        for p, _ in saved_flags:
            p.requires_grad_(False)
        if lowest is None or lowest == layers[0].index:
            embed = model.get_input_embeddings()
            handles.append(embed.register_forward_hook(lambda m, i, out: out.requires_grad_(True)))
        else:
            handles.append(by_index[lowest].module.register_forward_pre_hook(_entry_hook, with_kwargs=True))
        for layer in layers:
            for name, module in layer.linears.items():
                key = (layer.index, name)

                def forward_hook(mod, inputs, out, key=key):
                    a = inputs[0]
                    if out.requires_grad:
                        out.register_hook(lambda b, a=a: on_pair(key, a, b))
                handles.append(module.register_forward_hook(forward_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved_flags:
            p.requires_grad_(flag)


def _sample_labels(logp, labels, seeds):
    """Labels drawn from the model's predictive distribution where the data has a target.

    Inverse CDF: one uniform u per position, the first token whose cumulative probability exceeds u.
    (torch.multinomial races an exponential per vocabulary entry: measured 4x slower at V = 49k.)
    One seed per block, so the draw does not depend on how blocks are batched or sharded."""
    cdf = logp.detach().exp().cumsum_(-1)                                     # (B, T, V)
    rows = []
    for row, seed in zip(cdf, seeds):
        gen = torch.Generator(device=cdf.device).manual_seed(seed)
        u = torch.rand(row.shape[0], 1, generator=gen, device=cdf.device) * row[:, -1:]
        rows.append(torch.searchsorted(row, u, right=True)[:, 0].clamp_(max=row.shape[-1] - 1))
    return torch.where(labels == IGNORE, labels, torch.stack(rows))


class Phase(NamedTuple):
    """One backward pass of `run_tape` after the shared forward: the reducers it feeds, the labels its
    loss uses ("data" or "sampled") and how the loss is reduced ("mean", "sum" or "block_mean"; see
    `run_tape`). A plain (reducers, labels, reduction) tuple is accepted wherever a Phase is."""
    reducers: Sequence[Reducer]
    labels: str = "data"
    reduction: str = "mean"


def run_tape(model: torch.nn.Module, blocks: Blocks, reducers: Sequence[Reducer], *, labels: str = "data",
             reduction: str = "mean", batch_size: int = 4, seed: int = 0, block_ids: Sequence[int] | None = None,
             n_targets: int | None = None, progress: bool = True, desc: str = "tape",
             autocast: bool | torch.dtype = False, only: Collection[int] | None = None,
             then: Sequence[Phase] | None = None) -> float:
    """One forward/backward pass over `blocks` feeding (a, b) per module to every reducer.

    labels: "data" (the blocks' labels) or "sampled" (drawn from the model, seeded per block, for the
    true Fisher). reduction: "mean" backpropagates the loss averaged over `n_targets` targets (default:
    the blocks' own; pass the global count when the blocks are one shard of many), "sum" the summed
    loss (per-token gradients, for Fisher statistics), "block_mean" the sum over blocks of each
    block's mean loss (per-example losses l(z_i), for influence functions). `block_ids` (global block indices) make sampled
    labels independent of sharding and batching. `only`: layer indices whose modules are reduced
    (default all); the backward then stops at the input of the lowest of them. `then`: further
    `Phase(reducers, labels, reduction)`s that reuse each batch's forward pass with one more backward each (gradients and Fisher statistics from one forward), e.g.
    `then=[Phase([GradientSum()], "data", "mean")]`. `autocast`:
    True (bfloat16) or a half dtype for the passes, e.g. `device.dtype_policy(device).autocast`; the
    statistics are float32 either way.
    Returns the summed data-label loss over the blocks.
    """
    check_blocks(model, blocks)
    batch_size = check_batch_size(batch_size)
    if blocks.n_targets == 0:
        raise ValueError(f"every label of the {blocks.task!r} blocks is masked: there is no loss to differentiate")
    n_targets = n_targets or blocks.n_targets
    block_ids = list(range(len(blocks))) if block_ids is None else list(block_ids)
    device = next(model.parameters()).device
    phases = [Phase(reducers, labels, reduction), *(Phase(*phase) for phase in then or [])]
    for _, lab, red in phases:
        if lab not in LABELS:
            raise ValueError(f"labels must be 'data' or 'sampled', got {lab!r}")
        if red not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'block_mean', got {red!r}")
    valid = {}

    def on_pair(key, a, b):
        if only is not None and key[0] not in only:
            return
        if id(a) not in valid["inputs"]:   # once per batch, whatever the number of phases and readers
            valid["inputs"][id(a)] = valid["unpad"](a)                # (T, d_in)
        a2 = valid["inputs"][id(a)]
        b2 = valid["unpad"](b)                                        # (T, d_out)
        for r in valid["reducers"]:
            r.update(key, a2, b2, id(a), valid["bounds"])

    total = 0.0
    bar = tqdm(total=len(blocks), desc=desc, unit="block", disable=not progress, leave=False)
    with _hooks(model, on_pair, only):
        for start, batch in zip(range(0, len(blocks), batch_size), blocks.batches(batch_size, device=device)):
            mask = batch["attention_mask"].reshape(-1).bool()
            valid["inputs"] = {}
            if mask.all():   # packed blocks have no padding: a view, no copy
                valid["unpad"] = lambda x: x.detach().reshape(-1, x.shape[-1]).float()
            else:
                valid["unpad"] = lambda x, mask=mask: x.detach().reshape(-1, x.shape[-1])[mask].float()
            valid["bounds"] = [0, *torch.cumsum(batch["attention_mask"].sum(1), 0).tolist()]
            for phase_reducers, _, _ in phases:
                for r in phase_reducers:
                    r.begin_batch(int(mask.sum()))
            ctx = (torch.autocast(device.type, dtype=torch.bfloat16 if autocast is True else autocast) if autocast
                   else contextlib.nullcontext())
            with ctx:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            # one log-softmax over the vocabulary, along contiguous rows, shared by every phase's loss;
            # its backward needs only its output, so the (B, T, V) logits are freed at once
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            del logits
            per_block_targets = (targets != IGNORE).sum(1).clamp(min=1)
            nll = token_nll(logp, targets, log_probs=True)
            total += float(nll.detach().sum())
            for i, (phase_reducers, lab, red) in enumerate(phases):
                valid["reducers"] = phase_reducers
                phase_nll = nll
                if lab == "sampled":
                    ids = block_ids[start:start + batch["input_ids"].shape[0]]
                    sampled = _sample_labels(logp, targets, [seed * 1_000_003 + i for i in ids])
                    phase_nll = token_nll(logp, sampled, log_probs=True)
                if red == "block_mean":     # sum over blocks of each block's own mean loss
                    loss = (phase_nll.sum(1) / per_block_targets).sum()
                else:
                    loss = phase_nll.sum() / n_targets if red == "mean" else phase_nll.sum()
                loss.backward(retain_graph=i < len(phases) - 1)
            bar.update(batch["input_ids"].shape[0])
    bar.close()
    return total
