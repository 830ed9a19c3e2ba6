"""The tutorials as files: eight of them, each saying what it needs, with a FAST parameters cell, at least
two checked exercises with hidden solutions, no committed outputs, and the %layerq magic can find them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_eight_tutorials():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(8)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_shape(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "**Needs:**" in "".join(cells[0]["source"])
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and 'os.environ.get("LAYERQ_FAST"' in "".join(params[0]["source"])
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    checks = re.findall(r"ex\.check_\w+\(", code)
    solutions = re.findall(r'ex\.solution\("(\d\d\.\d)"\)', code)
    assert len(checks) >= 2 and len(solutions) >= 2 and all(s.startswith(path.name[:2]) for s in solutions)
    assert "smollm2-135m" in code and "tiny-llama" not in code           # the real model in both modes
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), "commit notebooks stripped"


def test_magic_lists_copies_and_links_tutorials(tmp_path, monkeypatch, capsys):
    from IPython.testing.globalipapp import get_ipython

    from layerq_nb.ui._assets import tutorial, tutorials
    assert list(tutorials()) == [p.name[:2] for p in NOTEBOOKS]
    assert tutorial("3") == tutorial("03") == tutorial("layer_quality") == NOTEBOOKS[3]
    with pytest.raises(KeyError, match="00_tour"):
        tutorial("99")
    shell = get_ipython()
    shell.run_line_magic("load_ext", "layerq_nb")
    shell.run_line_magic("layerq", "tutorials")
    assert "05  05_pruning" in capsys.readouterr().out
    copied = shell.run_line_magic("layerq", f"copy 04 {tmp_path}")
    assert copied.read_bytes() == NOTEBOOKS[4].read_bytes()
    with pytest.raises(FileExistsError):
        shell.run_line_magic("layerq", f"copy 04 {tmp_path}")
    shell.run_line_magic("layerq", "doctor")
    assert "anywidget" in capsys.readouterr().out


def test_layerq_lab_command(capsys):
    from layerq_nb.cli import main
    assert main(["lab", "--dry-run", "--no-browser"]) == 0
    out = capsys.readouterr().out
    assert "jupyter lab" in out and f"--ServerApp.root_dir={NOTEBOOKS[0].parent}" in out and "--no-browser" in out
