"""The tutorials as files: eight of them, each opening with objectives, prerequisites, times and needs,
with a FAST parameters cell, at least two build-it exercises checked once each with their solution buttons, LaTeX and citations, a
closing summary with questions, no committed outputs, and the %layerq magic can find them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_eight_tutorials():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(8)]


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _text(cells, kind):
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == kind)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_shape(path):
    cells = _cells(path)
    head = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and head.startswith(f"# {path.name[:2]} ")
    for part in ("**You will:**", "**Prerequisites:**", "**Time:**", "**Needs:**"):
        assert part in head, f"the first cell says {part}"
    # a template's blanks must never reach a learner (TIME_FAST, __MEM__, MEMORY were once shipped)
    blanks = re.findall(r"__[A-Z_]+__|\b(?:TIME_[A-Z]+|MEMORY|TODO|TBD|XXX)\b", _text(cells, "markdown"))
    assert not blanks, f"unfilled placeholders in the text: {blanks}"
    assert re.search(r"\*\*Needs:\*\*[^\n]*\d(\.\d)? GB", head), "the header gives the measured memory in GB"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and 'os.environ.get("LAYERQ_FAST"' in "".join(params[0]["source"])
    code = _text(cells, "code")
    assert "smollm2-135m" in code and "tiny-llama" not in code           # the real model in both modes
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), "commit notebooks stripped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_device_comes_from_one_setting(path):
    """LAYERQ_DEVICE, read once in the parameters cell, places every model; only a cell that first asks
    whether CUDA is there may name it."""
    cells = _cells(path)
    params = "".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
    assert 'DEVICE = os.environ.get("LAYERQ_DEVICE"' in params
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "torch.cuda.is_available()" in source:
            continue
        for call in re.findall(r"load_model\([^)]*\)", source):
            assert "device=DEVICE" in call, f"{path.name}: {call} does not use the DEVICE setting"
        assert not re.search(r"""device\s*=\s*["'](cpu|cuda|mps)""", source), f"{path.name}: a hard-coded device"
        assert not re.search(r"""\.to\(\s*["'](cpu|cuda|mps)""", source), f"{path.name}: a hard-coded .to(device)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_are_checked_once_each(path):
    from layerq_nb import exercises as ex
    code = _text(_cells(path), "code")
    own = ex.exercises(path.name[:2])
    assert sum(e.kind == "build" for e in own) >= 2
    for e in own:
        assert code.count(f'ex.check("{e.key}"') == 1, f"{e.key} is checked once in its notebook"
        assert code.count(f'ex.solution("{e.key}")') == 1, f"{e.key} has its solution button"
    checked = set(re.findall(r'ex\.check\("(\d\d\.\d+)"', code))
    assert checked == {e.key for e in own}, "every check in the notebook is a registered exercise of it"
    assert not re.search(r"ex\.check_\w+\(", code), "the old number-only checks are gone"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_math_citations_and_closing(path):
    cells = _cells(path)
    prose = _text(cells, "markdown")
    assert re.search(r"\$[^$\n]+\$", prose), "formulas are LaTeX"
    assert "arXiv" in prose, "formulas cite their source with an arXiv id"
    for vague in ("seed 00", "DESIGN.md", "layerif.md"):
        assert vague not in prose, f"{vague!r} means nothing to a student: cite the paper"
    tail = "\n".join("".join(c["source"]) for c in cells[-3:] if c["cell_type"] == "markdown")
    assert "## What you learned" in tail and "## Questions" in tail
    questions = tail.split("## Questions", 1)[1]
    assert 3 <= len(re.findall(r"^\s*(?:\d+\.|[-*])\s", questions, flags=re.M)) <= 6


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


def test_layerq_lab_from_a_wheel_makes_one_set_of_copies_where_the_launcher_reuses_them(tmp_path, monkeypatch, capsys):
    import shutil

    import layerq_nb.tutorials as shipped
    from layerq_nb.cli import main
    from layerq_nb.lab import tutorials as learner
    wheel = tmp_path / "site-packages" / "layerq_nb" / "_notebooks"      # how a wheel install lays them out
    shutil.copytree(NOTEBOOKS[0].parent, wheel, ignore=shutil.ignore_patterns("layerq-tutorials", ".*"))
    monkeypatch.setattr(shipped, "tutorials_folder", lambda: wheel)
    work = tmp_path / "work"
    assert main(["lab", "--dry-run", "--dir", str(work)]) == 0
    assert f"--ServerApp.root_dir={work}" in capsys.readouterr().out
    assert [p.name for p in work.iterdir()] == ["layerq-tutorials"]          # no second set at the root
    copies = sorted(p.name for p in (work / "layerq-tutorials").glob("*.ipynb"))
    assert copies == [p.name for p in NOTEBOOKS]
    mine = work / "layerq-tutorials" / NOTEBOOKS[3].name
    mine.write_text(mine.read_text().replace("Layer", "My layer", 1))
    assert main(["lab", "--dry-run", "--dir", str(work)]) == 0               # a second start keeps the work
    assert "8 kept" in capsys.readouterr().out and "My layer" in mine.read_text()
    assert learner.open_copy(NOTEBOOKS[3].name[:2], root=work).created is False   # the launcher reuses it
