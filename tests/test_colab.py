"""The Colab path, run on a CPU with a stand-in `google.colab`: every tutorial's first code cell does
nothing off Colab, refuses the placeholder repository, and on "Colab" pip-installs the package from the
repository and turns on the custom widget manager; the badges and cells agree with layerq_nb.colab."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from layerq_nb import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO = "https://github.com/someone/layerq_nb"


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _colab_cell(path):
    found = [c for c in _cells(path) if c["cell_type"] == "code" and "".join(c["source"]).startswith("# Colab only")]
    assert len(found) == 1, f"{path.name} has one Colab cell"
    return "".join(found[0]["source"])


@pytest.fixture
def fake_colab(monkeypatch):
    """A stand-in google.colab whose output.enable_custom_widget_manager records its calls, and a
    subprocess.run that records the commands instead of running pip."""
    calls = {"widget_manager": 0, "commands": []}
    google, module, output = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.output"))
    output.enable_custom_widget_manager = lambda: calls.__setitem__("widget_manager", calls["widget_manager"] + 1)
    module.output, google.colab = output, module
    for name, mod in (("google", google), ("google.colab", module), ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls["commands"].append((cmd, kw)))
    monkeypatch.setenv("LAYERQ_DEVICE", "auto")
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_tutorial_has_the_cell_and_the_badge(path):
    cells = _cells(path)
    assert _colab_cell(path) == colab.first_cell()
    params = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "".join(cells[params + 1]["source"]).startswith("# Colab only"), "right after the parameters cell"
    first_import = next(i for i, c in enumerate(cells) if "import layerq_nb" in "".join(c["source"])
                        and not "".join(c["source"]).startswith("# Colab only"))
    assert first_import > params + 1, "installed before the package is first imported"
    assert colab.badge(path.name) in "".join(cells[0]["source"])
    # nothing in the text is fetched from the internet: offline (a classroom hub, the rendered course,
    # the browser tests) an outside image is a failed request and a console error
    markdown = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert not re.search(r"!\[[^\]]*\]\(https?://|<img[^>]+src=[\"']https?://", markdown)


def test_off_colab_the_cell_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    exec(colab.first_cell(REPO), {})
    assert ran == [] and not colab.on_colab()
    assert colab.setup() == colab.ColabSetup(on_colab=False, widget_manager=False, device="", autocast="")


@pytest.fixture
def not_installed(monkeypatch):
    """importlib sees no layerq_nb, as on a fresh Colab runtime (the tests' own copy stays importable)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "layerq_nb" else real(name, *a))


def test_on_colab_the_placeholder_repository_is_refused(fake_colab, not_installed):
    with pytest.raises(RuntimeError, match=r"python -m layerq_nb.colab --repository"):
        exec(colab.first_cell(colab.PLACEHOLDER), {})
    assert fake_colab["commands"] == [] and fake_colab["widget_manager"] == 0


def test_on_colab_an_installed_package_is_not_installed_again(fake_colab, capsys):
    exec(colab.first_cell(colab.PLACEHOLDER), {})       # e.g. the course's wheel: no repository needed
    assert fake_colab["commands"] == [] and fake_colab["widget_manager"] == 1
    assert "widgets on" in capsys.readouterr().out


def test_on_colab_the_cell_installs_and_sets_up(fake_colab, not_installed, capsys):
    exec(colab.first_cell(REPO), {})
    (command, options), = fake_colab["commands"]
    assert command == colab.install_command(REPO) and options == {"check": True}
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and command[-1] == f"layerq_nb[colab] @ git+{REPO}"
    assert fake_colab["widget_manager"] == 1
    said = capsys.readouterr().out
    assert "widgets on" in said and "model on cpu" in said and "T4 GPU" in said   # a CPU runtime is told how to get a GPU
    found = colab.setup()
    assert found.on_colab and found.device == "cpu" and found.autocast == "float32"


def test_the_colab_extra_adds_no_torch():
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith("torch") for dep in extras[colab.EXTRA])     # Colab's CUDA torch stays


def test_urls_and_their_errors():
    assert colab.colab_url("00_tour.ipynb", REPO) == \
        "https://colab.research.google.com/github/someone/layerq_nb/blob/main/notebooks/00_tour.ipynb"
    assert colab.colab_url("00_tour.ipynb", REPO + ".git") == colab.colab_url("00_tour.ipynb", REPO)
    for bad in ("someone/layerq_nb", "https://gitlab.com/a/b", "https://github.com/a"):
        with pytest.raises(ValueError, match="https://github.com/OWNER/NAME"):
            colab.colab_url("00_tour.ipynb", bad)


def test_set_repository_rewrites_links_and_cells(tmp_path):
    for name in ("README.md", "layerq_nb/colab.py", *(f"notebooks/{p.name}" for p in NOTEBOOKS)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    with pytest.raises(ValueError):
        colab.set_repository("not a url", tmp_path)
    changed = colab.set_repository(REPO, tmp_path)
    assert tmp_path / "layerq_nb" / "colab.py" in changed and len(changed) >= 1 + len(NOTEBOOKS)
    assert f'REPOSITORY = "{REPO}"' in (tmp_path / "layerq_nb" / "colab.py").read_text()
    for path in NOTEBOOKS:
        text = (tmp_path / "notebooks" / path.name).read_text()
        assert colab.colab_url(path.name, REPO) in text and "github/OWNER/" not in text
        cell = _colab_cell(tmp_path / "notebooks" / path.name)
        assert cell == colab.first_cell(REPO)
    assert "github/OWNER/" not in (tmp_path / "README.md").read_text()
