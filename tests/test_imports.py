"""Import discipline: the MDL math imports without torch (it is taught and tested without it), no core
module imports the widget stack, and `import layerq_nb` stays light. Each case runs in a fresh
interpreter in which the forbidden packages cannot be imported at all."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

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


def _run(blocked: set, code: str):
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=blocked) + code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("module", ["mdl", "scores", "reference"])
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
