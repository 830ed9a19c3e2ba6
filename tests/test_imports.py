"""Import discipline: the MDL math imports without torch (it is taught and tested without it), no core
module imports the widget stack, and `import layerq_nb` stays light. Each case runs in a fresh
interpreter in which the forbidden packages cannot be imported at all."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import layerq_nb

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ImportError(f"{{name}} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")

CORE = sorted(m.name for m in pkgutil.iter_modules(layerq_nb.__path__)
              if not m.name.startswith("_") and m.name not in ("ui",))
PACKAGE = Path(layerq_nb.__file__).parent
WIDGET_STACK = {"ipywidgets", "anywidget"}
# every module outside layerq_nb/ui, subpackages included (exercises, lab, course; no __main__ scripts)
ALL_CORE = sorted(m.name for m in pkgutil.walk_packages(layerq_nb.__path__, "layerq_nb.")
                  if not m.name.startswith("layerq_nb.ui") and not m.name.endswith(".__main__"))


def _run(blocked: set, code: str):
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=blocked) + code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("module", ["mdl", "scores", "reference", "pruning.maps", "regret", "regret_constants", "integer"])
def test_the_math_imports_without_torch(module):
    _run({"torch", "transformers", "ipywidgets", "anywidget"}, f"import layerq_nb.{module}")


def test_package_import_is_light():
    out = _run({"ipywidgets", "anywidget"}, "import sys, layerq_nb; print('torch' in sys.modules)")
    assert out.strip() == "False", "import layerq_nb must not import torch"


def test_core_modules_never_import_the_widget_stack():
    out = _run({"ipywidgets", "anywidget"}, textwrap.dedent(f"""
        import importlib
        for name in {CORE!r}:
            try:
                importlib.import_module("layerq_nb." + name)
            except ImportError as error:
                print(name, error)
    """))
    assert out == "", f"core modules that need the widget stack:\n{out}"
    assert {"mdl", "models", "exercises", "pruning"} <= set(CORE)


def test_every_core_module_imports_with_the_widget_stack_blocked():
    """Subpackages too (exercises.nbNN, lab, course): only a failure caused by the blocked widget stack
    counts (an optional server dependency that is missing here is another matter)."""
    out = _run(WIDGET_STACK, textwrap.dedent(f"""
        import importlib
        for name in {ALL_CORE!r}:
            try:
                importlib.import_module(name)
            except ImportError as error:
                if "blocked in this test" in str(error):
                    print(name, error)
    """))
    assert out == "", f"core modules that need the widget stack:\n{out}"
    assert {"layerq_nb.exercises.reveal", "layerq_nb.tutorials", "layerq_nb.cli"} <= set(ALL_CORE)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, at any depth (inside functions too); a
    relative import is given with its dots."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def test_no_core_module_imports_the_widget_stack_even_at_call_time():
    """Only layerq_nb/ui draws widgets: the exercises hand their buttons to layerq_nb.ui.reveal."""
    offenders = [f"{path.relative_to(PACKAGE)}:{line} imports {name}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "ui" not in path.relative_to(PACKAGE).parts[:1]
                 for line, name in _imports(path) if name.split(".")[0] in WIDGET_STACK]
    assert offenders == []


def test_the_command_line_does_not_import_the_widgets_package():
    """`layerq lab` finds the tutorials through the core module layerq_nb.tutorials, not layerq_nb.ui."""
    names = [name for _, name in _imports(PACKAGE / "cli.py")]
    assert not [n for n in names if n.lstrip(".").split(".")[0] == "ui" or n.startswith("layerq_nb.ui")], names
    from layerq_nb import tutorials
    from layerq_nb.ui import _assets
    assert (_assets.tutorial, _assets.tutorials, _assets.tutorials_folder) == (
        tutorials.tutorial, tutorials.tutorials, tutorials.tutorials_folder)
