"""Figure of benchmarks/layer_quality.py's results: per task, the leave-one-out (cornerstone) curve and
every method's q per layer.

    python benchmarks/plot_quality.py [--tasks prose arithmetic]      -> results/quality.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

from layerq_nb.scores import LayerScores

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ["zeta2_kfac", "grad_norm", "layerif", "shapley", "shortgpt_bi", "owl_lod", "alpha_hill"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["prose", "arithmetic"])
    args = parser.parse_args()
    fig, axes = plt.subplots(2, len(args.tasks), figsize=(6 * len(args.tasks), 6), squeeze=False)
    for col, task in enumerate(args.tasks):
        loo = LayerScores.load(RESULTS / f"quality_{task}_leave_one_out.json")
        meta = loo.metadata
        ax = axes[0, col]
        ax.bar(np.arange(len(loo)), loo.values, color="tab:red", alpha=0.7)
        ax.axhline(0.5 * (meta["chance_loss"] - meta["full_loss"]), ls=":", color="k", label="half-way to chance")
        ax.set_title(f"{task}: loss increase when one layer is dropped")
        ax.set_ylabel("nats")
        ax.legend()
        ax = axes[1, col]
        for name in METHODS:
            path = RESULTS / f"quality_{task}_{name}.json"
            if path.exists():
                s = LayerScores.load(path)
                ax.plot(np.arange(len(s)), s.q, marker=".", label=name)
        ax.set_xlabel("layer")
        ax.set_ylabel("q (share of the score)")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "quality.png", dpi=100)


if __name__ == "__main__":
    main()
