"""Dense decoder-only families: `layers()` finds the blocks generically, and the pipeline (score, Wanda
pruning with the weights restored, LoRA ranks through peft) runs on a tiny random model of each."""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

from layerq_nb.adapt import lora_config, lora_rank_pattern, rank_costs
from layerq_nb.curvature import batched_products, exact_operator
from layerq_nb.data import Blocks
from layerq_nb.models import layers, weight_matrix
from layerq_nb.pruning import pruned
from layerq_nb.scoring import score

VOCAB, HIDDEN, HEADS = 64, 32, 4
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=HEADS, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, tie_word_embeddings=False)
LLAMA_LIKE = dict(COMMON, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_key_value_heads=2,
                  max_position_embeddings=64)

# family -> (config class, model class, config kwargs, a linear map every block has)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA_LIKE, "self_attn.q_proj"),
    "mistral": ("MistralConfig", "MistralForCausalLM", LLAMA_LIKE, "mlp.gate_proj"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", LLAMA_LIKE, "self_attn.k_proj"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(LLAMA_LIKE, head_dim=8), "self_attn.v_proj"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(LLAMA_LIKE, head_dim=8), "mlp.down_proj"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", LLAMA_LIKE, "self_attn.qkv_proj"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(COMMON, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                                                              max_position_embeddings=64), "attention.query_key_value"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=HEADS,
                                                   n_positions=64, tie_word_embeddings=False), "attn.c_attn"),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(COMMON, hidden_size=HIDDEN, ffn_dim=2 * HIDDEN, word_embed_proj_dim=HIDDEN,
                                                max_position_embeddings=64), "self_attn.out_proj"),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(COMMON, hidden_size=HIDDEN), "self_attention.query_key_value"),
}


def _tiny(family: str):
    import transformers
    config_name, model_name, kwargs, _ = FAMILIES[family]
    config = getattr(transformers, config_name)(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(transformers, model_name)(config).eval()


def _blocks(n: int = 2, length: int = 16) -> Blocks:
    ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))
    return Blocks(input_ids=ids, labels=ids.clone(), attention_mask=torch.ones_like(ids), task="random", split="train")


def _available(family: str) -> bool:
    try:
        return hasattr(importlib.import_module("transformers"), FAMILIES[family][1])
    except ImportError:
        return False


def test_this_transformers_has_at_least_eight_of_the_families():
    assert sum(map(_available, FAMILIES)) >= 8


@pytest.mark.parametrize("family", [f for f in FAMILIES if _available(f)])
def test_the_pipeline_runs_on_each_family(family):
    from peft import get_peft_model
    model = _tiny(family)
    found = layers(model)
    assert len(found) == 2 and FAMILIES[family][3] in found[1].linears
    assert [layer.index for layer in found] == [0, 1]
    assert all(model.get_submodule(layer.name) is layer.module for layer in found)
    blocks = _blocks()

    scores = score(model, blocks, curvature="kfac", progress=False)
    assert len(scores) == 2 and np.all(scores.values > 0) and scores.names == tuple(layer.name for layer in found)
    # one layer per pass: the second pass starts autograd at block 1's input, however the family calls it
    streamed = score(model, blocks, curvature="kfac", layers_per_pass=1, progress=False)
    np.testing.assert_allclose(streamed.values, scores.values, rtol=1e-6, atol=0)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pruned(model, [0.5, 0.7], "wanda", blocks=blocks, batch_size=2, progress=False) as report:
        for layer, target in zip(found, [0.5, 0.7]):
            zeros = sum(int((weight_matrix(m) == 0).sum()) for m in layer.linears.values())
            assert zeros == pytest.approx(target * layer.n_params, abs=len(layer.linears) * 64)
        np.testing.assert_allclose(report.achieved, [0.5, 0.7], atol=0.05)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "weights not restored"

    budget = int(3 * rank_costs(model, target_modules=None).sum())
    allocation = lora_rank_pattern(model, scores, budget, target_modules=None)
    peft_model = get_peft_model(model, lora_config(allocation))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == allocation.parameters <= budget
    for k, names in allocation.modules.items():
        for name in names:
            lora_a = peft_model.base_model.model.get_submodule(name).lora_A["default"]
            assert lora_a.out_features == allocation.ranks[k]


def test_an_encoder_only_model_is_refused():
    from transformers import BertConfig, BertForMaskedLM
    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                                       num_attention_heads=HEADS, intermediate_size=HIDDEN))
    with pytest.raises(ValueError, match="bert is an encoder-only"):
        layers(model)


def test_a_model_without_a_block_list_is_refused():
    with pytest.raises(ValueError, match="no list of decoder blocks"):
        layers(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))


def test_fused_expert_tensors_are_refused():
    from transformers import MixtralConfig, MixtralForCausalLM
    mixtral = MixtralForCausalLM(MixtralConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2))
    with pytest.raises(ValueError, match="fused expert tensors .*experts.gate_up_proj"):
        layers(mixtral)

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 8, 16))
            self.router = torch.nn.Linear(8, 4)

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Experts(), Experts()])
    with pytest.raises(ValueError, match="fused expert tensors.*gate_up_proj"):
        layers(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_block_products_batch_on_every_family(family):
    """The exact block's dense build maps Gauss-Newton-vector products over its columns with torch.func.vmap:
    on every family the batch equals the products one at a time, with no fallback to a loop."""
    if not _available(family):
        pytest.skip(f"this transformers has no {FAMILIES[family][1]}")
    model = _tiny(family)
    model.set_attn_implementation("eager")           # forward-mode products need eager attention
    op = exact_operator(model, _blocks(1, 8), 0, max_dense=0, hutchinson_probes=1)
    dim = sum(m.weight.numel() for m in layers(model)[0].linears.values())
    vectors = torch.randn(4, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the loop fallback warns: it must not be needed
        batched = batched_products(op.gvp, vectors, chunk=3)
    one_by_one = torch.stack([op.gvp(v) for v in vectors])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-7 * float(one_by_one.abs().max()))
