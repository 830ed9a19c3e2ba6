"""Capacity allocation from layer scores: LoRA ranks per layer (through peft's `rank_pattern`) and
LoRA-MoE expert counts per layer, plus a short, seeded fine-tuning loop.
LoRA: Hu et al., arXiv 2106.09685; MoLA expert counts: Gao et al., arXiv 2402.08562.

Ranks: MDL program A (Amaefuna et al., arXiv 2603.00910), max sum_k q_k log(1 + r_k / beta) s.t. sum_k c_k r_k = budget, with
c_k = sum over layer k's target modules of (d_in + d_out), the LoRA parameters one rank unit costs,
integer ranks >= `min_rank` (greedy by marginal gain per cost; see `mdl.allocate`).
LoRA-MoE (MoLA / LayerIF style): E_k LoRA experts on each target module of layer k, a softmax
router with top-k (k = 2 where E_k > 1), output W0 x + sum_{j in topk} p_j(x)/sum p * (alpha/r) B_j A_j x,
and the Switch/ST-MoE load-balancing loss E * sum_e f_e P_e (f_e: share of routed slots, P_e: mean
router probability), which is 1 under uniform routing and larger when routing is unbalanced.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import mdl
from .data import IGNORE, Blocks, check_blocks
from .device import dtype_policy
from .evaluate import token_nll
from .models import layers as find_layers
from .models import weight_matrix
from .scores import LayerScores

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = ["RankAllocation", "rank_costs", "rank_caps", "lora_rank_pattern", "lora_config", "expert_counts", "LoRAMoELinear",
           "LoRAMoE", "apply_lora_moe", "finetune", "FinetuneResult", "DEFAULT_TARGETS"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Targets = str | Sequence[str] | None      # module names the targets end with; None: every linear map


def _whole(name: str, value, low: int = 1) -> int:
    """value as an int >= low, or a ValueError naming the argument (2.5, nan, True and "3" are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not np.isfinite(value) or value != int(value) or int(value) < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _positive(name: str, value, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _targets(model, target_modules):
    """{layer index: {full module name: module}} for the linear maps whose name ends with a target
    (target_modules=None: every linear map of every decoder block, whatever the family calls them)."""
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    out = {}
    for layer in find_layers(model):
        wrapped = [n for n, m in layer.module.named_modules() if isinstance(m, LoRAMoELinear)]
        if wrapped:
            raise ValueError(f"{layer.name}.{wrapped[0]} already carries LoRA-MoE adapters: call remove() on the "
                             "handle apply_lora_moe returned before applying new ones")
        chosen = {f"{layer.name}.{n}": m for n, m in layer.linears.items()
                  if target_modules is None or n.split(".")[-1] in target_modules}
        if not chosen:
            raise ValueError(f"no module of {layer.name} matches target_modules {list(target_modules)}; "
                             f"it has {list(layer.linears)}")
        out[layer.index] = chosen
    return out


@dataclass(frozen=True)
class RankAllocation:
    """Integer LoRA ranks per layer and what they cost: parameters = sum_k ranks_k * cost_k."""
    ranks: np.ndarray
    cost: np.ndarray                  # LoRA parameters per rank unit in each layer
    modules: dict                     # layer index -> list of full module names
    scores: str
    metadata: dict = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return int(self.ranks @ self.cost)


def rank_costs(model: nn.Module, *, target_modules: Targets = None) -> np.ndarray:
    """LoRA parameters one rank unit costs in each layer: sum over its target modules of d_in + d_out."""
    return np.array([sum(sum(weight_matrix(m).shape) for m in mods.values())
                     for mods in _targets(model, target_modules).values()], float)


def rank_caps(model: nn.Module, *, target_modules: Targets = None) -> np.ndarray:
    """The largest useful LoRA rank per layer: min(d_in, d_out) over its target modules (a B A of higher
    rank than that has no more freedom, only more parameters)."""
    return np.array([min(min(weight_matrix(m).shape) for m in mods.values())
                     for mods in _targets(model, target_modules).values()], int)


def lora_rank_pattern(model: nn.Module, scores: LayerScores | str, budget: int, *, target_modules: Targets = None,
                      beta: float = 1.0, min_rank: int = 1) -> RankAllocation:
    """Integer ranks per layer with sum_k c_k r_k <= budget (LoRA parameters), each at most
    min(d_in, d_out) of the layer's matrices (`rank_caps`: a budget beyond that is left unspent).
    scores: a LayerScores (program A over its q) or "uniform" (the same rank everywhere, as large as
    the budget allows). target_modules: names the module names end with (e.g. DEFAULT_TARGETS, Llama's
    seven), or None for every linear map of each decoder block, whatever the family calls them.
    min_rank=0 lets program A leave a layer without an adapter (`lora_config` then skips its modules),
    so where the budget goes matters even at small budgets."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.integer, np.floating)) \
            or not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of LoRA parameters, got {budget!r}")
    min_rank = _whole("min_rank", min_rank, low=0)
    beta = _positive("beta", beta)
    if not (isinstance(scores, (str, LayerScores))):
        raise ValueError(f"scores must be a LayerScores or 'uniform', got {type(scores).__name__}")
    if isinstance(scores, str) and scores != "uniform":
        raise ValueError(f"scores must be a LayerScores or 'uniform', got {scores!r}")
    targets = _targets(model, target_modules)
    cost = rank_costs(model, target_modules=target_modules)
    caps = rank_caps(model, target_modules=target_modules)
    if min_rank > caps.min():
        raise ValueError(f"min_rank {min_rank} exceeds the largest useful rank {caps.min()} of layer "
                         f"{int(np.argmin(caps))} (min(d_in, d_out) of its matrices)")
    floor = min_rank * cost.sum()
    if budget < floor:
        raise ValueError(f"budget {budget} LoRA parameters is below the minimum {int(floor)} (rank {min_rank} "
                         "in every layer): raise the budget or lower min_rank")
    if isinstance(scores, str):
        ranks, label = np.full(cost.size, min(int(budget // cost.sum()), int(caps.min()))), "uniform"
    else:
        names = tuple(layer.name for layer in find_layers(model))
        if "identity" in scores.metadata:       # scores read from a file: the same model, not only its shape
            from .artefacts import check_scores
            check_scores(scores, model)
        elif tuple(scores.names) != names:
            raise ValueError(f"the scores are for layers {scores.names[0]} ... ({len(scores)} of them), this model "
                             f"has {names[0]} ... ({len(names)}): score this model, one score per layer")
        sol = mdl.allocate(scores.q, budget, cost=cost, beta=beta, lower=min_rank, upper=caps, integer=True)
        ranks, label = np.round(sol.x).astype(int), scores.method
    return RankAllocation(ranks=ranks.astype(int), cost=cost, modules={k: list(v) for k, v in targets.items()},
                          scores=label, metadata=dict(budget=budget, beta=beta, min_rank=min_rank, caps=caps.tolist()))


def lora_config(allocation: RankAllocation, *, alpha_ratio: float = 2.0, dropout: float = 0.05,
                **kwargs: object) -> LoraConfig:
    """A peft LoraConfig that applies the allocation: rank_pattern and alpha_pattern per module
    (alpha = alpha_ratio * rank, so every layer keeps the same scaling alpha / r). Layers at rank 0 get
    no adapter: peft has no rank-0 LoRA, so their modules are left out of target_modules."""
    from peft import LoraConfig
    if not np.any(allocation.ranks > 0):
        raise ValueError("every layer has rank 0: there is nothing to adapt; raise the budget")
    rank_of = {n: int(allocation.ranks[k]) for k, mods in allocation.modules.items() for n in mods
               if allocation.ranks[k] > 0}
    names = list(rank_of)
    pattern = {re.escape(n): r for n, r in rank_of.items()}
    return LoraConfig(r=int(np.max(allocation.ranks)), lora_alpha=alpha_ratio * int(np.max(allocation.ranks)),
                      target_modules=names,
                      rank_pattern=pattern, alpha_pattern={k: alpha_ratio * r for k, r in pattern.items()},
                      lora_dropout=dropout, bias="none", task_type="CAUSAL_LM", **kwargs)


# ----------------------------------------------------------------------------- LoRA-MoE

def expert_counts(total: int, n_layers: int, pattern: str | LayerScores = "uniform", *, beta: float = 1.0) -> np.ndarray:
    """Experts per layer summing to `total`, at least one each.

    pattern: "uniform"; "mola" (four depth groups in the ratio 2:4:6:8, MoLA's "higher layers need more
    experts"; 32 layers and 160 experts give exactly 2-4-6-8 x 8); or a LayerScores, allocated by program A (integer, lower bound 1, unit costs)."""
    n_layers = _whole("n_layers", n_layers)
    total = _whole("total", total)
    if total < n_layers:
        raise ValueError(f"{total} experts cannot give each of {n_layers} layers one")
    if isinstance(pattern, LayerScores):
        sol = mdl.allocate(pattern.q, total, beta=beta, lower=1, integer=True)
        return np.round(sol.x).astype(int)
    if pattern == "uniform":
        weights = np.ones(n_layers)
    elif pattern == "mola":
        weights = np.array([2 + 2 * min(3, 4 * k // n_layers) for k in range(n_layers)], float)
    else:
        raise ValueError(f"pattern must be 'uniform', 'mola' or a LayerScores, got {pattern!r}")
    share = weights / weights.sum() * total                     # a floor of one, then largest remainder
    counts = np.maximum(1, np.floor(share).astype(int))
    while counts.sum() != total:
        residual = share - counts
        if counts.sum() < total:
            counts[np.argmax(residual)] += 1
        else:                                                   # the floor of one overspent
            counts[np.argmin(np.where(counts > 1, residual, np.inf))] -= 1
    return counts


class LoRAMoELinear(nn.Module):
    """A frozen linear map plus `experts` LoRA experts mixed by a top-k softmax router."""

    def __init__(self, base: nn.Linear, experts: int, *, rank: int = 8, alpha: float = 16.0, top_k: int = 2):
        experts, rank, top_k = _whole("experts", experts), _whole("rank", rank), _whole("top_k", top_k)
        alpha = _positive("alpha", alpha)
        super().__init__()
        self.base, self.experts, self.rank = base, int(experts), int(rank)
        self.top_k = min(int(top_k), self.experts) if self.experts > 1 else 1
        self.scaling = alpha / rank
        d_out, d_in = base.weight.shape
        ref = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.experts, rank, d_in, dtype=ref.dtype, device=ref.device))
        self.lora_B = nn.Parameter(torch.zeros(self.experts, d_out, rank, dtype=ref.dtype, device=ref.device))
        for a in self.lora_A:                   # as peft: Kaiming-uniform A, zero B (the adapter starts at 0)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.router = nn.Linear(d_in, self.experts, bias=False, dtype=ref.dtype, device=ref.device) if self.experts > 1 else None
        self.aux_loss = torch.zeros((), device=ref.device)

    def routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights over experts, zero outside each token's top-k and renormalised; router probabilities)."""
        if self.router is None:
            ones = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
            return ones, ones
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top, idx = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        return weights.to(x.dtype), probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, probs = self.routing(x)
        if self.router is not None:
            routed = (weights > 0).float().reshape(-1, self.experts).mean(0) / self.top_k     # f_e, sums to 1
            self.aux_loss = self.experts * (routed * probs.reshape(-1, self.experts).mean(0)).sum()
        low = torch.einsum("...i,eri->...er", x, self.lora_A)                  # (..., E, r)
        up = torch.einsum("...er,eor->...eo", low, self.lora_B)               # (..., E, d_out)
        return self.base(x) + self.scaling * (weights.unsqueeze(-1) * up).sum(-2)


@dataclass
class LoRAMoE:
    """Handle on the wrapped modules: their aux loss, trainable parameter count, and `remove`."""
    model: nn.Module
    wrapped: dict                          # full name -> (parent, attribute, LoRAMoELinear)
    experts: np.ndarray
    frozen: list                           # (parameter, its requires_grad before)

    def aux_loss(self) -> torch.Tensor:
        losses = [m.aux_loss for _, _, m in self.wrapped.values() if m.router is not None]
        return torch.stack(losses).mean() if losses else torch.zeros((), device=next(self.model.parameters()).device)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for _, _, m in self.wrapped.values() for n, p in m.named_parameters()
                   if not n.startswith("base."))

    def remove(self) -> None:
        """Put the original linear maps back and restore every requires_grad flag: the base model is
        exactly as before `apply_lora_moe`. Safe to call again (after an interruption, or twice)."""
        _undo(self.wrapped, self.frozen)


def _undo(wrapped: dict, frozen: list):
    """Unwrap every module still wrapped (popping each as it goes back) and restore the flags."""
    for name in list(wrapped):
        parent, attr, module = wrapped[name]
        if getattr(parent, attr, None) is module:
            setattr(parent, attr, module.base)
        del wrapped[name]
    for p, flag in frozen:
        p.requires_grad_(flag)


def _memory_bytes(device: torch.device) -> int | None:
    """Total memory of the device the adapters go to (None when unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def _expert_array(experts_per_layer, n_layers: int) -> np.ndarray:
    try:
        raw = np.asarray(experts_per_layer, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"experts_per_layer must be {n_layers} whole numbers >= 1, got {experts_per_layer!r}") from None
    if raw.shape != (n_layers,) or not np.all(np.isfinite(raw)) or np.any(raw < 1) or np.any(raw != np.round(raw)):
        raise ValueError(f"need one expert count >= 1 per layer ({n_layers}), got "
                         f"{raw.tolist() if raw.ndim else experts_per_layer!r}: whole numbers, e.g. expert_counts(...)")
    return raw.astype(int)


def apply_lora_moe(model: nn.Module, experts_per_layer: Sequence[int] | np.ndarray, *, rank: int = 8,
                   alpha: float = 16.0, top_k: int = 2, target_modules: Targets = ("q_proj", "v_proj")) -> LoRAMoE:
    """Wrap layer k's target modules with experts_per_layer[k] LoRA experts; freeze everything else.

    Transactional: every argument, module type and the memory the adapters need are checked before the
    model is touched, and if anything fails while wrapping (including Ctrl-C or out-of-memory) the
    model comes back exactly as it was (modules, state-dict keys, requires_grad flags). On success the
    returned handle's `remove()` undoes every change."""
    targets = _targets(model, target_modules)
    experts = _expert_array(experts_per_layer, len(targets))
    rank = _whole("rank", rank)
    top_k = _whole("top_k", top_k)
    alpha = _positive("alpha", alpha)
    need = 0
    for k, mods in targets.items():
        for name, module in mods.items():
            if not isinstance(module, nn.Linear):
                raise ValueError(f"{name} is a {type(module).__name__}: LoRA-MoE wraps nn.Linear only "
                                 "(GPT-2's Conv1D: use peft through lora_config instead)")
            d_out, d_in = module.weight.shape
            e = int(experts[k])
            need += (e * rank * (d_in + d_out) + (e * d_in if e > 1 else 0)) * module.weight.element_size()
    device = next(model.parameters()).device
    have = _memory_bytes(device)
    if have is not None and need > have:
        raise ValueError(f"the adapters would need {need / 2**30:.3g} GiB ({int(experts.sum())} experts of rank {rank}), "
                         f"more than the {have / 2**30:.3g} GiB of memory of {device}: lower the expert counts or the rank")
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    wrapped: dict = {}
    try:
        built = {name: LoRAMoELinear(module, int(experts[k]), rank=rank, alpha=alpha, top_k=top_k)      # allocate first
                 for k, mods in targets.items() for name, module in mods.items()}
        for p, _ in frozen:
            p.requires_grad_(False)
        for name, moe in built.items():
            parent_name, attr = name.rsplit(".", 1)
            parent = model.get_submodule(parent_name)
            wrapped[name] = (parent, attr, moe)
            setattr(parent, attr, moe)
        return LoRAMoE(model=model, wrapped=wrapped, experts=experts, frozen=frozen)
    except BaseException:
        _undo(wrapped, frozen)
        raise


# ----------------------------------------------------------------------------- fine-tuning

@dataclass(frozen=True)
class FinetuneResult:
    train_losses: list
    val_loss_before: float
    val_loss_after: float
    trainable: int
    seconds: float


@contextlib.contextmanager
def _seeded_dropout(seed: int, device: torch.device):
    """Dropout (peft's lora_dropout) draws from torch's global generators and takes no generator of its
    own: for the run, the CPU generator and the training device's are seeded with `seed`, and afterwards
    they are put back exactly as they were, so the caller's random stream is untouched."""
    states = [(torch.set_rng_state, torch.get_rng_state())]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        states.append((lambda state: torch.cuda.set_rng_state(state, index), torch.cuda.get_rng_state(index)))
    elif device.type == "mps":
        states.append((torch.mps.set_rng_state, torch.mps.get_rng_state()))
    try:
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        yield
    finally:
        for restore, state in states:
            restore(state)


def _diverged(what: str, lr: float):
    # raised inside finetune's transaction, so the adapters go back to their state before training
    raise ValueError(f"fine-tuning diverged: {what} (lr {lr:g} is likely too large). The trained parameters "
                     f"were put back as they were before fine-tuning; lower lr (e.g. 3e-4) and run again")


def finetune(model: nn.Module, train: Blocks, validation: Blocks, *, steps: int = 20, lr: float = 3e-4, seed: int = 0,
             generator: torch.Generator | None = None, batch_size: int = 4, clip: float = 1.0,
             aux: LoRAMoE | None = None, aux_weight: float = 0.01, progress: bool = True) -> FinetuneResult:
    """AdamW on the parameters that require grad (the adapters), gradient clipping, bf16 autocast on GPU;
    validation loss before and after. `aux`: a LoRAMoE whose load-balancing loss is added with `aux_weight`.

    Randomness is local: the batches are drawn from `generator` (a CPU torch.Generator) or, without one,
    from a fresh generator seeded with `seed`; dropout draws from torch's global generators, which are
    seeded for the run (with `seed`, or one draw of `generator`) and restored afterwards. The same seed
    gives the same losses, and the caller's global RNG state is the same after the call as before. A run
    whose loss or weights stop being finite raises ValueError, with the parameters put back as they were."""
    import time

    from .evaluate import mean_loss
    steps, batch_size = _whole("steps", steps, low=0), _whole("batch_size", batch_size)
    seed = _whole("seed", seed, low=-2**63)
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise ValueError(f"generator must be a CPU torch.Generator (it draws batch indices), got {generator!r}")
    lr, clip, aux_weight = _positive("lr", lr), _positive("clip", clip), _positive("aux_weight", aux_weight, allow_zero=True)
    for name, blocks in (("train", train), ("validation", validation)):
        if not isinstance(blocks, Blocks) or len(blocks) == 0 or blocks.n_targets == 0:
            raise ValueError(f"{name} must be non-empty Blocks with targets (layerq_nb.load_task(..., split={name!r}))")
        check_blocks(model, blocks)
    if aux is not None and not isinstance(aux, LoRAMoE):
        raise ValueError(f"aux must be the LoRAMoE handle apply_lora_moe returned, got {type(aux).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: apply peft (get_peft_model) or apply_lora_moe first")
    device = next(model.parameters()).device
    # bf16 autocast where the GPU has it; fp16 training would need a GradScaler, so T4s train in fp32
    half = torch.bfloat16 if dtype_policy(device).autocast is torch.bfloat16 else None
    # transactional: if anything fails or is interrupted, the trained parameters, their gradients and
    # the train/eval mode of every module come back as they were
    saved = [(p, p.detach().clone(), p.grad) for p in params]
    modes = [(m, m.training) for m in model.modules()]
    # cpu on purpose: batch indices from a CPU generator are the same draws on any device
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    dropout_seed = seed if generator is None else int(torch.randint(2**62, (1,), generator=gen))  # cpu on purpose: a seed
    with _seeded_dropout(dropout_seed, device):
        try:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            before = mean_loss(model, validation, batch_size, progress=False)
            start, losses = time.perf_counter(), []
            model.train()
            try:
                for _ in tqdm(range(steps), desc="fine-tuning", unit="step", disable=not progress, leave=False):
                    idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen).tolist()  # cpu on purpose: indices
                    batch = next(train.subset(idx).batches(len(idx), device=device))
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half is not None):
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    targets = batch["labels"][:, 1:]
                    loss = token_nll(logits[:, :-1], targets).sum() / (targets != IGNORE).sum().clamp(min=1)
                    total = loss + aux_weight * aux.aux_loss() if aux is not None else loss
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    torch.nn.utils.clip_grad_norm_(params, clip)
                    opt.step()
                    losses.append(loss.detach().item())
                    if not math.isfinite(losses[-1]):
                        _diverged(f"the training loss is {losses[-1]} at step {len(losses)}", lr)
            finally:
                model.eval()
            after = mean_loss(model, validation, batch_size, progress=False)
            if not math.isfinite(after) or not all(bool(torch.isfinite(p).all()) for p in params):
                _diverged(f"the validation loss after training is {after}", lr)
            return FinetuneResult(train_losses=losses, val_loss_before=before, val_loss_after=after,
                                  trainable=sum(p.numel() for p in params), seconds=time.perf_counter() - start)
        except BaseException:
            with torch.no_grad():
                for p, value, grad in saved:
                    p.copy_(value)
                    p.grad = grad
            for m, mode in modes:
                m.training = mode
            raise
