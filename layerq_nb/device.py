"""Where the model runs and in which precision: one device setting, one dtype policy (issue 20).

    LAYERQ_DEVICE = auto (default) | cpu | cuda | cuda:N | mps

`auto` takes CUDA when torch sees a GPU, else Apple's MPS, else the CPU. Every notebook, widget, CLI
command and benchmark resolves its device here, so one environment variable (or one parameters-cell
value) moves the whole package. The dtype policy then follows from the device:

    device                   passes (autocast)    weights, statistics
    CPU                      float32              float32
    CUDA, compute >= 8.0     bfloat16             float32   (Ampere, Ada, Hopper: native bf16)
    CUDA, compute <  8.0     float16              float32   (T4, V100: no bf16 units)
    MPS                      float32              float32   (half-precision training kernels differ across macOS versions)

Mixed precision as in Micikevicius et al., "Mixed Precision Training" (arXiv:1710.03740): the forward
and backward matmuls run in half precision under autocast while the weights stay float32 (LoRA updates
and weight gradients keep their precision) and every statistic (Fisher factors, gradient sums,
eigendecompositions) accumulates in float32: the tape upcasts each module's a and b before summing.
On a CPU, bf16 autocast makes the plain pass about 2x faster but the statistics' share grows
(benchmarks/README.md), so the CPU keeps float32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DEVICES", "ENV", "resolve_device", "DtypePolicy", "dtype_policy", "mps_available"]

ENV = "LAYERQ_DEVICE"
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# a 256-token block's activations for the backward, with the statistics' work buffers, take about 1 GiB
# for SmolLM2-135M (benchmarks/README.md, peak memory of scoring); 2 GiB a block leaves room for
# Qwen2.5-0.5B's 152k-word logits
GIB_PER_BLOCK = 2
MAX_GPU_BATCH = 16


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """None or 'auto' -> $LAYERQ_DEVICE when set, else CUDA, then MPS, then CPU; 'cpu', 'cuda', 'cuda:N'
    and 'mps' are checked: a device this machine lacks is a ValueError that names what it has."""
    if isinstance(spec, torch.device):          # already parsed: only its availability is checked below
        dev, spec = spec, str(spec)
    else:
        if spec is None or spec == "auto":
            spec = os.environ.get(ENV, "auto").strip() or "auto"
            if spec == "auto":
                if torch.cuda.is_available():
                    return torch.device("cuda")
                if mps_available():
                    return torch.device("mps")
                return torch.device("cpu")
        if not isinstance(spec, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {spec!r}")
        try:
            dev = torch.device(spec)
        except (RuntimeError, ValueError, TypeError) as err:
            if isinstance(err, torch.OutOfMemoryError):     # a real fault, not a misspelt device
                raise
            raise ValueError(f"unknown device {spec!r} (from the argument or ${ENV}): use one of "
                             f"{', '.join(DEVICES)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch ({torch.__version__}) is a CPU-only build" if torch.version.cuda is None
                   else f"this torch ({torch.__version__}) sees no CUDA GPU")
            raise ValueError(f"device {spec!r} is not available: {why}. Use cpu (or auto), or install a CUDA build "
                             "of torch on a machine with an NVIDIA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} is not available: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not mps_available():
            raise ValueError(f"device {spec!r} is not available: Apple MPS needs a Mac with Apple silicon. Use cpu or auto")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {spec!r}: use one of {', '.join(DEVICES)}")
    return dev


@dataclass(frozen=True)
class DtypePolicy:
    """How to run on one device: weights in `weights`, forward and backward under autocast to
    `autocast` (None: none), statistics summed in `statistics`, `batch_size` blocks per pass."""
    device: torch.device
    weights: torch.dtype
    autocast: torch.dtype | None
    statistics: torch.dtype
    batch_size: int
    reason: str


def dtype_policy(device: str | torch.device | None = None) -> DtypePolicy:
    """The precision and batch size for `device` (resolved with `resolve_device`); see the module docstring."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        props = torch.cuda.get_device_properties(index)
        gib = props.total_memory / 2**30
        batch = max(1, min(MAX_GPU_BATCH, int(gib // GIB_PER_BLOCK)))
        if (major, minor) >= (8, 0):
            return DtypePolicy(dev, torch.float32, torch.bfloat16, torch.float32, batch,
                               f"{props.name} (compute {major}.{minor}) has native bfloat16")
        return DtypePolicy(dev, torch.float32, torch.float16, torch.float32, batch,
                           f"{props.name} (compute {major}.{minor}) has no bfloat16 units: float16 passes, "
                           "float32 statistics")
    if dev.type == "mps":
        return DtypePolicy(dev, torch.float32, None, torch.float32, 2,
                           "MPS: float32 (half-precision training kernels differ across macOS versions)")
    # one block per pass on a CPU: no slower than four, and a quarter of the activation memory
    # (benchmarks/README.md, peak memory of scoring)
    return DtypePolicy(dev, torch.float32, None, torch.float32, 1, "CPU: float32, one block per pass")
