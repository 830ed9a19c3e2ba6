"""Where the anywidget front ends live: `layerq_nb/_widgets/` in a wheel, the repository's `widgets/` otherwise.

The finding itself is core (`layerq_nb.tutorials`, also used by the command line and the lab); the
tutorial helpers are re-exported here for the widgets and older imports.
"""
from __future__ import annotations

from pathlib import Path

from ..tutorials import shipped_file, tutorial, tutorials, tutorials_folder

__all__ = ["asset", "tutorials_folder", "tutorials", "tutorial"]


def asset(name: str) -> Path:
    """A widget front-end file (JavaScript, CSS) as a `Path`, so anywidget's hot reload can watch it."""
    try:
        return shipped_file(name)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"widget {err}") from None
