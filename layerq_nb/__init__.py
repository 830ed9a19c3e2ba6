"""layerq_nb: which transformer layers matter for a task, and how to turn that into decisions.

The MDL programs (numpy only) import eagerly; everything that needs torch loads on first use, so
`import layerq_nb` stays fast.
"""
from __future__ import annotations

import importlib

from .mdl import allocate, prune, regret_bound, verify

__version__ = "0.1.0"

_LAZY = {
    # models and data
    "load_model": "models", "layers": "models", "Layer": "models", "model_facts": "models", "ModelFacts": "models",
    "load_task": "data", "Blocks": "data",
    # evaluation
    "perplexity": "evaluate", "mean_loss": "evaluate",
    # scoring
    "score": "scoring", "newton_step": "scoring", "layer_gradients": "scoring", "LayerScores": "scores",
    # layer quality
    "layer_influence": "influence", "layer_shapley": "ablation", "cornerstone": "ablation", "skipped": "ablation",
    # applications
    "pruned": "pruning", "sparsity_map": "pruning", "lora_rank_pattern": "adapt", "apply_lora_moe": "adapt",
    "finetune": "adapt",
    # artefacts users keep (transformers / peft load them back)
    "save_pruned": "artefacts", "save_adapter": "artefacts", "save_scores": "artefacts", "load_scores": "artefacts",
}

__all__ = [
    "allocate", "prune", "verify", "regret_bound",          # MDL programs (numpy)
    "load_model", "layers", "Layer", "model_facts", "ModelFacts", "load_task", "Blocks",  # models, tasks (lazy)
    "perplexity", "mean_loss",                               # evaluation (torch, lazy)
    "score", "newton_step", "layer_gradients", "LayerScores", # scoring (torch, lazy; LayerScores numpy)
    "layer_influence", "layer_shapley", "cornerstone", "skipped",  # layer quality (torch, lazy)
    "pruned", "sparsity_map", "lora_rank_pattern", "apply_lora_moe", "finetune",  # applications
    "save_pruned", "save_adapter", "save_scores", "load_scores",                  # artefacts
]


def lazy_exports(package: str, table: dict, namespace: dict):
    """Module-level __getattr__ and __dir__ that import `name` from `package.table[name]` on first use
    (PEP 562), so importing a package does not import torch or the widget stack."""
    def __getattr__(name):
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(table))
    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


def load_ipython_extension(ipython):
    """`%load_ext layerq_nb`: registers the `%layerq` magic (doctor, tutorials, copy, reset, open)."""
    from .ui.magics import load_ipython_extension as load
    load(ipython)
