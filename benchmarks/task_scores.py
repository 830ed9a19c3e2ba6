"""zeta^2 layer scores of the real SmolLM2-135M on the three tasks: how much do they differ?

    python benchmarks/task_scores.py [--blocks 8] [--curvature kfac ekfac]
Prints per-task top layers, Spearman correlations and L1 distances of q between tasks, and writes the
scores to benchmarks/results/scores_<task>_<curvature>.json.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from layerq_nb import load_model, load_task, score


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--curvature", nargs="+", default=["kfac", "ekfac"])
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    for curvature in args.curvature:
        scores = {}
        for task in ("prose", "code", "arithmetic"):
            blocks = load_task(task, tok, split="train", n_blocks=args.blocks, block_size=args.block_size)
            scores[task] = score(model, blocks, curvature=curvature)
            scores[task].save(out / f"scores_{task}_{curvature}.json")
            top = ", ".join(f"{n.split('.')[-1]}:{q:.3f}" for n, q in scores[task].top(5))
            print(f"{curvature:>6} {task:<11} top layers {top}", flush=True)
        for a, b in itertools.combinations(scores, 2):
            l1 = float(np.abs(scores[a].q - scores[b].q).sum())
            print(f"{curvature:>6} {a} vs {b}: Spearman {scores[a].spearman(scores[b]):.3f}, L1(q) {l1:.3f}")


if __name__ == "__main__":
    main()
