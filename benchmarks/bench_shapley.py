"""Accuracy per value evaluation of the Shapley estimators, against exact enumeration.

    python benchmarks/bench_shapley.py [--real] [--repeats 30]

Games: a synthetic layer-like game (a cornerstone player, additive parts, a 3-way interaction, noise;
K = 10) and, with --real, SmolLM2-135M's layer game restricted to 10 layers (the other 20 stay on;
v(S) = -min(NLL, log V) on one 128-token block; all 1024 coalitions evaluated once, then every
estimator samples from that table). For each method and budget: the RMSE against the exact values
over `repeats` seeds, and the budget each method needs to match plain permutation sampling's RMSE.
Writes benchmarks/results/shapley.jsonl and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from layerq_nb import shapley

METHODS = ["permutation", "antithetic", "stratified", "kernel", "truncated"]
BUDGETS = [100, 200, 400, 800]


def synthetic_table(k=10, seed=0):
    rng = np.random.default_rng(seed)
    bits = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1).astype(float)
    value = bits @ rng.uniform(0, 1, k) + 2 * bits[:, 1] * bits[:, 2] * bits[:, 3] - 1.5 * bits[:, 4] * bits[:, 5]
    return np.where(bits[:, 0] > 0, value, 0.0) + 0.05 * rng.normal(size=2**k)


def real_table(players):
    from layerq_nb import load_model, load_task
    from layerq_nb.ablation import coalition_losses
    model, tok = load_model("smollm2-135m")
    blocks = load_task("prose", tok, split="validation", n_blocks=1, block_size=128)
    k, n_layers = len(players), model.config.num_hidden_layers
    masks = np.arange(2**k)
    coalitions = np.ones((2**k, n_layers), bool)
    coalitions[:, players] = ((masks[:, None] >> np.arange(k)) & 1).astype(bool)
    start = time.perf_counter()
    losses = coalition_losses(model, blocks, coalitions, max_rows=8)
    print(f"real game: {2**k} coalitions in {time.perf_counter() - start:.0f} s", flush=True)
    return -np.minimum(losses, np.log(model.get_output_embeddings().weight.shape[0]))


def run(name, table, repeats):
    k = int(np.log2(table.size))
    game = lambda rows: table[rows.astype(int) @ (1 << np.arange(k))]
    exact = shapley.exact_from_table(table)
    rows = []
    for method in METHODS:
        for budget in BUDGETS:
            errs, evals = [], []
            for seed in range(repeats):
                est = shapley.estimate(game, k, method, budget=budget, seed=seed)
                errs.append(np.sqrt(np.mean((est.values - exact) ** 2)))
                evals.append(est.evaluations)
            rows.append(dict(game=name, method=method, budget=budget, evaluations=float(np.mean(evals)),
                             rmse=float(np.mean(errs)), scale=float(np.abs(exact).mean())))
    return rows


def needed(rows, method, target):
    """Evaluations `method` needs for RMSE `target` (log-log interpolation between budgets)."""
    pts = sorted((r["evaluations"], r["rmse"]) for r in rows if r["method"] == method)
    for (e0, r0), (e1, r1) in zip(pts, pts[1:]):
        if r1 <= target <= r0:
            t = (np.log(r0) - np.log(target)) / (np.log(r0) - np.log(r1))
            return float(np.exp(np.log(e0) + t * (np.log(e1) - np.log(e0))))
    return pts[0][0] if target >= pts[0][1] else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    games = {"synthetic K=10": synthetic_table()}
    if args.real:
        games["SmolLM2 layers 0,3,..,27"] = real_table(list(range(0, 30, 3)))
    out = Path(__file__).parent / "results" / "shapley.jsonl"
    all_rows = []
    for name, table in games.items():
        rows = run(name, table, args.repeats)
        all_rows += rows
        target = next(r["rmse"] for r in rows if r["method"] == "permutation" and r["budget"] == 800)
        print(f"\n### {name} (mean |phi| {rows[0]['scale']:.3f}; RMSE over {args.repeats} seeds)\n")
        print("| method | " + " | ".join(f"RMSE @ {b}" for b in BUDGETS) + " | evaluations to match permutation @ 800 |")
        print("|---" * (len(BUDGETS) + 2) + "|")
        for method in METHODS:
            errs = [f"{r['rmse']:.4f}" for r in rows if r["method"] == method]
            print(f"| {method} | " + " | ".join(errs) + f" | {needed(rows, method, target):.0f} |")
    with out.open("a") as f:
        for r in all_rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
