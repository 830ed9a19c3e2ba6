"""Where the anywidget front ends live: `layerq_nb/_widgets/` in a wheel, the repository's `widgets/` otherwise.

hatchling's force-include copies `widgets/` into the wheel but not into an editable install, so both
places are tried. A `Path` (not the file's text) is returned so anywidget's hot reload can watch it.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def asset(name: str) -> Path:
    for folder in (_PACKAGE / "_widgets", _PACKAGE.parent / "widgets"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"widget file {name!r} not found in {_PACKAGE / '_widgets'} or {_PACKAGE.parent / 'widgets'}: "
                            "reinstall layerq_nb (pip install -e . from the repository, or the wheel)")


def tutorials_folder() -> Path:
    """The tutorial notebooks: `layerq_nb/_notebooks/` in a wheel, the repository's `notebooks/` otherwise."""
    for folder in (_PACKAGE / "_notebooks", _PACKAGE.parent / "notebooks"):
        if any(folder.glob("[0-9][0-9]_*.ipynb")):
            return folder
    raise FileNotFoundError("the tutorial notebooks are not installed: reinstall layerq_nb from its repository or wheel")


def tutorials() -> dict[str, Path]:
    """'00' -> notebooks/00_tour.ipynb, ... in order."""
    return {p.name[:2]: p for p in sorted(tutorials_folder().glob("[0-9][0-9]_*.ipynb"))}


def tutorial(key: str) -> Path:
    """A tutorial by number ('3', '03') or by name ('03_layer_quality', 'layer_quality')."""
    found = tutorials()
    key = str(key).removesuffix(".ipynb")
    if key.isdigit() and key.zfill(2) in found:
        return found[key.zfill(2)]
    for path in found.values():
        if key in (path.stem, path.stem[3:]):
            return path
    raise KeyError(f"no tutorial {key!r}: choose one of " + ", ".join(p.stem for p in found.values()))
