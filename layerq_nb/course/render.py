"""A rendered copy of the tutorials: executed, with their outputs, figures and math, as static HTML pages
that open offline.

`render(out)` runs each tutorial top to bottom in a fresh kernel (FAST mode unless `fast=False`, the
exercises blank, as a learner first meets them, and `LAYERQ_NO_SOLUTIONS=1`, so no solution can reach a
public page), keeps the executed notebook (``out/notebooks/``) and converts it with nbconvert's lab
template to ``out/NN_name.html``; ``out/index.html`` links them. Math is typeset in the browser by MathJax
2.7 served from ``out/mathjax/`` (copied from jupyter-server-mathjax), so the pages need no network.
Interactive widgets cannot run in a static page: each is replaced by a one-line note.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .editions import tutorial_paths

__all__ = ["Site", "render", "MATHJAX_CONFIG"]

MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"     # the configs jupyter-server-mathjax ships
# jupyter-server-mathjax ships the STIX-Web fonts only (as the classic notebook used them): without this,
# MathJax asks for its TeX fonts, which are not there
FONTS = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], '
         'webFont: "STIX-Web", preferredFont: null, imageFont: null}, '
         'SVG: {font: "STIX-Web"}});</script>\n')
WIDGET = "application/vnd.jupyter.widget-view+json"
PROGRESS = re.compile(r"\d+%\|")           # tqdm's text fallback: "Loading weights:  40%|####  | 108/272"
WIDGET_NOTE = ('<p class="lq-static-widget"><em>An interactive widget (a view, or hint and solution buttons) '
               'is here in JupyterLab: run the notebook to use it.</em></p>')


@dataclass(frozen=True)
class Site:
    """What `render` wrote: the folder, its pages (one per tutorial) and the mode they ran in."""
    folder: Path
    pages: tuple[Path, ...]
    fast: bool


def mathjax_folder() -> Path:
    """MathJax 2.7's files as jupyter-server-mathjax ships them (the `course` extra installs it)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise ImportError("rendering needs MathJax served locally: pip install 'layerq_nb[course]' "
                          "(jupyter-server-mathjax)") from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def static_widgets(nb) -> int:
    """Replace every widget output by a note (their state needs a widget manager from a CDN); drop the
    saved widget state. Returns how many were replaced."""
    nb.metadata.pop("widgets", None)
    count = 0
    for cell in nb.cells:
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET in data:
                if PROGRESS.search(str(data.get("text/plain", ""))):
                    continue                  # a progress bar (tqdm): nothing to show once it has finished
                output["data"] = {"text/html": WIDGET_NOTE, "text/plain": "[interactive widget]"}
                count += 1
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return count


def execute(path: Path, *, fast: bool, timeout: int):
    """Run one tutorial in a fresh kernel, in its own folder; a cell that fails stops the render."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "LAYERQ_SOLVE"}
    env.update(LAYERQ_FAST="1" if fast else "0", LAYERQ_EXERCISES="learn", LAYERQ_NO_SOLUTIONS="1")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


def page(nb, *, title: str) -> str:
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name="lab", mathjax_url=f"mathjax/MathJax.js?config={MATHJAX_CONFIG}",
                            require_js_url="", exclude_input_prompt=False)
    nb.metadata["title"] = title
    body, _ = exporter.from_notebook_node(nb)
    body = body.replace('<script src=""></script>', "")       # require.js only serves widgets, gone here
    loader = '<script src="mathjax/MathJax.js'
    if body.count(loader) != 1:
        raise RuntimeError("nbconvert's lab template no longer loads MathJax where expected")
    return body.replace(loader, FONTS + loader)


def render(out, *, notebooks=None, fast: bool = True, timeout: int = 900, tutorials: Path | None = None) -> Site:
    """Execute the tutorials (all, or those numbered in `notebooks`) and write them as HTML pages with
    their outputs into `out`; see the module docstring."""
    import nbformat
    out = Path(out)
    # everything that can be refused is refused before the first folder is made
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 (or None: no limit), got {timeout!r}")
    paths = tutorial_paths(notebooks, folder=tutorials)
    mathjax = mathjax_folder()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    if not (out / "mathjax" / "MathJax.js").is_file():
        shutil.copytree(mathjax, out / "mathjax", dirs_exist_ok=True)
    pages, rows = [], []
    for path in paths:
        started = time.perf_counter()
        nb = execute(path, fast=fast, timeout=timeout)
        seconds = time.perf_counter() - started
        nbformat.write(nb, out / "notebooks" / path.name)
        static_widgets(nb)
        title = _title(nb) or path.stem
        target = out / f"{path.stem}.html"
        target.write_text(page(nb, title=title), encoding="utf-8")
        pages.append(target)
        rows.append(f'<li><a href="{target.name}">{html.escape(title)}</a> '
                    f'(ran in {seconds:.0f} s; <a href="notebooks/{path.name}">notebook with outputs</a>)</li>')
    mode = "FAST mode (LAYERQ_FAST=1: small data, the real model)" if fast else "full mode"
    (out / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>layerq_nb tutorials, rendered</title></head>"
        f"<body><h1>layerq_nb tutorials, rendered</h1><p>Executed in {mode} with blank exercises on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())} by <code>layerq course render</code>.</p>"
        f"<ul>{''.join(rows)}</ul></body></html>\n", encoding="utf-8")
    return Site(out, tuple(pages), fast)


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            first = cell.source.strip().split("\n")[0]
            return first.lstrip("# ").strip() if first.startswith("#") else ""
    return ""
