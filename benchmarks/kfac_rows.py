"""K-FAC on fewer tokens than a factor is wide: factors kept as token rows (`curvature.row_eigen`) against
the (d, d) sums, on the real model at the FAST notebooks' size (4 blocks of 128 tokens).

Prints the time of one `score()` each way, and, per layer, zeta^2's relative difference from a float64
reference (factors summed in float64 and decomposed in float64) for: the rows path (default), the dense
path as it was before (float32 sums, float32 eigh where `float32_is_enough`), and the dense float32 sums
decomposed in float64.

    python benchmarks/kfac_rows.py [--blocks 4] [--block-size 128] [--threads 2] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time

import numpy as np
import torch

import layerq_nb as lq
from layerq_nb import curvature as curv
from layerq_nb import tape


class _Dense(curv._KFACEigen):
    """The fitter without rows: every factor summed as (d, d)."""

    def __init__(self, max_rows=None):
        super().__init__(None)


@contextlib.contextmanager
def _variant(rows: bool, eigh64: bool = False, sums64: bool = False):
    saved = curv._KFACEigen, curv.symmetric_eigen, tape.KFACFactors._add
    add = saved[2]
    if not rows:
        curv._KFACEigen = _Dense
    if eigh64:
        curv.symmetric_eigen = functools.partial(saved[1], dtype=torch.float64)
    if sums64:
        tape.KFACFactors._add = lambda self, key, x: add(self, key, x.double())
    try:
        yield
    finally:
        curv._KFACEigen, curv.symmetric_eigen, tape.KFACFactors._add = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = lq.load_model("smollm2-135m", device="cpu")
    train = lq.load_task("arithmetic", tok, split="train", n_blocks=args.blocks, block_size=args.block_size)

    lq.score(model, train, curvature="diag", progress=False)    # warm-up: the weights paged in, the kernels loaded

    def run(**variant):
        with _variant(**variant):
            start = time.perf_counter()
            s = lq.score(model, train, curvature="kfac", layers_per_pass=5, progress=False)
            return s.values, time.perf_counter() - start

    results = {}
    for name, variant in (("rows", dict(rows=True)), ("dense", dict(rows=False)),
                          ("dense, float64 eigh", dict(rows=False, eigh64=True)),
                          ("reference: float64 sums and eigh", dict(rows=False, eigh64=True, sums64=True))):
        values, seconds = run(**variant)
        results[name] = dict(values=values.tolist(), seconds=seconds)
        print(f"{name:34s} score() {seconds:6.1f} s", flush=True)
    ref = np.array(results["reference: float64 sums and eigh"]["values"])
    print(f"\n{train.n_targets} targets, {len(train)} x {args.block_size} tokens; zeta^2 relative to the reference:")
    for name in ("rows", "dense", "dense, float64 eigh"):
        rel = np.abs(np.array(results[name]["values"]) - ref) / np.abs(ref)
        results[name]["max_rel_diff"] = float(rel.max())
        print(f"{name:22s} worst layer {int(rel.argmax()):2d}: {rel.max():.1e}   median {np.median(rel):.1e}   "
              f"layers over 1e-3: {int((rel > 1e-3).sum())}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(blocks=args.blocks, block_size=args.block_size, threads=args.threads, **results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
