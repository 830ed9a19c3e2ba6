"""layerq_nb.device: LAYERQ_DEVICE resolution and the dtype policy, with CUDA and MPS faked."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerq_nb import device as dv


@pytest.fixture
def machine(monkeypatch):
    """Fake what torch sees: set(cuda=..., mps=..., capability=(8, 0), memory_gib=80, count=1)."""
    monkeypatch.delenv(dv.ENV, raising=False)

    def set_(cuda=False, mps=False, capability=(8, 0), memory_gib=80, count=1, name="Fake GPU"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index=None: SimpleNamespace(name=name, total_memory=int(memory_gib * 2**30)))
        monkeypatch.setattr(dv, "mps_available", lambda: mps)
    return set_


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert dv.resolve_device() == torch.device(expected)
    assert dv.resolve_device("auto") == torch.device(expected)


def test_the_environment_variable_decides_auto(machine, monkeypatch):
    machine(cuda=True, mps=True)
    monkeypatch.setenv(dv.ENV, "cpu")
    assert dv.resolve_device() == torch.device("cpu")
    assert dv.resolve_device("auto") == torch.device("cpu")
    assert dv.resolve_device("mps") == torch.device("mps")        # an explicit device wins over the variable
    monkeypatch.setenv(dv.ENV, "")
    assert dv.resolve_device() == torch.device("cuda")            # empty means auto


def test_explicit_devices_are_checked_with_the_fix_named(machine, monkeypatch):
    machine(cuda=False, mps=False)
    with pytest.raises(ValueError, match="not available.*Use cpu"):
        dv.resolve_device("cuda")
    with pytest.raises(ValueError, match="Apple silicon"):
        dv.resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        dv.resolve_device("gpu")
    monkeypatch.setenv(dv.ENV, "tpu")
    with pytest.raises(ValueError, match=f"unknown device 'tpu'.*{dv.ENV}"):
        dv.resolve_device()
    machine(cuda=True, count=2)
    assert dv.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert dv.resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\), cuda:0 .. cuda:1"):
        dv.resolve_device("cuda:2")


def test_cpu_policy_is_float32_one_block_per_pass(machine):
    machine()
    p = dv.dtype_policy("cpu")
    assert (p.device, p.weights, p.autocast, p.statistics, p.batch_size) == \
        (torch.device("cpu"), torch.float32, None, torch.float32, 1)


def test_ampere_and_later_run_bf16_passes_with_float32_statistics(machine):
    machine(cuda=True, capability=(9, 0), memory_gib=139, name="NVIDIA H200")
    p = dv.dtype_policy("cuda")
    assert (p.weights, p.autocast, p.statistics) == (torch.float32, torch.bfloat16, torch.float32)
    assert p.batch_size == dv.MAX_GPU_BATCH
    assert "H200" in p.reason


def test_t4_class_cards_run_fp16_passes_with_float32_statistics(machine):
    machine(cuda=True, capability=(7, 5), memory_gib=15, name="Tesla T4")
    p = dv.dtype_policy()                     # auto resolves to the (fake) CUDA device
    assert p.device == torch.device("cuda")
    assert (p.weights, p.autocast, p.statistics) == (torch.float32, torch.float16, torch.float32)
    assert p.batch_size == 15 // dv.GIB_PER_BLOCK
    assert "no bfloat16" in p.reason


def test_a_small_gpu_still_gets_one_block(machine):
    machine(cuda=True, capability=(8, 6), memory_gib=1.5)
    assert dv.dtype_policy("cuda").batch_size == 1


def test_mps_stays_float32(machine):
    machine(mps=True)
    p = dv.dtype_policy("mps")
    assert (p.autocast, p.statistics) == (None, torch.float32)


def test_the_tape_accepts_the_policy_autocast_dtype(tiny):
    """run_tape(autocast=<dtype>) runs its passes under that dtype and keeps float32 statistics."""
    from layerq_nb import load_task
    from layerq_nb.tape import GradientSum, KFACFactors, run_tape
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=16)
    seen = []
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        factors = KFACFactors()
        run_tape(model, blocks, [factors], labels="sampled", reduction="sum", then=[([GradientSum()], "data", "mean")],
                 progress=False, autocast=torch.bfloat16)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]
    assert {v.dtype for v in factors.state.values()} == {torch.float32}
