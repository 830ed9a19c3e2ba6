"""The custom views (anywidget): a layer stack, the water-filling picture of MDL program A, a mask heatmap.

Arrays are synced as float32 bytes (a `DataView` in the browser), never as JSON lists, so a 30-layer
model or a 256 x 256 mask costs a few kB. The ES modules are in the repository's `widgets/` folder.
"""
from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from ._assets import asset

__all__ = ["LayerStack", "WaterFill", "MaskHeatmap", "as_bytes", "from_bytes", "pool_mask"]


def as_bytes(values, dtype=np.float32) -> bytes:
    """A flat little-endian float32 (or uint8) buffer: what the views read with Float32Array."""
    return np.ascontiguousarray(np.asarray(values, dtype=dtype).ravel()).astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def from_bytes(data, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


class LayerStack(anywidget.AnyWidget):
    """One bar per layer (layer 0 at the bottom); click a bar or use the arrow keys to select a layer.

    >>> stack = LayerStack(names=["layers.0", "layers.1"], values=[0.2, 0.8])
    >>> stack.selected = 1; stack.selected_name
    'layers.1'
    """
    _esm = asset("layer_stack.js")
    _css = asset("layer_stack.css")
    names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    values = traitlets.Bytes(b"").tag(sync=True)
    marked = traitlets.Bytes(b"").tag(sync=True)
    selected = traitlets.Int(0).tag(sync=True)
    label = traitlets.Unicode("").tag(sync=True)

    def __init__(self, names=(), values=(), marked=None, selected: int = 0, label: str = "", **kwargs):
        super().__init__(names=list(names), values=as_bytes(values), selected=selected, label=label,
                         marked=as_bytes(np.zeros(len(names)) if marked is None else marked, np.uint8), **kwargs)

    def show(self, values, label: str | None = None, marked=None):
        """Replace the bars (same layers)."""
        values = np.asarray(values, dtype=float)
        if values.size != len(self.names):
            raise ValueError(f"expected {len(self.names)} values (one per layer), got {values.size}")
        with self.hold_sync():
            self.values = as_bytes(values)
            if label is not None:
                self.label = label
            if marked is not None:
                self.marked = as_bytes(marked, np.uint8)

    @property
    def bar_values(self) -> np.ndarray:
        return from_bytes(self.values)

    @property
    def selected_name(self) -> str:
        return self.names[self.selected]

    @traitlets.validate("selected")
    def _clip(self, proposal):
        return int(np.clip(proposal["value"], 0, max(len(self.names) - 1, 0)))


class WaterFill(anywidget.AnyWidget):
    """Water-filling picture of a `mdl.allocate` solution: r_k = clip(q_k/(nu c_k) - beta_k, lower_k, upper_k)."""
    _esm = asset("waterfill.js")
    _css = asset("waterfill.css")
    q = traitlets.Bytes(b"").tag(sync=True)
    cost = traitlets.Bytes(b"").tag(sync=True)
    beta = traitlets.Bytes(b"").tag(sync=True)
    lower = traitlets.Bytes(b"").tag(sync=True)
    upper = traitlets.Bytes(b"").tag(sync=True)
    x = traitlets.Bytes(b"").tag(sync=True)
    nu = traitlets.Float(1.0).tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)
    label = traitlets.Unicode("allocation").tag(sync=True)

    def __init__(self, solution=None, **kwargs):
        super().__init__(**kwargs)
        if solution is not None:
            self.show(solution)

    def show(self, solution, x=None, label: str | None = None):
        """Draw an allocation `Solution` (x overrides the drawn allocation, e.g. an integer rounding)."""
        p = solution.problem
        if not hasattr(p, "beta"):
            raise TypeError("WaterFill draws allocation program A (mdl.allocate); pruning solutions have no beta")
        with self.hold_sync():
            self.q, self.cost, self.beta = as_bytes(p.q), as_bytes(p.cost), as_bytes(p.beta)
            self.lower, self.upper = as_bytes(p.lower), as_bytes(p.upper)
            self.x = as_bytes(solution.x if x is None else x)
            self.nu = float(solution.nu)
            if label is not None:
                self.label = label


def pool_mask(mask, max_cells: int = 128) -> np.ndarray:
    """Fraction kept per cell of a (rows, cols) boolean 'pruned' mask, pooled to at most max_cells a side."""
    kept = 1.0 - np.asarray(mask, dtype=np.float32)
    rows, cols = kept.shape
    fr, fc = -(-rows // max_cells), -(-cols // max_cells)          # ceil: pool factors
    pr, pc = -(-rows // fr) * fr, -(-cols // fc) * fc
    padded = np.full((pr, pc), np.nan, dtype=np.float32)
    padded[:rows, :cols] = kept
    return np.nanmean(padded.reshape(pr // fr, fr, pc // fc, fc), axis=(1, 3)).astype(np.float32)


class MaskHeatmap(anywidget.AnyWidget):
    """A pruning mask (True = pruned) pooled to at most `max_cells` a side, sent as float32 bytes."""
    _esm = asset("mask_heatmap.js")
    _css = asset("mask_heatmap.css")
    data = traitlets.Bytes(b"").tag(sync=True)
    rows = traitlets.Int(0).tag(sync=True)
    cols = traitlets.Int(0).tag(sync=True)
    label = traitlets.Unicode("").tag(sync=True)

    def __init__(self, mask=None, label: str = "", max_cells: int = 128, **kwargs):
        super().__init__(label=label, **kwargs)
        self.max_cells = max_cells
        if mask is not None:
            self.show(mask, label)

    def show(self, mask, label: str | None = None):
        cells = pool_mask(mask, self.max_cells)
        with self.hold_sync():
            self.rows, self.cols = cells.shape
            self.data = as_bytes(cells)
            if label is not None:
                self.label = label

    @property
    def cells(self) -> np.ndarray:
        return from_bytes(self.data).reshape(self.rows, self.cols)
