"""Loaded by every pytest run in this repository: the tutorials run in FAST mode unless LAYERQ_FAST is
set otherwise (`LAYERQ_FAST=0 pytest --nbmake notebooks/` runs them in full), and with their exercises
blank: every check must report "not answered" and none may raise (`tests/test_notebooks_solved.py` runs
them again with the shipped solutions).

The run is split over worker processes (pytest-xdist, `-n auto` in pyproject.toml; `-n 0` runs in one
process): at most one worker per core, at most four, and one per 4 GB of memory (a worker holds the
real model and, during a tutorial, a kernel that holds it too). The cores are shared out between the
workers through OMP_NUM_THREADS, which the tutorials' kernels and every subprocess inherit: two
workers of one thread each get through the suite faster on two cores than one worker of two threads,
because most of its tensors are too small for a second thread to pay. Tests are handed out one at a
time (`--maxschedchunk 1`), slowest first, so that no worker is left with a long one at the end while
the other waits."""
import os

os.environ.setdefault("LAYERQ_FAST", "1")
os.environ.setdefault("LAYERQ_EXERCISES", "blank")
os.environ.setdefault("MPLBACKEND", "Agg")

# the learner's copies the JupyterLab extension makes when `layerq lab` serves notebooks/: theirs, not tutorials
collect_ignore_glob = ["notebooks/layerq-tutorials/*"]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                         # macOS, Windows
        return os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config):
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 << 30
    return max(1, min(_cores(), 4, memory // (4 << 30)))


def pytest_collection_modifyitems(config, items):
    """Longest first (the tutorials, then tests marked slow), in a fixed order every worker agrees on; and
    each worker's share of the cores, for it and the kernels and processes it starts."""
    def rank(item):
        if item.nodeid.startswith("notebooks/") or "tutorial_passes_with_its_solutions" in item.nodeid:
            return 0
        return 1 if item.get_closest_marker("slow") else 2
    items.sort(key=rank)
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers and items and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, _cores() // min(workers, len(items)))      # one notebook alone keeps every core
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch
        torch.set_num_threads(threads)
