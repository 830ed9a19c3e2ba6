"""Peak memory of each tutorial in FAST mode, kernel included: the number a Binder or JupyterHub limit sees.

    python benchmarks/notebook_memory.py [--notebooks 00 04] [--mode learn|blank|solve] [--per-cell]

Each notebook runs in a fresh `jupyter nbconvert --execute`, in the environment `binder/start` sets, under GNU time (`/usr/bin/time -f %M`), whose
maximum resident set size covers the largest process of the tree it waits for (the kernel, here). Writes
benchmarks/results/notebook_memory.jsonl and prints a markdown table. Target (issue 20): <= 1.8 GB, the
lower end of the 1-2 GB a public Binder guarantees.

`--per-cell` finds where a peak (or the time) comes from: it runs the notebook with nbclient and, after each cell, reads
the kernel's high-water mark (VmHWM in /proc/PID/status) and resets it (writing 5 to /proc/PID/clear_refs),
so each cell's number is the peak reached while it ran. Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINDER_LIMIT_GB = 1.8


def binder_environment() -> dict:
    """os.environ plus what `binder/start` exports (FAST mode, glibc's malloc thresholds): Binder runs every
    kernel under that file, so the measurement does too."""
    dump = subprocess.run(["bash", str(ROOT / "binder" / "start"), "env", "-0"], capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in dump.decode().split("\0") if "=" in item)


def measure(notebook: Path, *, mode: str, timeout: int) -> dict:
    """Run one notebook in FAST mode in a fresh kernel; peak RSS in GB (10^9 bytes) and wall seconds."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    if not Path(time_bin).exists():
        raise SystemExit("GNU time is missing: apt-get install time")
    env = dict(binder_environment(), LAYERQ_FAST="1", LAYERQ_EXERCISES=mode, MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run = subprocess.run(
            [time_bin, "-f", "%M", sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "notebook",
             f"--ExecutePreprocessor.timeout={timeout}", "--output-dir", out, str(notebook)],
            cwd=notebook.parent, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"{notebook.name} failed:\n{run.stderr[-3000:]}")
    peak_kib = int(run.stderr.strip().splitlines()[-1])     # %M is the last line GNU time writes
    return dict(notebook=notebook.name, mode=mode, peak_gb=round(peak_kib * 1024 / 1e9, 3),
                seconds=round(seconds, 1))


def _kernel_peak_kib(pid: int, *, reset: bool) -> int:
    """VmHWM of process `pid` in KiB; reset=True then starts a new high-water mark at the current RSS."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak


def per_cell(notebook: Path, *, mode: str, timeout: int) -> list[dict]:
    """Peak RSS of the kernel while each code cell ran (GB), in FAST mode, printed cell by cell."""
    import nbformat
    from nbclient import NotebookClient
    os.environ.update(binder_environment(), LAYERQ_FAST="1", LAYERQ_EXERCISES=mode, MPLBACKEND="Agg")
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(notebook.parent)}})
    rows = []
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            _kernel_peak_kib(pid, reset=True)
            t0 = time.perf_counter()
            client.execute_cell(cell, index)
            seconds = time.perf_counter() - t0
            first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
            rows.append(dict(notebook=notebook.name, cell=index, peak_gb=round(_kernel_peak_kib(pid, reset=False) * 1024 / 1e9, 3),
                             seconds=round(seconds, 1), source=first[:70]))
    for row in rows:
        print(f"{row['notebook']} cell {row['cell']:>2}: {row['peak_gb']:.2f} GB {row['seconds']:6.1f} s  {row['source']}",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="*", default=None, help="two-digit numbers, e.g. 00 04 (default: all)")
    parser.add_argument("--mode", default="learn", choices=["learn", "blank", "solve"],
                        help="exercise mode: learn is what a student runs")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--per-cell", action="store_true", help="the kernel's peak while each cell ran")
    args = parser.parse_args(argv)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.notebooks:
        notebooks = [nb for nb in notebooks if nb.name[:2] in set(args.notebooks)]
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    if args.per_cell:
        for nb in notebooks:
            per_cell(nb, mode=args.mode, timeout=args.timeout)
        return 0
    rows = []
    for nb in notebooks:
        row = measure(nb, mode=args.mode, timeout=args.timeout)
        rows.append(row)
        print(f"{row['notebook']}: {row['peak_gb']:.2f} GB in {row['seconds']:.0f} s", file=sys.stderr)
        with open(results / "notebook_memory.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    print(f"| notebook | peak RSS, kernel included (GB) | <= {BINDER_LIMIT_GB} GB | wall (s) |")
    print("|---|---|---|---|")
    for row in rows:
        ok = "yes" if row["peak_gb"] <= BINDER_LIMIT_GB else "**no**"
        print(f"| {row['notebook']} | {row['peak_gb']:.2f} | {ok} | {row['seconds']:.0f} |")
    return 0 if all(r["peak_gb"] <= BINDER_LIMIT_GB for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
