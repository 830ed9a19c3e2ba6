"""Held-out perplexity of SmolLM2-135M pruned at several sparsities: {magnitude, Wanda, SparseGPT} x
{uniform, OWL, AlphaPruning, LayerIF, MDL(zeta^2), MDL(LayerIF)} and the reverse of the MDL map.

    python benchmarks/prune_sweep.py [--task prose] [--calibration 8] [--eval 16] [--sparsities 0.5 0.6 0.7]

Calibration: `--calibration` train blocks of 256 tokens (also the zeta^2 / LayerIF / OWL data; LayerIF's
validation set is 4 validation blocks); evaluation: `--eval` test blocks. Writes
benchmarks/results/prune_<task>.jsonl, prune_<task>.md (table) and prune_<task>.png (plot).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from layerq_nb import load_model, load_task
from layerq_nb.pruning import map_functions, plot_sweep, prune_sweep

SPECS = ["uniform", "owl", "alphapruning", "layerif", "mdl-zeta2", "mdl-layerif", "mdl-zeta2-reverse"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="prose")
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--epsilon", type=float, default=0.2, help="AlphaPruning / LayerIF linear map width")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    calibration = load_task(args.task, tok, split="train", n_blocks=args.calibration, block_size=256)
    validation = load_task(args.task, tok, split="validation", n_blocks=4, block_size=256)
    evaluation = load_task(args.task, tok, split="test", n_blocks=args.eval, block_size=256)
    start = time.perf_counter()
    maps = map_functions(model, calibration, validation, SPECS, epsilon=args.epsilon, progress=False)
    print(f"scores for the maps in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    rows = prune_sweep(model, calibration, evaluation, maps, methods=args.methods, sparsities=args.sparsities)
    print(f"sweep in {time.perf_counter() - start:.0f} s", flush=True)
    out = Path(__file__).parent / "results"
    with (out / f"prune_{args.task}.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    dense = rows[0]["perplexity"]
    lines = [f"Held-out `{args.task}` perplexity of SmolLM2-135M-Instruct ({args.eval} test blocks x 256 tokens; "
             f"dense {dense:.2f}); calibration {args.calibration} train blocks; AlphaPruning/LayerIF epsilon "
             f"{args.epsilon}, OWL lambda 0.08, MDL band 0.1.", "",
             "| method | sparsity | " + " | ".join(SPECS) + " |", "|---" * (len(SPECS) + 2) + "|"]
    for method in args.methods:
        for s in args.sparsities:
            cells = []
            for spec in SPECS:
                ppl = next(r["perplexity"] for r in rows if r["method"] == method and r["map"] == spec and r["sparsity"] == s)
                cells.append(f"{ppl:.1f}")
            best = int(np.nanargmin([float(c) for c in cells]))
            cells[best] = f"**{cells[best]}**"
            lines.append(f"| {method} | {s:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "Per-layer sparsity of each map at the highest sparsity (layers 0..29):", ""]
    top = max(args.sparsities)
    for spec in SPECS:
        r = next(r for r in rows if r["map"] == spec and r["sparsity"] == top)
        if "per_layer" not in r:
            lines.append(f"- {spec}: {r['error']}")
            continue
        lines.append(f"- {spec}: " + " ".join(f"{x:.2f}" for x in r["per_layer"]))
    (out / f"prune_{args.task}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    axes = plot_sweep(rows)
    axes[0].figure.tight_layout()
    axes[0].figure.savefig(out / f"prune_{args.task}.png", dpi=110)


if __name__ == "__main__":
    main()
