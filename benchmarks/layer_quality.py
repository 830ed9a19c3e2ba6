"""Every layer-quality method on the real SmolLM2-135M for one or more tasks: LayerIF, Shapley,
zeta^2, grad-norm, ShortGPT, OWL, AlphaPruning, leave-one-out; the cornerstone layers and a
rank-correlation table.

    python benchmarks/layer_quality.py [--tasks prose arithmetic] [--train 8] [--val 4] [--shapley-budget 600]

Writes benchmarks/results/quality_<task>_<method>.json (LayerScores) and quality_<task>.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from layerq_nb import baselines, load_model, load_task, score
from layerq_nb.ablation import cornerstone, layer_shapley
from layerq_nb.influence import layer_influence
from layerq_nb.scores import rank_table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["prose", "arithmetic"])
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--shapley-budget", type=int, default=600)
    parser.add_argument("--shapley-tokens", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out, e.g. zeta2_ekfac")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    for task in args.tasks:
        train = load_task(task, tok, split="train", n_blocks=args.train, block_size=args.block_size)
        val = load_task(task, tok, split="validation", n_blocks=args.val, block_size=args.block_size)
        small = load_task(task, tok, split="validation", n_blocks=2, block_size=args.shapley_tokens)
        timings, results = {}, {}

        def timed(name, fn):
            if name in args.skip:
                return
            start = time.perf_counter()
            results[name] = fn()
            timings[name] = time.perf_counter() - start
            print(f"{task}: {name} in {timings[name]:.0f} s", flush=True)

        timed("zeta2_kfac", lambda: score(model, train, curvature="kfac", progress=False))
        timed("zeta2_ekfac", lambda: score(model, train, curvature="ekfac", progress=False))
        timed("grad_norm", lambda: score(model, train, method="grad_norm", progress=False))
        timed("layerif", lambda: layer_influence(model, train, val, curvature="kfac", progress=False).scores("positive"))
        timed("shapley", lambda: layer_shapley(model, small, method="antithetic", budget=args.shapley_budget,
                                               progress=False)[1])
        timed("cornerstone", lambda: cornerstone(model, small))
        timed("shortgpt_bi", lambda: baselines.block_influence(model, val))
        timed("owl_lod", lambda: baselines.outlier_ratio(model, val))
        timed("alpha_hill", lambda: baselines.heavy_tail_alpha(model))
        corner = results.pop("cornerstone")
        results["leave_one_out"] = corner.scores()
        for name, s in results.items():
            s.save(out / f"quality_{task}_{name}.json")
        lines = [f"# Layer quality on `{task}` (SmolLM2-135M-Instruct, {args.train} train / {args.val} "
                 f"validation blocks of {args.block_size} tokens; Shapley and leave-one-out on 2 blocks of "
                 f"{args.shapley_tokens})", ""]
        lines += ["| method | seconds | top 5 layers (q) |", "|---|---|---|"]
        for name, s in results.items():
            top = ", ".join(f"{n.split('.')[-1]} ({q:.2f})" for n, q in s.top(5))
            lines.append(f"| {name} | {timings.get(name, timings['cornerstone']):.0f} | {top} |")
        lines += ["", f"Full-model loss {corner.full_loss:.3f}, chance {corner.chance_loss:.2f}, no layers "
                  f"{corner.empty_loss:.1f}. Cornerstones (drop >= half-way to chance): {corner.cornerstones()}.",
                  "Leave-one-out loss increase per layer: " + ", ".join(f"{d:.2f}" for d in corner.drop), "",
                  "Spearman rank correlations:", "", rank_table(list(results.values()))]
        shap = results["shapley"]
        lines += ["", f"Shapley: {shap.metadata['evaluations']} evaluations, efficiency gap "
                  f"{float(np.sum(shap.values) - (shap.metadata['v_full'] - shap.metadata['v_empty'])):.2e}, "
                  f"median standard error {np.median(shap.metadata['stderr']):.3f} nats."]
        (out / f"quality_{task}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
