"""What users keep: pruned model folders, peft adapter configurations and score files, written so that the
field's own libraries load them back (transformers' `from_pretrained`, peft's `LoraConfig.from_pretrained`).

- `save_pruned`: the pruned model as transformers writes it (safetensors, config, tokenizer), plus
  `layerq-prune.json` with the sparsity map, the method, the zeros per layer and the calibration data.
- `save_adapter`: peft's `adapter_config.json` with `rank_pattern` / `alpha_pattern` (and the trained
  adapter weights when a peft model is given), plus `layerq-allocation.json` with the ranks.
- `save_scores` / `load_scores`: LayerScores with the identity of the model they were computed on; loading
  them for another model, or another layer count, is refused with the reason.

Every folder is written beside its target and renamed into place, so an interrupted save leaves no half
folder; a folder is only replaced when it is empty or one that layerq_nb wrote.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .scores import LayerScores, _plain

if TYPE_CHECKING:                   # annotations only: saving scores needs no torch
    from torch import nn

    from .adapt import RankAllocation

__all__ = ["PRUNE_RECORD", "ALLOCATION_RECORD", "model_identity", "check_folder", "check_parent", "save_pruned",
           "load_record", "save_adapter", "save_scores", "load_scores", "check_scores"]

PRUNE_RECORD = "layerq-prune.json"
ALLOCATION_RECORD = "layerq-allocation.json"
_RECORDS = (PRUNE_RECORD, ALLOCATION_RECORD)


def model_identity(model: nn.Module) -> dict:
    """What makes scores belong to a model: its family, depth, width, parameter count and layer names."""
    from .models import layers, model_facts
    found = layers(model)
    config = getattr(model, "config", None)
    return dict(model=str(model_facts(model).name or "?"),
                model_type=getattr(config, "model_type", type(model).__name__),
                layers=len(found), hidden_size=getattr(config, "hidden_size", None),
                parameters=int(sum(p.numel() for p in model.parameters())),
                layer_names=[layer.name for layer in found])


# ----------------------------------------------------------------------------- folders

def check_folder(folder: str | os.PathLike, *, option: str = "--save") -> Path:
    """A folder we may write: absent, empty, or written by layerq_nb before (then replaced). Checked
    before any model loads, so a bad path costs nothing."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {folder} is a file: give a folder name (it is created)")
    if path.is_dir() and any(path.iterdir()) and not any((path / r).is_file() for r in _RECORDS):
        raise ValueError(f"{option} {folder} is a folder with other files in it: give a new or empty folder "
                         "(layerq_nb only replaces folders it wrote)")
    check_parent(path, option, shown=folder)
    return path


def check_parent(path: str | os.PathLike, option: str, *, shown=None) -> Path:
    """The folder `path` goes in: it exists, is a folder, and a file can really be created in it.
    `option` (e.g. "--save", "OUT") and `shown` (the path as the user typed it) make the message."""
    path = Path(path).expanduser()
    shown = path if shown is None else shown
    parent = path.parent
    nearest = next((p for p in (parent, *parent.parents) if p.exists()), parent)
    if nearest.exists() and not nearest.is_dir():
        raise ValueError(f"{option} {shown}: {nearest} is a file, not a folder: choose a path inside a folder")
    if nearest != parent:
        raise ValueError(f"{option} {shown}: the folder {parent} does not exist (create it first: mkdir -p {parent})")
    try:    # os.access says yes to root even where the filesystem refuses (/sys, a read-only mount)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".layerq-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {shown}: cannot write in {parent} ({err.strerror or err}): "
                         f"choose another {option}") from None
    return parent


def _publish(write, folder) -> Path:
    """Run write(tmp) on a fresh sibling folder, then move it to `folder` (replacing an old one of ours)."""
    folder = check_folder(folder)
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        write(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _dump(path: Path, record: dict):
    path.write_text(json.dumps(record, indent=1, default=_plain) + "\n")


def load_record(folder: str | os.PathLike) -> dict:
    """The layerq record beside a saved model or adapter (layerq-prune.json or layerq-allocation.json)."""
    folder = Path(folder).expanduser()
    for name in _RECORDS:
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise ValueError(f"{folder} holds no {' or '.join(_RECORDS)}: it was not written by layerq_nb")


# ----------------------------------------------------------------------------- pruned models

def save_pruned(model: nn.Module, tokenizer: object, folder: str | os.PathLike, record: dict) -> Path:
    """Write the model as it is now (call it inside `pruning.pruned`, while the weights are pruned) with
    `save_pretrained`, its tokenizer, and `record` (map, method, per-layer sparsity, calibration data,
    perplexities) as layerq-prune.json. `AutoModelForCausalLM.from_pretrained(folder)` loads it offline."""
    def write(tmp: Path):
        config = model.config
        quantisation = getattr(config, "quantization_config", None)   # a GGUF-loaded model's: save_pretrained
        if quantisation is not None:                                  # refuses it, and the weights are floats now
            del config.quantization_config
        try:
            model.save_pretrained(tmp)
        finally:
            if quantisation is not None:
                config.quantization_config = quantisation
        tokenizer.save_pretrained(tmp)
        _dump(tmp / PRUNE_RECORD, {**record, "identity": model_identity(model)})
    return _publish(write, folder)


# ----------------------------------------------------------------------------- LoRA adapters

def save_adapter(allocation: RankAllocation, folder: str | os.PathLike, record: dict, *, base_model: str | None = None,
                 peft_model: nn.Module | None = None, alpha_ratio: float = 2.0) -> Path:
    """peft's adapter_config.json for the allocation (rank_pattern / alpha_pattern per module, see
    `adapt.lora_config`), or, given the trained `peft_model`, its adapter weights and configuration as
    `save_pretrained` writes them; plus layerq-allocation.json (ranks per layer, cost, budget)."""
    from .adapt import lora_config

    def write(tmp: Path):
        if peft_model is not None:
            peft_model.save_pretrained(tmp)
        else:
            config = lora_config(allocation, alpha_ratio=alpha_ratio)
            config.base_model_name_or_path = base_model
            config.save_pretrained(tmp)
        _dump(tmp / ALLOCATION_RECORD, {**record, "ranks": np.asarray(allocation.ranks).tolist(),
                                        "cost_per_rank": np.asarray(allocation.cost).tolist(),
                                        "parameters": allocation.parameters, "scores": allocation.scores,
                                        "modules": {int(k): v for k, v in allocation.modules.items()}})
    return _publish(write, folder)


# ----------------------------------------------------------------------------- scores

def save_scores(scores: LayerScores, model: nn.Module, path: str | os.PathLike) -> Path:
    """The scores as JSON, with the identity of `model` in their metadata (see `load_scores`)."""
    stamped = LayerScores(method=scores.method, values=scores.values, names=scores.names,
                          metadata={**scores.metadata, "identity": model_identity(model)})
    return stamped.save(Path(path).expanduser())


def check_scores(scores: LayerScores, model: nn.Module, *, source: str = "the scores") -> LayerScores:
    """The scores, if they are one value per decoder layer of this very model; a ValueError otherwise."""
    here = model_identity(model)
    there = scores.metadata.get("identity")
    what = f"{here['model']} ({here['model_type']}, {here['layers']} layers, {here['parameters'] / 1e6:.1f}M parameters)"
    if scores.metadata.get("granularity", "block") != "block":
        raise ValueError(f"{source} holds one score per module; allocation and pruning need one per layer: "
                         "score again with granularity 'block'")
    if len(scores) != here["layers"]:
        raise ValueError(f"{source} holds {len(scores)} layer scores, but {what} has {here['layers']} layers: "
                         "score this model (layerq score --model ... --out FILE)")
    if there is None:
        raise ValueError(f"{source} does not record which model it was computed on: write it with "
                         "layerq score --out FILE (or layerq_nb.artefacts.save_scores)")
    for key in ("model_type", "layers", "hidden_size", "parameters"):
        if there.get(key) != here[key]:
            theirs = (f"{there.get('model')} ({there.get('model_type')}, {there.get('layers')} layers, "
                      f"{(there.get('parameters') or 0) / 1e6:.1f}M parameters)")
            raise ValueError(f"{source} belongs to another model: it was computed on {theirs}, this is {what} "
                             f"({key} differs); score this model (layerq score --model ... --out FILE)")
    if tuple(scores.names) != tuple(here["layer_names"]):
        raise ValueError(f"{source} names other layers ({scores.names[0]} ...) than this model ({here['layer_names'][0]} ...)")
    return scores


def load_scores(path: str | os.PathLike, model: nn.Module) -> LayerScores:
    """Scores written by `save_scores` (or `layerq score --out`), checked against `model`."""
    return check_scores(LayerScores.load(Path(path).expanduser()), model, source=str(path))
