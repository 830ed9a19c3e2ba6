"""Cost of per-example LayerIF influences as a ratio to a plain forward+backward over the same blocks.

    python benchmarks/bench_influence.py [--blocks 8] [--block-size 256] [--repeats 2]

Target (DESIGN.md section 9): the per-example influences of all N training blocks <= 2.5x a
forward+backward over them. Timed apart: the per-example pass (one hooked pass; one extra matmul per
module, b_t^T V a_t) and the whole `layer_influence` (K-FAC fit on the training blocks, the validation
gradient, eigendecompositions, the per-example pass). Writes benchmarks/results/influence.jsonl.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from bench_scoring import plain_forward_backward, timed

from layerq_nb import layers, load_model, load_task
from layerq_nb.influence import InnerProducts, layer_influence
from layerq_nb.tape import run_tape


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    device = next(model.parameters()).device
    train = load_task("prose", tok, split="train", n_blocks=args.blocks, block_size=args.block_size)
    val = load_task("prose", tok, split="validation", n_blocks=4, block_size=args.block_size)
    vectors = {(layer.index, n): torch.randn(m.weight.shape, device=device)     # any V costs the same
               for layer in layers(model) for n, m in layer.linears.items()}
    plain_forward_backward(model, train.subset([0]), 4, False)                       # warm-up
    best = {}
    for _ in range(args.repeats):
        for name, fn in [("plain", lambda: plain_forward_backward(model, train, 4, False)),
                         ("per_example", lambda: run_tape(model, train, [InnerProducts(vectors, list(range(len(train))), len(train))],
                                                          reduction="block_mean", progress=False))]:
            seconds, _ = timed(fn, device)
            best[name] = min(best.get(name, float("inf")), seconds)
    full, _ = timed(lambda: layer_influence(model, train, val, curvature="kfac", progress=False), device)
    row = dict(device=str(device), cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
               blocks=args.blocks, block_size=args.block_size, plain_s=best["plain"],
               per_example_s=best["per_example"], per_example_ratio=best["per_example"] / best["plain"],
               layer_influence_s=full, layer_influence_ratio=full / best["plain"])
    print(json.dumps(row, indent=1))
    with (Path(__file__).parent / "results" / "influence.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
