"""Widgets for the tutorials: anywidget views, ipywidgets steppers, and the pure steps they draw.

Needs the notebook extra (`pip install "layerq_nb[notebooks]"`); the core never imports this package.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "LayerStack": "views", "WaterFill": "views", "MaskHeatmap": "views",
    "Step": "stepper", "Stepper": "stepper",
    "Allocation": "mdl_widgets", "TransferRegret": "mdl_widgets", "ShapleyConvergence": "mdl_widgets",
    "GradientIsolation": "model_widgets", "Curvature": "model_widgets", "Pruning": "model_widgets",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layerq_nb.ui' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
