"""Where the package's shipped files live, and the tutorial notebooks among them (no widgets, no torch).

In a wheel, hatchling's force-include copies the repository's `notebooks/` and `widgets/` into
`layerq_nb/_notebooks/` and `layerq_nb/_widgets/`; an editable install has neither, so the repository
folder is tried second. The command line, the lab extension and the course builder find the
tutorials here; `layerq_nb.ui._assets` re-exports these for the widgets.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_file", "tutorials_folder", "tutorials", "tutorial"]

PACKAGE = Path(__file__).resolve().parent
_PATTERN = "[0-9][0-9]_*.ipynb"


def _places(shipped: str, repository: str) -> tuple[Path, Path]:
    """(the folder inside a wheel, the repository's folder) for one kind of shipped file."""
    return PACKAGE / shipped, PACKAGE.parent / repository


def shipped_file(name: str, shipped: str = "_widgets", repository: str = "widgets") -> Path:
    """The path of a file the wheel ships in `layerq_nb/<shipped>/` (the repository's `<repository>/`
    otherwise). A `Path`, not its text, so anywidget's hot reload can watch it."""
    for folder in _places(shipped, repository):
        if (folder / name).is_file():
            return folder / name
    inside, outside = _places(shipped, repository)
    raise FileNotFoundError(f"file {name!r} not found in {inside} or {outside}: "
                            "reinstall layerq_nb (pip install -e . from the repository, or the wheel)")


def tutorials_folder() -> Path:
    """The tutorial notebooks: `layerq_nb/_notebooks/` in a wheel, the repository's `notebooks/` otherwise."""
    for folder in _places("_notebooks", "notebooks"):
        if any(folder.glob(_PATTERN)):
            return folder
    raise FileNotFoundError("the tutorial notebooks are not installed: reinstall layerq_nb from its repository or wheel")


def tutorials() -> dict[str, Path]:
    """'00' -> notebooks/00_tour.ipynb, ... in order."""
    return {p.name[:2]: p for p in sorted(tutorials_folder().glob(_PATTERN))}


def tutorial(key: str | int) -> Path:
    """A tutorial by number ('3', '03') or by name ('03_layer_quality', 'layer_quality')."""
    found = tutorials()
    key = str(key).removesuffix(".ipynb")
    if key.isdigit() and key.zfill(2) in found:
        return found[key.zfill(2)]
    for path in found.values():
        if key in (path.stem, path.stem[3:]):
            return path
    raise KeyError(f"no tutorial {key!r}: choose one of " + ", ".join(p.stem for p in found.values()))
