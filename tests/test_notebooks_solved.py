"""The tutorials run a second time with every exercise answered by its shipped solution, executed in the
notebook's own namespace (`LAYERQ_SOLVE=1`): a solution that needs a name its notebook never defines, or
that does not pass its own check, fails here. (pytest's `--nbmake` runs them once more with the exercises
blank.)"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from layerq_nb import exercises as ex

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _stdout(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.real_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_passes_with_its_solutions(path, monkeypatch):
    monkeypatch.setenv("LAYERQ_SOLVE", "1")
    monkeypatch.setenv("LAYERQ_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    out = _stdout(nb)
    keys = [e.key for e in ex.exercises(path.name[:2])]
    assert len(keys) >= 2
    for key in keys:
        assert f"[{key}] Correct" in out, f"exercise {key} was not checked, or did not pass, in the solved run"
