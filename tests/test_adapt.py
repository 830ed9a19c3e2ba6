"""Allocation application: adapters cost what the allocation claims, the router's balance loss has its
known minimum, remove() restores the base model bit-identically, and a few steps lower the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerq_nb.adapt import apply_lora_moe, expert_counts, finetune, lora_config, lora_rank_pattern
from layerq_nb.scores import LayerScores


@pytest.fixture()
def fresh_tiny():
    from layerq_nb.models import _tiny_llama
    return _tiny_llama(seed=1)


@pytest.fixture(scope="module")
def blocks(tiny):
    from layerq_nb import load_task
    tok = tiny[1]
    return (load_task("prose", tok, split="train", n_blocks=8, block_size=32),
            load_task("prose", tok, split="validation", n_blocks=2, block_size=32))


def scores(*values):
    return LayerScores("test", np.array(values, float), tuple(f"model.layers.{i}" for i in range(len(values))))


def test_peft_adapters_cost_what_the_allocation_claims(fresh_tiny):
    from peft import get_peft_model
    model, _ = fresh_tiny
    alloc = lora_rank_pattern(model, scores(1.0, 4.0, 0.5), budget=6000)
    assert alloc.parameters <= 6000 and alloc.ranks.min() >= 1 and alloc.ranks[1] == alloc.ranks.max()
    # cost per rank unit: q,o 32+32; k,v 32+16; gate,up 32+64; down 64+32: 512
    np.testing.assert_array_equal(alloc.cost, [512, 512, 512])
    uniform = lora_rank_pattern(model, "uniform", budget=6000)
    assert np.all(uniform.ranks == 6000 // 1536) and uniform.parameters <= 6000
    with pytest.raises(ValueError, match="below the minimum"):
        lora_rank_pattern(model, "uniform", budget=100)
    with pytest.raises(ValueError, match=r"\(2 of them\), this model has model.layers.0 ... \(3\)"):
        lora_rank_pattern(model, scores(1.0, 2.0), budget=6000)
    other = LayerScores("test", np.ones(3), ("transformer.h.0", "transformer.h.1", "transformer.h.2"))
    with pytest.raises(ValueError, match="score this model"):      # another family's layers, same count
        lora_rank_pattern(model, other, budget=6000)
    peft_model = get_peft_model(model, lora_config(alloc))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == alloc.parameters


def test_min_rank_zero_leaves_layers_without_an_adapter(fresh_tiny):
    """min_rank=0: program A may give a layer no rank at all; peft has no rank-0 LoRA, so lora_config
    leaves that layer's modules out and the adapter still costs exactly what the allocation says."""
    from peft import get_peft_model
    model, _ = fresh_tiny
    alloc = lora_rank_pattern(model, scores(1e-6, 4.0, 2.0), budget=4 * 512, min_rank=0)
    assert alloc.ranks[0] == 0 and alloc.parameters <= 4 * 512 and alloc.ranks.sum() > 0
    config = lora_config(alloc)
    assert not any(name.startswith("model.layers.0.") for name in config.target_modules)
    peft_model = get_peft_model(model, config)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == alloc.parameters
    empty = alloc.__class__(ranks=np.zeros(3, int), cost=alloc.cost, modules=alloc.modules, scores="test")
    with pytest.raises(ValueError, match="every layer has rank 0"):
        lora_config(empty)
    with pytest.raises(ValueError, match="min_rank must be a whole number >= 0"):
        lora_rank_pattern(model, "uniform", budget=6000, min_rank=-1)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 40), st.integers(0, 200), st.sampled_from(["uniform", "mola", "scores"]))
def test_expert_counts_spend_the_total(n_layers, extra, pattern):
    total = n_layers + extra
    chosen = scores(*np.linspace(1, 2, n_layers)) if pattern == "scores" else pattern
    counts = expert_counts(total, n_layers, chosen)
    assert counts.sum() == total and counts.min() >= 1 and counts.size == n_layers


def test_mola_pattern_of_the_paper():
    assert expert_counts(160, 32, "mola").tolist() == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8


def test_lora_moe_parameters_router_and_remove(fresh_tiny, blocks):
    model, _ = fresh_tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    x = blocks[0].input_ids[:2]
    with torch.no_grad():
        logits = model(input_ids=x).logits
    moe = apply_lora_moe(model, [1, 3, 2], rank=4, target_modules=("q_proj", "v_proj"))
    # per module: E r (d_in + d_out) + a router E d_in where E > 1; q: 32 -> 32, v: 32 -> 16
    expected = sum(e * 4 * (32 + d_out) + (e * 32 if e > 1 else 0) for e in (1, 3, 2) for d_out in (32, 16))
    assert moe.parameters == expected == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, logits)            # B = 0: the adapters start at zero
        assert float(moe.aux_loss()) == pytest.approx(1.0, abs=0.05)     # near-uniform random router
        layer = model.model.layers[1].self_attn.q_proj
        layer.router.weight.zero_()                                      # exactly uniform probabilities
        layer(torch.randn(5, 32))
        assert float(layer.aux_loss) == pytest.approx(1.0, abs=1e-6)
        layer.router.weight[0] = 5.0                                     # everything prefers expert 0
        layer(torch.rand(50, 32))
        assert float(layer.aux_loss) == pytest.approx(1.5, abs=1e-3)   # E * (1/2 * 1 + 1/2 * 0): top-2 of 3
    moe.remove()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and set(model.state_dict()) == set(state)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert type(model.model.layers[1].self_attn.q_proj).__name__ == "Linear"
    with pytest.raises(ValueError, match="one expert count"):
        apply_lora_moe(model, [1, 0, 2])


def test_a_few_steps_lower_the_training_loss(fresh_tiny, blocks):
    from peft import get_peft_model
    model, _ = fresh_tiny
    moe = apply_lora_moe(model, [2, 2, 2], rank=4)
    result = finetune(model, *blocks, steps=12, lr=1e-2, seed=0, aux=moe, progress=False)
    assert np.mean(result.train_losses[-3:]) < np.mean(result.train_losses[:3]) - 0.05
    assert result.val_loss_after < result.val_loss_before
    moe.remove()
    peft_model = get_peft_model(model, lora_config(lora_rank_pattern(model, "uniform", budget=3000)))
    again = finetune(peft_model, *blocks, steps=12, lr=1e-2, seed=0, progress=False)
    assert again.val_loss_after < again.val_loss_before and again.trainable == 1536
    with pytest.raises(ValueError, match="no trainable parameters"):
        finetune(peft_model.unload().requires_grad_(False), *blocks, steps=1)


def _peft_tiny():
    from peft import get_peft_model

    from layerq_nb.models import _tiny_llama
    model, _ = _tiny_llama(seed=1)
    with torch.random.fork_rng(devices=[]):       # peft's LoRA init draws from the global RNG (outside finetune)
        torch.manual_seed(0)
        return get_peft_model(model, lora_config(lora_rank_pattern(model, "uniform", budget=3000), dropout=0.5))


def test_finetune_randomness_is_local(blocks):
    """The same seed (or an equally seeded generator) gives identical losses, dropout included, and the
    caller's global RNG state is the same after finetune as before."""
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    runs = [finetune(_peft_tiny(), *blocks, steps=4, lr=1e-2, seed=3, progress=False).train_losses for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state), "finetune changed the global torch RNG"
    assert runs[0] == runs[1]
    other = finetune(_peft_tiny(), *blocks, steps=4, lr=1e-2, seed=4, progress=False).train_losses
    assert other != runs[0]
    drawn = [finetune(_peft_tiny(), *blocks, steps=4, lr=1e-2, generator=torch.Generator().manual_seed(3),
                      progress=False).train_losses for _ in range(2)]
    assert drawn[0] == drawn[1] and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator"):
        finetune(_peft_tiny(), *blocks, steps=1, generator=3)


def test_a_diverging_finetune_raises_and_puts_the_adapters_back(blocks):
    """lr 1e30 sends the loss to NaN within a few steps: finetune used to return val_loss_after = nan and
    leave NaN adapters in the model (and `layerq allocate --train --save` saved them)."""
    model = _peft_tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"fine-tuning diverged: .*lr 1e\+30 is likely too large.*put back"):
        finetune(model, *blocks, steps=3, lr=1e30, seed=0, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("bad", [
    dict(experts_per_layer=[1, 1, 2], alpha=0.0),
    dict(experts_per_layer=[1, 1, 2], rank=3.5),
    dict(experts_per_layer=[1, 2]),
    dict(experts_per_layer=[1, 2, 2], interrupt_at=4),       # Ctrl-C half-way through wrapping
])
def test_apply_lora_moe_changes_nothing_when_it_fails(fresh_tiny, monkeypatch, bad):
    """Validated before anything changes, and rolled back if interrupted: the module tree, every weight
    and every requires_grad flag are exactly as before."""
    from layerq_nb.pruning import weight_fingerprint
    model, _ = fresh_tiny
    bad = dict(bad)
    interrupt_at = bad.pop("interrupt_at", None)
    before = ([(n, type(m)) for n, m in model.named_modules()], weight_fingerprint(model),
              [p.requires_grad for p in model.parameters()])
    if interrupt_at is not None:
        real, calls = model.get_submodule, []

        def interrupted(name):
            calls.append(name)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            return real(name)
        monkeypatch.setattr(model, "get_submodule", interrupted)
    with pytest.raises((ValueError, KeyboardInterrupt)):
        apply_lora_moe(model, **bad)
    assert ([(n, type(m)) for n, m in model.named_modules()], weight_fingerprint(model),
            [p.requires_grad for p in model.parameters()]) == before
