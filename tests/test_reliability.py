"""Bad input and faults (issue 17): nothing half-applied, nothing corrupt loaded silently, every bad
input a clear early error.

- MATRIX: (input, expected error class, message fragment) on a tiny model; after every case the model
  is checked bit-identical (state dict, keys, requires_grad, module tree, modes, hooks).
- CLI: every anticipated failure is one line on stderr and a non-zero exit, found before a model loads.
- Fault injection: an exception is raised at every line a model-changing function executes (the first
  time it reaches each line, one fault per run, outside its own rollback code); the model must come
  back unchanged every time.
- The model cache: a tiny cached model corrupted (0xFF bytes, truncated, missing files), partial
  folders, the rename race, an interrupted write.
- MDL inputs across scales (hypothesis): a finite, certified answer or a ValueError, never garbage.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import layerq_nb
from layerq_nb import ablation, adapt, cli, curvature, device, mdl, models, pruning, scoring
from layerq_nb.data import Blocks, load_task
from layerq_nb.scores import LayerScores

PACKAGE = str(Path(layerq_nb.__file__).parent)
CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------- the model and its snapshot

def small_model(n_layers: int = 3):
    model, tok = models._tiny_llama(n_layers=n_layers, hidden_size=16, heads=2, kv_heads=1)
    return model.eval(), tok


def snapshot(model) -> dict:
    """Everything a model change could leave behind: values, keys, flags, tree, modes, hooks, patches."""
    return dict(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        flags={n: p.requires_grad for n, p in model.named_parameters()},
        grads={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        tree=[(n, type(m).__name__) for n, m in model.named_modules()],
        modes=[m.training for m in model.modules()],
        hooks=[(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        patched=[n for n, m in model.named_modules() if "forward" in m.__dict__],
        attention=getattr(model.config, "_attn_implementation", None),
    )


def changes(model, before: dict) -> list[str]:
    """What differs from the snapshot (empty: the model is bit-identical)."""
    now = snapshot(model)
    out = []
    if list(now["state"]) != list(before["state"]):
        out.append(f"state-dict keys {sorted(set(now['state']) ^ set(before['state']))[:3]}")
    else:
        out += [f"value of {k}" for k, v in now["state"].items() if not torch.equal(v, before["state"][k])][:3]
    for key in ("flags", "tree", "modes", "hooks", "patched", "attention"):
        if now[key] != before[key]:
            out.append(key)
    for n, g in now["grads"].items():
        b = before["grads"].get(n)
        if (g is None) != (b is None) or (g is not None and not torch.equal(g, b)):
            out.append(f"grad of {n}")
            break
    return out


@pytest.fixture(scope="module")
def small():
    return small_model()


@pytest.fixture(scope="module")
def small_blocks(small):
    _, tok = small
    return load_task("prose", tok, n_blocks=2, block_size=16)


EMPTY = Blocks(torch.zeros(0, 16, dtype=torch.long), torch.zeros(0, 16, dtype=torch.long),
               torch.zeros(0, 16, dtype=torch.long), "prose", "train")


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2)).eval()


def bad_scores_file(tmp, content) -> str:
    path = Path(tmp) / "scores.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def nan_solution(**change):
    return dataclasses.replace(mdl.allocate([0.3, 0.2, 0.5], 3.0), **change)


Q3 = [0.3, 0.2, 0.5]
SIZES = np.array([4.0, 4.0, 4.0])

# id, call (model, tokenizer, blocks, tmp_path), expected error class, message fragment (regex)
MATRIX = [
    # adapt: apply_lora_moe, ranks, experts, fine-tuning (issue cases 1 and 6)
    ("moe rank 0", lambda m, t, b, p: adapt.apply_lora_moe(m, [2, 2, 2], rank=0), ValueError, "rank must be a whole number >= 1"),
    ("moe 2**40 experts", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 1, 2**40]), ValueError, "adapters would need .* GiB"),
    ("moe zero experts", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 0, 2]), ValueError, "one expert count >= 1 per layer"),
    ("moe 2.5 experts", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 2.5, 2]), ValueError, "one expert count"),
    ("moe too few counts", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 1]), ValueError, r"per layer \(3\)"),
    ("moe alpha nan", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 1, 1], alpha=float("nan")), ValueError, "alpha must be"),
    ("moe top_k 0", lambda m, t, b, p: adapt.apply_lora_moe(m, [2, 2, 2], top_k=0), ValueError, "top_k must be"),
    ("moe no such target", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 1, 1], target_modules=("qq",)), ValueError,
     "matches target_modules"),
    ("moe rank 2.5", lambda m, t, b, p: adapt.apply_lora_moe(m, [1, 1, 1], rank=2.5), ValueError, "rank must be"),
    ("moe on a module", lambda m, t, b, p: adapt.LoRAMoELinear(torch.nn.Linear(4, 4), 2, rank=0), ValueError, "rank must be"),
    ("budget 0", lambda m, t, b, p: adapt.lora_rank_pattern(m, "uniform", 0), ValueError, "budget must be a positive"),
    ("budget nan", lambda m, t, b, p: adapt.lora_rank_pattern(m, "uniform", float("nan")), ValueError, "budget must be"),
    ("budget below floor", lambda m, t, b, p: adapt.lora_rank_pattern(m, "uniform", 10), ValueError, "below the minimum"),
    ("min_rank above cap", lambda m, t, b, p: adapt.lora_rank_pattern(m, "uniform", 1e9, min_rank=99), ValueError,
     "exceeds the largest useful rank"),
    ("scores not scores", lambda m, t, b, p: adapt.lora_rank_pattern(m, [1, 2, 3], 5000), ValueError, "LayerScores or 'uniform'"),
    ("expert total 2.5", lambda m, t, b, p: adapt.expert_counts(2.5, 2), ValueError, "total must be a whole number"),
    ("finetune nothing trainable", lambda m, t, b, p: adapt.finetune(small_model()[0].requires_grad_(False), b, b, steps=1),
     ValueError, "no trainable parameters"),
    ("finetune steps -1", lambda m, t, b, p: adapt.finetune(m, b, b, steps=-1), ValueError, "steps must be"),
    ("finetune lr 0", lambda m, t, b, p: adapt.finetune(m, b, b, lr=0), ValueError, "lr must be"),
    ("finetune batch 0", lambda m, t, b, p: adapt.finetune(m, b, b, batch_size=0), ValueError, "batch_size must be"),
    ("finetune empty train", lambda m, t, b, p: adapt.finetune(m, EMPTY, b), ValueError, "train must be non-empty"),
    # models: devices, names, dtypes (issue case 4)
    ("device gpu0", lambda m, t, b, p: layerq_nb.load_model("tiny-llama", device="gpu0"), ValueError, "unknown device 'gpu0'"),
    ("device cuda:99", lambda m, t, b, p: layerq_nb.load_model("tiny-llama", device="cuda:99"), ValueError, "not available"),
    ("device cuda on CPU", lambda m, t, b, p: layerq_nb.load_model("tiny-llama", device="cpu" if CUDA else "cuda"),
     None if CUDA else ValueError, "CPU-only build|sees no CUDA GPU"),
    ("device mps", lambda m, t, b, p: models.pick_device("mps") if not device.mps_available() else models.pick_device("xpu"),
     ValueError, "not available|unsupported device"),
    ("unknown model", lambda m, t, b, p: layerq_nb.load_model("smollm-9000"), ValueError, "unknown model 'smollm-9000'"),
    ("integer dtype", lambda m, t, b, p: layerq_nb.load_model("tiny-llama", dtype=torch.int64), ValueError, "floating torch dtype"),
    # mdl: non-finite solutions, scales, negative scores (issue cases 3 and 6)
    ("verify x[0] nan", lambda m, t, b, p: mdl.verify(nan_solution(x=np.array([np.nan, 1.0, 2.0]))), AssertionError, "not finite"),
    ("verify all-nan x", lambda m, t, b, p: mdl.verify(nan_solution(x=np.full(3, np.nan))), AssertionError, "not finite"),
    ("verify nu nan", lambda m, t, b, p: mdl.verify(nan_solution(nu=float("nan"))), AssertionError, "nu is not finite"),
    ("verify x inf", lambda m, t, b, p: mdl.verify(nan_solution(x=np.array([np.inf, 0.0, 0.0]))), AssertionError, "not finite"),
    ("verify spend 0 of 3e-20", lambda m, t, b, p: mdl.verify(dataclasses.replace(
        mdl.allocate(Q3, 3e-20, cost=1e-20), x=np.zeros(3))), AssertionError, "budget violated"),
    ("allocate cost 1e20", lambda m, t, b, p: mdl.allocate(Q3, 3, cost=1e20), ValueError, "cannot be solved accurately"),
    ("allocate cost 1e200", lambda m, t, b, p: mdl.allocate(Q3, 3, cost=1e200), ValueError, "cannot be solved"),
    ("allocate budget 3e300 at 1e-200", lambda m, t, b, p: mdl.allocate(Q3, 3e300, cost=1e-200), ValueError, "not be finite"),
    ("allocate budget nan", lambda m, t, b, p: mdl.allocate(Q3, float("nan")), ValueError, "budget must be finite"),
    ("allocate q nan", lambda m, t, b, p: mdl.allocate([np.nan, 1.0], 2), ValueError, "must be finite"),
    ("allocate q negative", lambda m, t, b, p: mdl.allocate([-1.0, 1.0], 2), ValueError, "must be >= 0"),
    ("allocate q zero", lambda m, t, b, p: mdl.allocate([0.0, 0.0], 2), ValueError, "all zero"),
    ("allocate bad method", lambda m, t, b, p: mdl.allocate(Q3, 3, method="newton"), ValueError, "method must be"),
    ("allocate cost shape", lambda m, t, b, p: mdl.allocate(Q3, 3, cost=[1.0, 2.0]), ValueError, "one value per layer"),
    ("allocate infeasible", lambda m, t, b, p: mdl.allocate(Q3, 30, upper=2.0), ValueError, "infeasible"),
    ("prune sparsity nan", lambda m, t, b, p: mdl.prune(Q3, float("nan")), ValueError, "sparsity"),
    ("prune sizes 0", lambda m, t, b, p: mdl.prune(Q3, 0.5, sizes=0.0), ValueError, "must be > 0"),
    ("batch non-finite row", lambda m, t, b, p: mdl.allocate_batch([[1.0, 2.0]], [np.inf]), ValueError, "strictly inside"),
    ("mdl map negative scores", lambda m, t, b, p: pruning.sparsity_map("mdl", 0.5, SIZES, [-1.0, -2.0, -3.0]), ValueError,
     "needs at least one positive gain.*Negative values"),
    ("map sparsity 1.2", lambda m, t, b, p: pruning.sparsity_map("uniform", 1.2, SIZES), ValueError, r"sparsity must be a number in \[0, 1\)"),
    ("map sparsity nan", lambda m, t, b, p: pruning.sparsity_map("uniform", float("nan"), SIZES), ValueError, "sparsity must be"),
    ("map scores nan", lambda m, t, b, p: pruning.sparsity_map("owl", 0.5, SIZES, [1.0, np.nan, 2.0]), ValueError, "finite values"),
    ("map band -1", lambda m, t, b, p: pruning.sparsity_map("mdl", 0.5, SIZES, [1.0, 2.0, 3.0], band=-1), ValueError, "band must be"),
    # pruning.pruned (issue case 7)
    ("pruned nan", lambda m, t, b, p: pruning.pruned(m, float("nan"), "magnitude").__enter__(), ValueError, "not a number"),
    ("pruned 1.0", lambda m, t, b, p: pruning.pruned(m, 1.0, "magnitude").__enter__(), ValueError, r"\[0, 1\)"),
    ("pruned wrong length", lambda m, t, b, p: pruning.pruned(m, [0.5, 0.5], "magnitude").__enter__(), ValueError,
     r"one per layer \(3\)"),
    ("pruned text", lambda m, t, b, p: pruning.pruned(m, "half", "magnitude").__enter__(), ValueError, "sparsity must be"),
    ("pruned no blocks", lambda m, t, b, p: pruning.pruned(m, 0.5, "wanda").__enter__(), ValueError, "needs calibration blocks"),
    ("pruned empty blocks", lambda m, t, b, p: pruning.pruned(m, 0.5, "wanda", blocks=EMPTY).__enter__(), ValueError,
     "non-empty Blocks"),
    ("pruned method", lambda m, t, b, p: pruning.pruned(m, 0.5, "random").__enter__(), ValueError, "unknown pruning method"),
    ("pruned n_m 2:3", lambda m, t, b, p: pruning.pruned(m, 0.5, "magnitude", n_m=(2, 3)).__enter__(), ValueError,
     "multiple of M = 3"),
    ("pruned n_m 5:4", lambda m, t, b, p: pruning.pruned(m, 0.5, "magnitude", n_m=(5, 4)).__enter__(), ValueError,
     "n_m must be a pair"),
    ("pruned batch 0", lambda m, t, b, p: pruning.pruned(m, 0.5, "wanda", blocks=b, batch_size=0).__enter__(), ValueError,
     "batch_size must be"),
    # ablation (issue case 7)
    ("skip 2.5", lambda m, t, b, p: ablation.skipped(m, [2.5]).__enter__(), ValueError, "whole numbers"),
    ("skip 7", lambda m, t, b, p: ablation.skipped(m, [7]).__enter__(), ValueError, r"out of range.*0\.\.2"),
    ("cornerstone empty", lambda m, t, b, p: ablation.cornerstone(m, EMPTY), ValueError, "needs at least one block"),
    ("coalitions shape", lambda m, t, b, p: ablation.coalition_losses(m, b, np.ones((2, 5), bool)), ValueError, r"\(m, 3\)"),
    ("coalitions max_rows 0", lambda m, t, b, p: ablation.coalition_losses(m, b, np.ones((1, 3), bool), max_rows=0),
     ValueError, "max_rows"),
    ("shapley players 9", lambda m, t, b, p: ablation.layer_shapley(m, b, players=[0, 9], progress=False), ValueError,
     "out of range"),
    # scoring (issue cases 6 and 7)
    ("score batch 0", lambda m, t, b, p: scoring.score(m, b, batch_size=0, progress=False), ValueError,
     "batch_size must be a whole number >= 1"),
    ("score damping -1", lambda m, t, b, p: scoring.score(m, b, damping=-1, progress=False), ValueError, "damping must be"),
    ("score damping nan", lambda m, t, b, p: scoring.score(m, b, damping=float("nan"), progress=False), ValueError,
     "damping must be"),
    ("score damping mode", lambda m, t, b, p: scoring.score(m, b, damping_mode="percent", progress=False), ValueError,
     "damping_mode must be"),
    ("score curvature", lambda m, t, b, p: scoring.score(m, b, curvature="hessian", progress=False), ValueError,
     "unknown curvature"),
    ("score method", lambda m, t, b, p: scoring.score(m, b, method="magic", progress=False), ValueError, "unknown method"),
    ("score fisher", lambda m, t, b, p: scoring.score(m, b, fisher="true", progress=False), ValueError, "fisher must be"),
    ("score exact modules", lambda m, t, b, p: scoring.score(m, b, curvature="exact", granularity="module", progress=False),
     ValueError, "scores whole layers"),
    ("score empty", lambda m, t, b, p: scoring.score(m, EMPTY, progress=False), ValueError, "no blocks"),
    ("newton layer 9", lambda m, t, b, p: scoring.newton_step(m, b, 9), ValueError, "out of range"),
    ("newton exact", lambda m, t, b, p: scoring.newton_step(m, b, 0, curvature="exact"), ValueError, "factored curvatures"),
    ("newton scale nan", lambda m, t, b, p: scoring.newton_step(m, b, 0, scale=float("nan")), ValueError, "scale must be"),
    ("step wrong shape", lambda m, t, b, p: scoring.loss_after_step(m, b, 0, {"self_attn.q_proj": torch.ones(3, 3)}),
     ValueError, r"must be a \(16, 16\) tensor"),
    ("step unknown module", lambda m, t, b, p: scoring.loss_after_step(m, b, 0, {"attn.c_attn": torch.ones(3, 3)}),
     ValueError, "has no module"),
    ("step nan", lambda m, t, b, p: scoring.loss_after_step(
        m, b, 0, {"self_attn.q_proj": torch.ones(16, 16), "self_attn.k_proj": torch.full((8, 16), np.nan)}),
     ValueError, "non-finite"),
    ("influence damping -1", lambda m, t, b, p: layerq_nb.layer_influence(m, b, b, damping=-1, progress=False), ValueError,
     "damping must be"),
    ("influence empty validation", lambda m, t, b, p: layerq_nb.layer_influence(m, b, EMPTY, progress=False), ValueError,
     "no blocks"),
    ("damping_level -1", lambda m, t, b, p: curvature.damping_level(-1, "relative", 1.0), ValueError, "damping must be"),
    # data and evaluation (issue case 7)
    ("n_blocks 2.5", lambda m, t, b, p: load_task("prose", t, n_blocks=2.5), ValueError, "whole number"),
    ("n_blocks 0", lambda m, t, b, p: load_task("prose", t, n_blocks=0), ValueError, "n_blocks must be >= 1"),
    ("block_size 1", lambda m, t, b, p: load_task("prose", t, block_size=1), ValueError, "at least 2 tokens"),
    ("block_size 16.5", lambda m, t, b, p: load_task("prose", t, block_size=16.5), ValueError, "whole number"),
    ("seed -1", lambda m, t, b, p: load_task("arithmetic", t, n_blocks=1, seed=-1), ValueError, "seed must be"),
    ("task poetry", lambda m, t, b, p: load_task("poetry", t), ValueError, "unknown task 'poetry'"),
    ("split dev", lambda m, t, b, p: load_task("prose", t, split="dev"), ValueError, "unknown split 'dev'"),
    ("hf: no name", lambda m, t, b, p: load_task("hf:", t), ValueError, "needs a dataset name"),
    ("batches(0)", lambda m, t, b, p: next(b.batches(0)), ValueError, "batch_size must be"),
    ("mean_loss batch 0", lambda m, t, b, p: layerq_nb.mean_loss(m, b, batch_size=0), ValueError, "batch_size must be"),
    ("perplexity empty", lambda m, t, b, p: layerq_nb.perplexity(m, EMPTY), ValueError, "no blocks to evaluate"),
    ("generate empty question", lambda m, t, b, p: __import__("layerq_nb.evaluate").evaluate.generate(m, t, ""), ValueError, "question must be"),
    # LayerScores files (issue case 7)
    ("scores missing metadata ok", lambda m, t, b, p: LayerScores.load(bad_scores_file(
        p, '{"method": "x", "values": [1.0], "names": ["a"]}')), None, ""),
    ("scores no values", lambda m, t, b, p: LayerScores.load(bad_scores_file(p, '{"method": "x", "names": ["a"]}')),
     ValueError, "not a saved LayerScores: no 'values' field"),
    ("scores not json", lambda m, t, b, p: LayerScores.load(bad_scores_file(p, "{oops")), ValueError, "not JSON"),
    ("scores a list", lambda m, t, b, p: LayerScores.load(bad_scores_file(p, "[1, 2]")), ValueError, "not an object"),
    ("scores binary", lambda m, t, b, p: LayerScores.load(bad_scores_file(p, b"\xff\xfe\x00")), ValueError, "not a"),
    ("scores negative zeta2", lambda m, t, b, p: LayerScores.load(bad_scores_file(
        p, '{"method": "zeta2[kfac]", "values": [1.0, -2.0], "names": ["a", "b"], "metadata": {}}')), ValueError,
     "gains are >= 0, but b has -2"),
    ("scores nan", lambda m, t, b, p: LayerScores.load(bad_scores_file(
        p, '{"method": "x", "values": [NaN], "names": ["a"], "metadata": {}}')), ValueError, "not finite"),
    ("scores lengths", lambda m, t, b, p: LayerScores.load(bad_scores_file(
        p, '{"method": "x", "values": [1.0, 2.0], "names": ["a"], "metadata": {}}')), ValueError, "2 values for 1 names"),
    ("scores strings", lambda m, t, b, p: LayerScores.load(bad_scores_file(
        p, '{"method": "x", "values": ["1"], "names": ["a"], "metadata": {}}')), ValueError, "not a list of numbers"),
    ("scores missing file", lambda m, t, b, p: LayerScores.load(Path(p) / "nope.json"), FileNotFoundError, "nope.json"),
]


@pytest.mark.parametrize("case, call, error, fragment", MATRIX, ids=[c[0] for c in MATRIX])
def test_matrix(small, small_blocks, tmp_path, case, call, error, fragment):
    model, tok = small
    before = snapshot(model)
    t0 = time.perf_counter()
    if error is None:
        call(model, tok, small_blocks, tmp_path)
    else:
        with pytest.raises(error, match=fragment) as info:
            call(model, tok, small_blocks, tmp_path)
        assert "\n" not in str(info.value).strip() or error is AssertionError, "the message is one line"
    assert time.perf_counter() - t0 < 60, "a bad input must fail early"
    assert changes(model, before) == [], f"{case} left the model changed"


def test_gpt2_conv1d_leaves_no_layer_wrapped():
    model = gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match="Conv1D: LoRA-MoE wraps nn.Linear only"):
        adapt.apply_lora_moe(model, [1, 1], target_modules=("c_attn",))
    assert changes(model, before) == []


def test_apply_twice_is_refused_and_remove_restores(small):
    model, _ = small
    before = snapshot(model)
    handle = adapt.apply_lora_moe(model, [1, 2, 2], rank=2)
    with pytest.raises(ValueError, match="already carries LoRA-MoE adapters"):
        adapt.apply_lora_moe(model, [1, 2, 2], rank=2)
    handle.remove()
    handle.remove()                       # idempotent
    assert changes(model, before) == []


def test_out_of_memory_while_wrapping_rolls_back(small, monkeypatch):
    """A realistic fault: the third adapter's allocation runs out of memory."""
    model, _ = small
    before = snapshot(model)
    real, calls = adapt.LoRAMoELinear.__init__, []

    def fail_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        real(self, *a, **k)
    monkeypatch.setattr(adapt.LoRAMoELinear, "__init__", fail_third)
    with pytest.raises(torch.OutOfMemoryError):
        adapt.apply_lora_moe(model, [1, 1, 2], rank=2)
    assert changes(model, before) == []


def test_lora_ranks_are_capped_by_the_matrices(small):
    model, _ = small
    caps = adapt.rank_caps(model)
    assert caps.tolist() == [8, 8, 8]               # k_proj / v_proj are 16 -> 8 (two KV heads of 4)
    huge = adapt.lora_rank_pattern(model, "uniform", 1e12)
    assert huge.ranks.tolist() == [8, 8, 8]
    scores = LayerScores("zeta2", np.array([1.0, 5.0, 0.1]), tuple(f"model.layers.{i}" for i in range(3)))
    mdl_ranks = adapt.lora_rank_pattern(model, scores, 1e12)
    assert np.all(mdl_ranks.ranks <= caps) and mdl_ranks.parameters <= 1e12


def test_hf_task_offline_fails_fast(small, monkeypatch):
    _, tok = small
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="hub is unreachable and the dataset is not in the local cache"):
        load_task("hf:someone/no-such-dataset", tok, n_blocks=1)
    assert time.perf_counter() - t0 < 10


# ----------------------------------------------------------------------------- the CLI

def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the arguments were checked")


CLI = [
    (["score", "--device", "gpu0"], "unknown device 'gpu0'"),
    (["score", "--device", "cuda:7"], "not available"),
    (["score", "--damping", "-1"], "--damping must be a finite number > 0"),
    (["score", "--damping", "0"], "--damping must be a finite number > 0"),
    (["score", "--damping", "nan"], "--damping must be"),
    (["score", "--blocks", "0"], "--blocks must be >= 1"),
    (["score", "--block-size", "1"], "--block-size must be >= 2"),
    (["score", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["score", "--task", "poetry"], "unknown task 'poetry'"),
    (["score", "--split", "dev"], "invalid choice: 'dev'"),
    (["score", "--curvature", "hessian"], "invalid choice: 'hessian'"),
    (["score", "--blocks", "2.5"], "invalid int value"),
    (["score", "--model", "./no/such/folder"], "no such folder"),
    (["score", "--model", "smollm-9000"], "unknown model 'smollm-9000'"),
    (["score", "--out", "{tmp}"], "is a folder: give a file name"),
    (["score", "--out", "{tmp}/missing/scores.json"], "does not exist"),
    (["score", "--out", "/proc/layerq-test.json"], "cannot write in /proc"),
    (["prune", "--sparsity", "1.5"], "--sparsity must be a finite number >= 0 and <= 0.99"),
    (["prune", "--sparsity", "nan"], "--sparsity must be"),
    (["prune", "--sparsity", "-0.1"], "--sparsity must be"),
    (["prune", "--map", "random"], "unknown map 'random'"),
    (["prune", "--band", "-1"], "--band must be"),
    (["prune", "--eval-blocks", "0"], "--eval-blocks must be >= 1"),
    (["prune", "--out", "{tmp}"], "is a folder"),
    (["allocate", "--budget", "0"], "--budget must be >= 1"),
    (["allocate", "--budget", "-5"], "--budget must be >= 1"),
    (["allocate", "--rank", "0"], "--rank must be >= 1"),
    (["allocate", "--beta", "0"], "--beta must be a finite number > 0"),
    (["allocate", "--lr", "-1"], "--lr must be"),
    (["allocate", "--steps", "-1"], "--steps must be >= 0"),
    (["demo", "--tasks", "prose", "poetry"], "unknown task 'poetry'"),
    (["demo", "--no-such-option"], "unrecognized arguments"),
]
if not CUDA:
    CLI.append((["score", "--device", "cuda"], "CPU-only build"))


@pytest.mark.parametrize("argv, fragment", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_cli_refuses_before_loading(argv, fragment, tmp_path, monkeypatch, capsys):
    # layerq_nb first: reading its lazy attribute after models' is patched would cache the stub for good
    monkeypatch.setattr(layerq_nb, "load_model", _no_model, raising=False)
    monkeypatch.setattr(models, "load_model", _no_model)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:      # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_disk_full_is_one_line(capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    code = cli.main(["score", "--model", "tiny-llama", "--blocks", "1", "--block-size", "16", "--curvature", "diag",
                     "--out", "/dev/full"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "no space left on the device" in err
    assert os.path.exists("/dev/full") and not Path("/dev/full").is_file()      # written in place, not replaced


def test_cli_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(models, "load_model", interrupted)
    assert cli.main(["score", "--model", "tiny-llama"]) == 130
    err = capsys.readouterr().err
    assert err == "layerq score: interrupted\n"


def test_cli_corrupt_cache_is_one_line(tiny_cache, capsys):
    folder, _ = tiny_cache
    (folder / "config.json").unlink()
    code = cli.main(["score", "--model", "smollm2-360m", "--blocks", "1", "--block-size", "16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is corrupt (config.json is missing)" in err and "rm -r" in err


def test_cli_unexpected_errors_are_one_line_and_debug_shows_them(monkeypatch, capsys):
    def broken(*a, **k):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(models, "load_model", broken)
    assert cli.main(["score", "--model", "tiny-llama"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError: a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["score", "--model", "tiny-llama", "--debug"])
    with pytest.raises(ValueError, match="unknown device"):
        cli.main(["--debug", "score", "--device", "gpu0"])


def test_cli_allocate_budget_is_used_and_ranks_capped(capsys):
    assert cli.main(["allocate", "--model", "tiny-llama", "--blocks", "2", "--block-size", "16",
                     "--budget", "1000000000000"]) == 0
    out = capsys.readouterr().out
    assert "budget 1,000,000,000,000" in out
    ranks = [line.split("ranks")[1].split() for line in out.splitlines() if "ranks" in line]
    assert ranks and all(int(r) <= 16 for row in ranks for r in row)     # min(d_in, d_out) of tiny-llama's k_proj


def test_cli_choices_come_from_the_core():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    opts = {a.dest: a.choices for a in sub["score"]._actions}
    assert tuple(opts["curvature"]) == curvature.CURVATURES and tuple(opts["method"]) == scoring.METHODS
    assert tuple(opts["damping_mode"]) == curvature.DAMPING_MODES and tuple(opts["fisher"]) == scoring.FISHERS
    assert tuple({a.dest: a.choices for a in sub["prune"]._actions}["method"]) == pruning.METHODS


# ----------------------------------------------------------------------------- kronfluence extra, doctor

def test_kronfluence_extra_keeps_torchvision_out():
    import tomllib
    root = Path(__file__).parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["kronfluence"]
    assert not any(dep.lower().startswith(("torchvision", "kronfluence", "torch")) for dep in extra)
    assert 'pip install --no-deps "kronfluence==1.0.1"' in (root / "README.md").read_text()
    assert cli.KRONFLUENCE_INSTALL.endswith('pip install --no-deps "kronfluence==1.0.1"')


@pytest.mark.parametrize("torch_v, vision_v, fragment", [
    ("2.13.0+cpu", "0.28.0", "different build"),             # the issue: PyPI's CUDA torchvision beside the CPU torch
    ("2.13.0+cpu", "0.27.0+cpu", "pairs with 0.28.x"),
    ("2.5.1", "0.19.0", "pairs with 0.20.x"),
])
def test_doctor_names_a_torchvision_mismatch(torch_v, vision_v, fragment, monkeypatch, capsys):
    problem = cli.torchvision_problem(torch_v, vision_v)
    assert fragment in problem and "pip uninstall -y torchvision" in problem
    real = cli.importlib.metadata.version
    fake = {"torch": torch_v, "torchvision": vision_v}
    monkeypatch.setattr(cli.importlib.metadata, "version", lambda d: fake[d] if d in fake else real(d))
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert fragment in out and "pip uninstall -y torchvision" in out
    from layerq_nb.ui import magics
    assert "torch stack: " in magics.format_doctor(magics.doctor_report())


def test_matching_or_absent_torchvision_is_fine():
    assert cli.torchvision_problem("2.13.0+cpu", "0.28.0+cpu", try_import=False) is None
    assert cli.torchvision_problem("2.13.0", "0.28.1", try_import=False) is None


# ----------------------------------------------------------------------------- the model cache

@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """A tiny model cached under a short name that ships no GGUF (so a bad entry is named, not rebuilt)."""
    monkeypatch.setenv("LAYERQ_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    model, tok = small_model(2)
    folder = models.cached_folder("smollm2-360m")
    models._write_cache(model, tok, folder, "tiny test model")
    return folder, model


def _overwrite(path: Path, offset: int, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_cache_round_trip_records_what_it_wrote(tiny_cache):
    folder, model = tiny_cache
    manifest = json.loads((folder / models.MANIFEST).read_text())["files"]
    assert manifest["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    again, _ = layerq_nb.load_model("smollm2-360m", device="cpu")
    assert models.model_facts(again).source.startswith("cache")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]           # no partial folder left


CORRUPTIONS = {
    "0xFF bytes": (lambda f: _overwrite(f / "model.safetensors", (f / "model.safetensors").stat().st_size - 512,
                                        b"\xff" * 256), "CRC-32 mismatch"),
    "truncated": (lambda f: os.truncate(f / "model.safetensors", 1000), "bytes, .* were written"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "missing tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "bad manifest": (lambda f: (f / models.MANIFEST).write_text("{"), "manifest.json is corrupt"),
    "not a folder": (lambda f: (__import__("shutil").rmtree(f), f.write_text("x")), "is not a folder"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_cache_is_named_in_one_line(tiny_cache, kind):
    folder, _ = tiny_cache
    corrupt, fragment = CORRUPTIONS[kind]
    corrupt(folder)
    with pytest.raises(models.CacheError, match=fragment) as info:
        layerq_nb.load_model("smollm2-360m", device="cpu")
    message = str(info.value)
    assert "\n" not in message and f"rm -r '{folder}'" in message


@pytest.mark.parametrize("kind", ["0xFF bytes", "truncated"])
def test_a_cache_without_manifest_is_checked_structurally(tiny_cache, kind):
    """Entries written before manifests: the safetensors header against the size, every weight finite."""
    folder, _ = tiny_cache
    (folder / models.MANIFEST).unlink()
    weights = folder / "model.safetensors"
    if kind == "0xFF bytes":
        _overwrite(weights, weights.stat().st_size - 512, b"\xff" * 256)     # float32 0xFFFFFFFF is NaN
        fragment = "non-finite values"
    else:
        os.truncate(weights, weights.stat().st_size - 100)
        fragment = "truncated or padded"
    with pytest.raises(models.CacheError, match=fragment):
        layerq_nb.load_model("smollm2-360m", device="cpu")


def test_a_good_cache_without_manifest_gets_one(tiny_cache):
    folder, _ = tiny_cache
    (folder / models.MANIFEST).unlink()
    layerq_nb.load_model("smollm2-360m", device="cpu")
    assert models.check_cache(folder) is True


def test_corrupt_cache_is_rebuilt_from_the_shipped_gguf(tiny_cache, monkeypatch, capsys):
    folder, model = tiny_cache
    monkeypatch.setitem(models.SHIPPED_GGUF, "smollm2-360m", ("json", "fake.gguf"))   # json: an importable package
    monkeypatch.setattr(models, "_dequantise_gguf", lambda short: small_model(2))
    _overwrite(folder / "model.safetensors", 200, b"\xff" * 64)
    again, _ = layerq_nb.load_model("smollm2-360m", device="cpu")
    assert "rebuilding it from the shipped weights" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert models.check_cache(folder) and sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_partial_folders_of_dead_processes_are_removed(tiny_cache):
    folder, _ = tiny_cache
    dead = folder.with_name(folder.name + f".partial-{_dead_pid()}-abcd1234")
    alive = folder.with_name(folder.name + f".partial-{os.getppid()}-abcd1234")
    for path in (dead, alive):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"\0" * 1000)
    layerq_nb.load_model("smollm2-360m", device="cpu")
    assert not dead.exists() and alive.exists()     # a live writer's folder is left alone


class Interrupt(BaseException):
    """Stands for Ctrl-C: `except Exception` does not catch it."""


def test_an_interrupted_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    import safetensors.torch
    model, tok = small_model(2)

    def interrupted(*a, **k):
        raise Interrupt
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(Interrupt):
        models._write_cache(model, tok, tmp_path / "entry", "test")
    assert list(tmp_path.iterdir()) == []


def test_two_first_loads_racing_both_succeed(tmp_path):
    """Both writers rename into place; the loser keeps the winner's entry instead of failing with
    'Directory not empty'."""
    model, tok = small_model(2)
    target, errors = tmp_path / "entry", []

    def write():
        try:
            models._write_cache(model, tok, target, "test")
        except BaseException as err:        # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    models._write_cache(model, tok, target, "test")            # and once more onto the finished entry
    assert errors == [] and [p.name for p in tmp_path.iterdir()] == ["entry"] and models.check_cache(target)


# ----------------------------------------------------------------------------- fault injection

def _cleanup_lines() -> set:
    """(file, line) of every `finally:` and `except:` body in the package: the rollback code, where a
    fault is being handled already (a fault inside it is a second, nested one, out of scope here).
    Also the `try:` lines themselves: a no-op where no real exception can start (a trace function
    that raises there is seen by CPython before the try's handlers are in place)."""
    out = set()
    for path in Path(PACKAGE).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try):
                out.add((str(path), node.lineno))
                for stmt in [*node.finalbody, *(s for h in node.handlers for s in h.body)]:
                    out.update((str(path), n) for n in range(stmt.lineno, stmt.end_lineno + 1))
    return out


CLEANUP = _cleanup_lines()


def _trace(op, on_line):
    def local(frame, event, arg):
        if event == "line":
            on_line(frame)
        return local

    def global_(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(PACKAGE) else None
    sys.settrace(global_)
    try:
        op()
    finally:
        sys.settrace(None)


def steps_of(op) -> list:
    """The distinct package lines `op` executes, in order of first execution, rollback code excluded."""
    seen: dict = {}
    _trace(op, lambda frame: seen.setdefault((frame.f_code.co_filename, frame.f_lineno), None))
    return [key for key in seen if key not in CLEANUP]


def inject(op, step, exc) -> str:
    """Run op, raising `exc` the first time it reaches line `step`: "raised" (the fault reached the
    caller), "absorbed" (the code handled it, e.g. a probe that falls back, and went on) or "missed"."""
    fired = []

    def on_line(frame):
        if not fired and (frame.f_code.co_filename, frame.f_lineno) == step:
            fired.append(step)
            raise exc
    try:
        _trace(op, on_line)
    except type(exc):
        return "raised"
    return "absorbed" if fired else "missed"


def _ops(model, blocks):
    """name -> (prepare, op, undo): op changes nothing it does not undo, or is transactional."""
    first = models.layers(model)[1]
    step = {n: torch.full_like(models.weight_matrix(m), 1e-3) for n, m in first.linears.items()}
    v = {f"{first.name}.{n}.weight": torch.ones_like(m.weight) for n, m in first.linears.items()}

    def body_loss():
        layerq_nb.mean_loss(model, blocks, batch_size=2, progress=False)

    def pruned(method, **kw):
        def op():
            with pruning.pruned(model, 0.5, method, blocks=blocks, batch_size=2, progress=False, **kw):
                body_loss()
        return op

    def skipped():
        with ablation.skipped(model, [0, 2]):
            with ablation.skipped(model, [2]):
                body_loss()

    def restored():
        with models.weights_restored(list(first.linears.values())):
            for m in first.linears.values():
                m.weight.data.add_(1.0)
            body_loss()

    return {
        "apply_lora_moe": lambda: adapt.apply_lora_moe(model, [1, 3, 2], rank=2),
        "pruned magnitude 2:4": pruned("magnitude", n_m=(2, 4)),
        "pruned wanda": pruned("wanda"),
        "pruned sparsegpt": pruned("sparsegpt"),
        "skipped": skipped,
        "coalition_losses": lambda: ablation.coalition_losses(model, blocks, np.array([[1, 0, 1], [0, 1, 1]], bool)),
        "weights_restored": restored,
        "loss_after_step": lambda: scoring.loss_after_step(model, blocks, 1, step, batch_size=2),
        "score ekfac": lambda: scoring.score(model, blocks, curvature="ekfac", batch_size=2, progress=False),
        "newton_step": lambda: scoring.newton_step(model, blocks, 1, batch_size=2),
        "ggn_vector_product": lambda: curvature.ggn_vector_product(model, blocks, 1, v, batch_size=2),
        "layer_influence": lambda: layerq_nb.layer_influence(model, blocks, blocks, batch_size=2, progress=False),
    }


OPS = list(_ops(small_model()[0], None))
FAULTS = {"interrupt": Interrupt, "out of memory": lambda: torch.OutOfMemoryError("injected")}
# out of memory at every step of the cheaper operations (interrupts go everywhere): the rollback paths
# are the same, and the long scoring passes would take minutes more on a 2-core machine
OOM_OPS = {"apply_lora_moe", "pruned magnitude 2:4", "pruned wanda", "skipped", "coalition_losses",
           "weights_restored", "loss_after_step", "ggn_vector_product"}
CASES = [(name, fault) for name in OPS for fault in FAULTS if fault == "interrupt" or name in OOM_OPS]


def _fault_blocks(tok):
    return load_task("prose", tok, n_blocks=2, block_size=8)


@pytest.mark.parametrize("name, fault", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_fault_at_every_step_leaves_the_model_unchanged(name, fault):
    model, tok = small_model()
    blocks = _fault_blocks(tok)
    op = _ops(model, blocks)[name]
    before = snapshot(model)
    steps = steps_of(op)
    if name == "apply_lora_moe":               # the clean run's change is undone for the next run
        model, _ = small_model()
        op = _ops(model, blocks)[name]
    else:
        assert changes(model, before) == [], f"{name} changed the model without a fault"
    assert len(steps) > 5
    bad = []
    for step in steps:
        outcome = inject(op, step, FAULTS[fault]())
        if outcome == "missed":
            continue
        diff = changes(model, before)
        if outcome == "absorbed" and name == "apply_lora_moe":     # it went on and succeeded: undo that
            diff = []
            model, _ = small_model()
            op = _ops(model, blocks)[name]
        if diff:
            bad.append(f"{Path(step[0]).name}:{step[1]} -> {diff}")
            model, _ = small_model()           # start the next step from a clean model
            op = _ops(model, blocks)[name]
    assert bad == [], f"{name}: a fault left the model changed at {len(bad)} of {len(steps)} steps: {bad[:5]}"


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_at_every_step_of_finetune_restores_the_adapters(fault):
    def fresh():
        model, tok = small_model()
        torch.manual_seed(0)                   # the adapters' initial values
        return model, tok, adapt.apply_lora_moe(model, [1, 2, 2], rank=2)
    model, tok, handle = fresh()
    blocks = _fault_blocks(tok)
    before = snapshot(model)

    def op():
        adapt.finetune(model, blocks, blocks, steps=2, batch_size=2, aux=handle, progress=False)
    steps = steps_of(op)
    model, tok, handle = fresh()
    assert changes(model, before) == []
    bad = []
    for step in steps:
        outcome = inject(op, step, FAULTS[fault]())
        if outcome == "raised" and changes(model, before):
            bad.append(f"{Path(step[0]).name}:{step[1]}")
            break
        if outcome != "raised":                # it trained after all: start the next step afresh
            model, tok, handle = fresh()
    assert bad == [], f"finetune left the model changed after a fault at {bad}"


def test_an_interrupted_remove_finishes_when_called_again():
    model, _ = small_model()
    before = snapshot(model)
    handle = adapt.apply_lora_moe(model, [1, 2, 2], rank=2)
    steps = steps_of(handle.remove)
    for step in steps:
        handle = adapt.apply_lora_moe(model, [1, 2, 2], rank=2)
        inject(handle.remove, step, Interrupt())
        handle.remove()
        assert changes(model, before) == [], f"remove() interrupted at {Path(step[0]).name}:{step[1]}"


# ----------------------------------------------------------------------------- MDL across scales

@settings(max_examples=150, deadline=None)
@given(q=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=6), cost_exp=st.integers(-300, 300),
       budget_exp=st.integers(-300, 300), beta_exp=st.integers(-20, 20), integer=st.booleans())
def test_allocate_at_any_scale_is_certified_or_refused(q, cost_exp, budget_exp, beta_exp, integer):
    """A finite, certified answer that spends the budget, or a ValueError: never nan, inf or a violated budget."""
    cost, budget, beta = 10.0 ** cost_exp, 3.0 * 10.0 ** budget_exp, 10.0 ** beta_exp
    try:
        sol = mdl.allocate(q, budget, cost=cost, beta=beta, integer=integer and budget / cost < 1e6)
    except ValueError:
        return
    assert np.all(np.isfinite(sol.x)) and np.isfinite(sol.nu) and np.isfinite(sol.objective)
    mdl.verify(sol)


def test_whole_units_at_a_tiny_scale_end():
    """Found by the test above on a fresh CI clone: with an absolute tolerance, units of 1e-300 always
    "fit" and the integer greedy never stopped."""
    sol = mdl.allocate([0.5, 0.5], 3e-300, cost=1e-300, beta=1.0, integer=True)
    assert sol.x.sum() == 3
    mdl.verify(sol)


def test_whole_units_go_to_a_small_layer_whose_first_unit_is_worth_more():
    """Found by the test above: flooring the continuous optimum (2.01, 0.66, 0.33) gave (2, 1, 0), but the
    third layer's first unit is worth more than the first layer's second one: the optimum is (1, 1, 1)."""
    sol = mdl.allocate([0.375, 0.125, 0.0625], 3.0, beta=0.01, integer=True)
    assert sol.x.tolist() == [1.0, 1.0, 1.0]
    mdl.verify(sol)


@settings(max_examples=100, deadline=None)
@given(q=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=6), size_exp=st.integers(-300, 300),
       sparsity=st.one_of(st.floats(0.0, 0.98), st.sampled_from([1e-300, 1e-30, 1e-12])),
       penalty=st.sampled_from(["log", "quadratic"]))
def test_prune_at_any_scale_is_certified_or_refused(q, size_exp, sparsity, penalty):
    try:
        sol = mdl.prune(q, sparsity, sizes=10.0 ** size_exp, penalty=penalty)
    except ValueError:
        return
    assert np.all(np.isfinite(sol.x)) and np.isfinite(sol.nu)
    mdl.verify(sol)


@settings(max_examples=60, deadline=None)
@given(q=st.lists(st.floats(1e-3, 1.0), min_size=2, max_size=6), exp=st.integers(-250, 250))
def test_costs_and_budget_scaled_together_give_the_same_ranks(q, exp):
    """Costs in parameters or in giga-parameters: the same allocation (the solver rescales them)."""
    k = len(q)
    base = mdl.allocate(q, 2.0 * k, cost=np.linspace(1, 2, k))
    scaled = mdl.allocate(q, 2.0 * k * 2.0 ** (exp * 3), cost=np.linspace(1, 2, k) * 2.0 ** (exp * 3))
    np.testing.assert_allclose(scaled.x, base.x, rtol=1e-9, atol=1e-12)
    mdl.verify(scaled)


@settings(max_examples=60, deadline=None)
@given(q=st.lists(st.floats(1e-300, 1e300), min_size=1, max_size=6))
def test_scores_of_any_magnitude_normalise(q):
    out = mdl.normalise(q)
    assert np.all(np.isfinite(out)) and out.sum() == pytest.approx(1.0)
