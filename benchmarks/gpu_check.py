"""One prepared check for a machine with a GPU: what it runs, in order of value, within one time limit.

    python benchmarks/gpu_check.py --out DIR [--limit-s 480] [--parts ...]     # on a CUDA machine
    python benchmarks/gpu_check.py --out DIR --cpu                             # the same parts, toy size, CPU

Parts (each writes DIR/<part>.json as it goes, so a part stopped at the limit keeps what it had):

    real_model_tests   pytest -m real_model with LAYERQ_DEVICE=cuda (counts, failures, time)
    notebooks          the eight tutorials in full mode (LAYERQ_FAST=0, solutions on), time per notebook
    scoring            bench_scoring.bench at the SmolLM2-135M and Qwen2.5-0.5B shapes, fp32 and bf16
                       (+ kronfluence's factor fit when it is installed), 2,048 tokens
    memory             peak GPU memory of score() per curvature (torch.cuda.max_memory_allocated)
    allocation         allocation_compare.py: uniform vs MDL(zeta^2) vs MDL(LayerIF) LoRA ranks,
                       200 steps, 3 seeds, arithmetic and code

Every part runs in its own process with what is left of the time limit (default 8 minutes); at the
limit the running part is stopped (its process group killed), the parts after it are marked not
started, and DIR/summary.json lists every part's status. `--cpu` runs every part at toy size on the CPU
(a random tiny Llama, a one-cell notebook, a fast test file) in seconds, so CI keeps this script working.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("real_model_tests", "notebooks", "scoring", "memory", "allocation")
MIN_START_S = 5          # a part is not started with less time than this left


def save(out: Path, part: str, data: dict):
    """Write DIR/<part>.json atomically: a reader (or a kill) never sees half a file."""
    tmp = out / f".{part}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(out / f"{part}.json")


def _env(cfg, **extra) -> dict:
    env = {**os.environ, "LAYERQ_DEVICE": cfg["device"], "PYTHONUNBUFFERED": "1", **extra}
    return env


def _run(cmd, env, timeout, cwd=ROOT) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return dict(rc=proc.returncode, seconds=round(time.perf_counter() - t0, 2),
                tail=(proc.stdout + proc.stderr)[-3000:])


# ----------------------------------------------------------------------------- the parts

def part_real_model_tests(cfg, out, record):
    import xml.etree.ElementTree as ET
    junit = out / "real_model_tests.xml"
    if cfg["cpu"]:   # the same pytest plumbing on one fast file
        target = ["tests/test_device.py", "-k", "cpu_policy"]
    else:
        target = ["tests", "-m", "real_model"]
    cmd = [sys.executable, "-m", "pytest", *target, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    record.update(command=" ".join(cmd), device=cfg["device"])
    record.update(_run(cmd, _env(cfg), timeout=None))
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        record.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        record["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                            if c.find("failure") is not None or c.find("error") is not None]
    return record["rc"] == 0


def _toy_notebook(folder: Path) -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nFAST = os.environ.get('LAYERQ_FAST', '0') == '1'"),
                nbformat.v4.new_code_cell("from layerq_nb.device import dtype_policy\nprint(dtype_policy())")]
    path = folder / "00_toy.ipynb"
    nbformat.write(nb, path)
    return path


def part_notebooks(cfg, out, record):
    folder = Path(tempfile.mkdtemp(prefix="gpu_check_nb_"))
    paths = [_toy_notebook(folder)] if cfg["cpu"] else sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    record.update(device=cfg["device"], fast=False, solutions=True, notebooks=[])
    ok = True
    for path in paths:
        cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "notebook",
               "--ExecutePreprocessor.timeout=-1", f"--output-dir={folder}", str(path)]
        res = _run(cmd, _env(cfg, LAYERQ_FAST="0", LAYERQ_SOLVE="1", MPLBACKEND="Agg"), timeout=None,
                   cwd=path.parent)
        record["notebooks"].append(dict(notebook=path.name, **res))
        ok &= res["rc"] == 0
        save(out, "notebooks", record)
    return ok


def _scoring_setups(cfg):
    """(label, model factory, blocks, batch size, with kronfluence) for the scoring and memory parts."""
    import bench_scoring as bs

    from layerq_nb import load_model, load_task
    from layerq_nb.device import dtype_policy, resolve_device
    dev = resolve_device(cfg["device"])
    if cfg["cpu"]:
        model, tok = load_model("tiny-llama", device=dev)
        blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=32)
        return dev, [("tiny-llama (random)", lambda: model, blocks, 2)]
    model, tok = load_model("smollm2-135m", device=dev)
    blocks = load_task("prose", tok, split="train", n_blocks=8, block_size=256)      # 2,048 tokens
    batch = dtype_policy(dev).batch_size
    return dev, [("SmolLM2-135M", lambda: model, blocks, batch),
                 ("Qwen2.5-0.5B shape (random)", lambda: bs.qwen_shaped().to(dev), blocks, batch)]


def part_scoring(cfg, out, record):
    import importlib.util

    import bench_scoring as bs
    dev, setups = _scoring_setups(cfg)
    repeats = 1 if cfg["cpu"] else 3
    kron = not cfg["cpu"] and importlib.util.find_spec("kronfluence") is not None
    record.update(device=str(dev), kronfluence=kron, rows=[])
    for autocast in (False, True):
        for name, make, blocks, batch in setups:
            model = make()
            row = bs.bench(name, model, blocks, batch, autocast, with_eigh=True, repeats=repeats)
            if kron and not autocast:
                row.update({f"kf_{k}_s": v for k, v in bs.kronfluence_fit(model, blocks, batch, repeats=repeats).items()})
            record["rows"].append(row)
            record["table"] = bs.table(record["rows"])
            save(out, "scoring", record)
            del model
    return True


def part_memory(cfg, out, record):
    import resource

    import torch

    from layerq_nb import score
    dev, setups = _scoring_setups(cfg)
    cuda = dev.type == "cuda"
    record.update(device=str(dev), measure="torch.cuda.max_memory_allocated" if cuda else
                  "process peak RSS (ru_maxrss; the CPU smoke has no GPU counter)", rows=[])
    for name, make, blocks, batch in setups:
        model = make()
        for curvature in ("identity", "diag", "kfac", "ekfac"):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            score(model, blocks, curvature=curvature, batch_size=batch, progress=False)
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            record["rows"].append(dict(model=name, curvature=curvature, tokens=int(blocks.attention_mask.sum()),
                                       batch_size=batch, peak_gib=round(peak / 2**30, 3),
                                       seconds=round(time.perf_counter() - t0, 2)))
            save(out, "memory", record)
        del model
    return True


def part_allocation(cfg, out, record):
    script = ROOT / "benchmarks" / "allocation_compare.py"
    jsonl = out / "allocation.jsonl"
    if cfg["cpu"]:
        if "--model" not in script.read_text():
            record.update(status="not run: allocation_compare.py has no --model option for a toy model")
            return True
        args = ["--model", "tiny-llama", "--tasks", "arithmetic", "--seeds", "0", "--steps", "1", "--block-size", "16"]
    else:
        args = ["--tasks", "arithmetic", "code", "--seeds", "0", "1", "2", "--steps", "200"]
    cmd = [sys.executable, str(script), *args, "--out", str(jsonl)]
    record.update(command=" ".join(cmd), device=cfg["device"])
    record.update(_run(cmd, _env(cfg), timeout=None))
    if jsonl.exists():
        record["rows"] = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    return record["rc"] == 0


RUNNERS = {"real_model_tests": part_real_model_tests, "notebooks": part_notebooks, "scoring": part_scoring,
           "memory": part_memory, "allocation": part_allocation}


def run_one(part: str, cfg: dict, out: Path) -> int:
    """Inside the part's own process: run it, record the outcome in DIR/<part>.json."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    record = dict(part=part, cpu_smoke=cfg["cpu"], status="running")
    save(out, part, record)
    t0 = time.perf_counter()
    try:
        ok = RUNNERS[part](cfg, out, record)
        if record["status"] == "running":       # a part may have set its own ("not run: ...")
            record["status"] = "done" if ok else "failed"
    except Exception as err:            # the summary says what broke; the next part still runs
        import traceback
        record.update(status="error", error=repr(err), traceback=traceback.format_exc()[-3000:])
    record["part_seconds"] = round(time.perf_counter() - t0, 2)
    save(out, part, record)
    return 0 if record["status"] in ("done",) or record["status"].startswith("not run") else 1


def run_with_limit(cmd, timeout: float, part_file: Path) -> dict:
    """Run one part's process; at `timeout` kill its whole process group (pytest, kernels, ...) and keep
    the part's JSON as far as it got, marked as stopped."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        proc.wait(timeout=max(timeout, 0))
        stopped = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stopped = True
    record = json.loads(part_file.read_text()) if part_file.exists() else {}
    if stopped:
        record["status"] = "stopped at the time limit"
        part_file.write_text(json.dumps(record, indent=1, default=str))
    return dict(status=record.get("status", f"no output (exit {proc.returncode})"), rc=proc.returncode,
                seconds=round(time.perf_counter() - t0, 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for <part>.json and summary.json")
    parser.add_argument("--cpu", action="store_true", help="smoke mode: every part at toy size on the CPU")
    parser.add_argument("--limit-s", type=float, default=480.0, help="global time limit in seconds (default 8 min)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--run-part", choices=PARTS, help=argparse.SUPPRESS)     # internal: one part, this process
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(cpu=args.cpu, device="cpu" if args.cpu else "cuda")
    if args.run_part:
        return run_one(args.run_part, cfg, out)
    if not args.cpu:
        import torch
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or pass --cpu for the toy-size smoke run")
    deadline = time.monotonic() + args.limit_s
    summary = dict(cpu_smoke=args.cpu, limit_s=args.limit_s, parts={})
    for part in args.parts:
        left = deadline - time.monotonic()
        if left < MIN_START_S:
            summary["parts"][part] = dict(status="not started: time limit reached")
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--run-part", part, "--out", str(out)]
            summary["parts"][part] = run_with_limit(cmd + (["--cpu"] if args.cpu else []), left, out / f"{part}.json")
        print(f"{part:>18}: {summary['parts'][part]['status']}", flush=True)
        save(out, "summary", summary)
    bad = [p for p, s in summary["parts"].items() if s["status"] not in ("done",) and not s["status"].startswith("not run")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
