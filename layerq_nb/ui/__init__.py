"""Widgets for the tutorials: anywidget views, ipywidgets steppers, and the pure steps they draw.

Needs the notebook extra (`pip install "layerq_nb[notebooks]"`); the core never imports this package.
"""
from __future__ import annotations

from .. import lazy_exports

_LAZY = {
    "LayerStack": "views", "WaterFill": "views", "MaskHeatmap": "views",
    "Step": "stepper", "Stepper": "stepper",
    "Allocation": "mdl_widgets", "TransferRegret": "mdl_widgets", "ShapleyConvergence": "mdl_widgets",
    "GradientIsolation": "model_widgets", "Curvature": "model_widgets", "Pruning": "model_widgets",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
