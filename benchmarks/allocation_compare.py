"""Equal-budget comparison of allocations on SmolLM2-135M: LoRA ranks (uniform vs MDL(zeta^2) vs
MDL(LayerIF)) and LoRA-MoE expert counts (uniform vs MoLA vs MDL(zeta^2)), held-out loss after a short
fine-tuning run, several seeds.

    python benchmarks/allocation_compare.py [--tasks arithmetic code] [--seeds 0 1 2] [--steps 20]

Writes benchmarks/results/allocation_<tasks>_<steps>steps.jsonl and prints a markdown table (mean +- std over seeds of the
validation loss after training, and the trainable parameters of each configuration).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from layerq_nb import load_model, load_task, score
from layerq_nb.adapt import apply_lora_moe, expert_counts, finetune, lora_config, lora_rank_pattern, rank_costs
from layerq_nb.influence import layer_influence


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", help="short name (tiny-llama: a smoke run)")
    parser.add_argument("--tasks", nargs="+", default=["arithmetic", "code"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=2, help="uniform LoRA rank that sets the budget")
    parser.add_argument("--min-rank", type=int, default=1,
                        help="smallest LoRA rank per layer (0 lets an allocation leave a layer out: placement matters)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--kinds", nargs="+", default=["lora", "lora-moe"], choices=["lora", "lora-moe"],
                        help="which adapters to compare (lora: ranks; lora-moe: expert counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON lines file (default: results/allocation_<tasks>_<steps>steps.jsonl)")
    args = parser.parse_args()
    import torch
    from peft import get_peft_model
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"allocation_{'_'.join(args.tasks)}_{args.steps}steps.jsonl")
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    sink = out.open("w")            # a row per run as it finishes: a long run stopped early keeps its rows

    def record(row):
        rows.append(row)
        sink.write(json.dumps(row) + "\n")
        sink.flush()
    for task in args.tasks:
        model, tok = load_model(args.model)
        train = load_task(task, tok, split="train", n_blocks=64, block_size=args.block_size)
        val = load_task(task, tok, split="validation", n_blocks=8, block_size=args.block_size)
        probe = train.subset(range(8))
        zeta = score(model, probe, curvature="kfac", progress=False)
        layerif = layer_influence(model, probe, val.subset(range(4)), progress=False).scores("positive")
        budget = int(args.rank * rank_costs(model).sum())
        lora = {"uniform": lora_rank_pattern(model, "uniform", budget, min_rank=args.min_rank),
                "mdl-zeta2": lora_rank_pattern(model, zeta, budget, min_rank=args.min_rank),
                "mdl-layerif": lora_rank_pattern(model, layerif, budget, min_rank=args.min_rank)}
        n_layers = len(zeta)
        experts = {"uniform": expert_counts(2 * n_layers, n_layers, "uniform"),
                   "mola": expert_counts(2 * n_layers, n_layers, "mola"),
                   "mdl-zeta2": expert_counts(2 * n_layers, n_layers, zeta)}
        for seed in args.seeds:
            for name, alloc in (lora.items() if "lora" in args.kinds else ()):
                # peft draws the LoRA initialisation from the global RNG: seed it per run, so that the
                # allocations of one seed start from the same draws (batches and dropout already do)
                torch.manual_seed(seed)
                peft_model = get_peft_model(model, lora_config(alloc))
                res = finetune(peft_model, train, val, steps=args.steps, lr=args.lr, seed=seed, progress=False)
                model = peft_model.unload()
                record(dict(task=task, kind="lora", allocation=name, seed=seed, trainable=res.trainable,
                           val_before=res.val_loss_before, val_after=res.val_loss_after, seconds=res.seconds,
                           ranks=alloc.ranks.tolist()))
                print(rows[-1]["task"], "lora", name, seed, f"{res.val_loss_after:.4f}", f"{res.seconds:.0f} s", flush=True)
            for name, counts in (experts.items() if "lora-moe" in args.kinds else ()):
                moe = apply_lora_moe(model, counts, rank=4, target_modules=("q_proj", "v_proj"))
                res = finetune(model, train, val, steps=args.steps, lr=args.lr, seed=seed, aux=moe, progress=False)
                moe.remove()
                record(dict(task=task, kind="lora-moe", allocation=name, seed=seed, trainable=res.trainable,
                           val_before=res.val_loss_before, val_after=res.val_loss_after,
                           experts=counts.tolist()))
                print(rows[-1]["task"], "moe", name, seed, f"{res.val_loss_after:.4f}", flush=True)
    sink.close()
    print(f"\n{args.steps} steps, lr {args.lr}, seeds {args.seeds}; validation loss after training "
          "(mean +- std over seeds; 'vs uniform': mean +- std of the per-seed difference)\n")
    print("| task | adapter | allocation | trainable | val loss before | val loss after | vs uniform (paired) |\n"
          "|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for kind in ("lora", "lora-moe"):
            for name in dict.fromkeys(r["allocation"] for r in rows if r["kind"] == kind):
                sel = [r for r in rows if r["task"] == task and r["kind"] == kind and r["allocation"] == name]
                if not sel:
                    continue
                after = np.array([r["val_after"] for r in sel])
                base = {r["seed"]: r["val_after"] for r in rows
                        if r["task"] == task and r["kind"] == kind and r["allocation"] == "uniform"}
                diff = np.array([r["val_after"] - base[r["seed"]] for r in sel if r["seed"] in base])
                paired = (f"{diff.mean():+.4f} +- {diff.std(ddof=1) if len(diff) > 1 else 0:.4f}"
                          if len(diff) and name != "uniform" else "-")
                print(f"| {task} | {kind} | {name} | {sel[0]['trainable']:,} | {sel[0]['val_before']:.4f} | "
                      f"{after.mean():.4f} +- {after.std(ddof=1) if len(after) > 1 else 0:.4f} | {paired} |")


if __name__ == "__main__":
    main()
