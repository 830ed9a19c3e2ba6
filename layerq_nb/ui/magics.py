"""`%load_ext layerq_nb`: the `%layerq` line magic.

  %layerq doctor             versions of the widget stack in this kernel and in the Jupyter server
  %layerq tutorials          the tutorials, with their numbers
  %layerq copy 03 [folder]   copy a tutorial next to you (to edit without touching the original)
  %layerq reset 03 [folder]  back up your copy (folder/backups/NAME-<time>.ipynb), then write a clean one
  %layerq open 03            a link that opens the tutorial in JupyterLab

In JupyterLab the same lives in the LayerQ menu, the launcher's "LayerQ tutorials" section and the
command palette (the layerq-nb extension); `LayerQ > LayerQ Health Check` shows what `doctor` prints.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import HTML, display

from ._assets import tutorial, tutorials

STACK = ("layerq_nb", "ipywidgets", "anywidget", "jupyterlab_widgets", "ipykernel", "jupyterlab", "notebook",
         "jupyter_server", "traitlets", "comm", "matplotlib", "torch", "torchvision")

FAILED_TO_LOAD = (
    'The classic "Failed to load model class \'AnyModel\' from module \'anywidget\'" (or "Error displaying widget") '
    "means the Jupyter *server* does not serve the widget front ends the kernel asks for: anywidget or ipywidgets "
    "was installed into the kernel's environment only, or after the server started. Fix: install them into the "
    "environment that runs `jupyter lab` (pip install \"layerq_nb[notebooks]\" there), restart the server, reload "
    "the page.")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _labextensions() -> dict[str, str]:
    """Front ends a server on this machine can serve: name -> version, from the labextension folders."""
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return {}
    found = {}
    for root in jupyter_path("labextensions"):
        for name in ("anywidget", "@jupyter-widgets/jupyterlab-manager", "layerq-nb"):
            package = Path(root) / name / "package.json"
            if package.is_file() and name not in found:
                found[name] = json.loads(package.read_text()).get("version", "?")
    return found


def _servers() -> list[dict]:
    try:
        from jupyter_server.serverapp import list_running_servers
        servers = list(list_running_servers())
    except Exception:
        return []
    for s in servers:
        exe = Path(f"/proc/{s.get('pid')}/exe")
        try:
            s["python"] = os.path.realpath(exe)
        except OSError:
            s["python"] = "unknown"
    return servers


def doctor_report() -> dict:
    """Everything `%layerq doctor` prints, as plain data."""
    from ..cli import torchvision_problem
    return dict(kernel_python=sys.executable, kernel=_version_table(), labextensions=_labextensions(),
                servers=[dict(url=s.get("url"), pid=s.get("pid"), python=s.get("python"), version=s.get("version"))
                         for s in _servers()],
                torch_stack=torchvision_problem())


def _version_table() -> dict[str, str]:
    return {dist: _version(dist) for dist in STACK}


def format_doctor(report: dict) -> str:
    lines = [f"kernel python   {report['kernel_python']}"]
    lines += [f"  {name:<20} {version}" for name, version in report["kernel"].items()]
    lines.append("front ends this machine's Jupyter can serve (labextensions):")
    ext = report["labextensions"]
    for name in ("anywidget", "@jupyter-widgets/jupyterlab-manager"):
        lines.append(f"  {name:<38} {ext.get(name, 'MISSING')}")
    lines.append(f"  {'layerq-nb (LayerQ menu, launcher)':<38} "
                 f"{ext.get('layerq-nb', 'MISSING: pip install layerq_nb into the server environment')}")
    for s in report["servers"]:
        lines.append(f"server {s['url']} (pid {s['pid']}, jupyter_server {s['version']}, python {s['python']})")
    if not report["servers"]:
        lines.append("no running Jupyter server found from this kernel")
    problems = []
    if "anywidget" not in ext or "@jupyter-widgets/jupyterlab-manager" not in ext:
        problems.append("a widget front end is missing from the server side")
    if ext.get("anywidget") and ext["anywidget"] != report["kernel"]["anywidget"]:
        problems.append(f"anywidget {report['kernel']['anywidget']} in the kernel but {ext['anywidget']} in the server")
    lines.append("status: " + ("; ".join(problems) + "\n" + FAILED_TO_LOAD if problems else "widget stack consistent"))
    if report.get("torch_stack"):
        lines.append("torch stack: " + report["torch_stack"])
    return "\n".join(lines)


@magics_class
class LayerqMagics(Magics):
    @line_magic
    def layerq(self, line: str):
        """%layerq doctor | tutorials | copy NN [folder] | reset NN [folder] | open NN"""
        words = line.split()
        command, args = (words[0], words[1:]) if words else ("help", [])
        if command == "doctor":
            print(format_doctor(doctor_report()))
        elif command == "tutorials":
            for key, path in tutorials().items():
                print(f"{key}  {path.stem}")
        elif command == "copy" and args:
            source = tutorial(args[0])
            target = Path(args[1] if len(args) > 1 else ".") / source.name
            if target.exists():
                raise FileExistsError(f"{target} exists: remove it or pass another folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            print(f"copied {source.name} to {target}")
            return target
        elif command == "reset" and args:
            from ..lab.tutorials import reset_copy
            folder = Path(args[1] if len(args) > 1 else ".")
            done = reset_copy(args[0], root=folder, folder=".")
            kept = f"your version is in {folder / done.backup}" if done.backup else "there was no copy to keep"
            print(f"wrote a clean {folder / done.path}; {kept}")
            return folder / done.path
        elif command == "open" and args:
            path = tutorial(args[0])
            try:
                href = "/lab/tree/" + str(path.resolve().relative_to(Path.cwd().resolve()))
            except ValueError:
                href = None
            if href is None:
                print(f"{path} is outside this server's folder: %layerq copy {args[0]} first, then open the copy")
            else:
                display(HTML(f'<a href="{href}" target="_blank">open {path.stem}</a>'))
        else:
            print(__doc__)


def load_ipython_extension(ipython):
    ipython.register_magics(LayerqMagics)
