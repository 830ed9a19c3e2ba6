"""Cost of scoring as a ratio to a plain forward+backward over the same tokens, in one run.

    python benchmarks/bench_scoring.py [--blocks 4] [--block-size 256] [--shapes smollm2 qwen]
Targets (DESIGN.md section 9): K-FAC <= 2x, EK-FAC <= 3.5x a plain forward+backward. The passes are
timed apart from the factor eigendecompositions, which are a fixed cost per model, not per token.
Writes benchmarks/results/scoring.jsonl and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from layerq_nb import curvature as curv
from layerq_nb import load_model, load_task
from layerq_nb.tape import DiagonalFisher, EKFACCorrection, GradientSum, KFACFactors, run_tape


def qwen_shaped():
    """A randomly initialised model with Qwen2.5-0.5B's shapes (24 layers, hidden 896, MLP 4864)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def plain_forward_backward(model, blocks, batch_size, autocast):
    """The baseline: transformers' loss and a full backward with weight gradients."""
    device = next(model.parameters()).device
    for batch in blocks.batches(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)


def bench(name, model, blocks, batch_size, autocast, with_eigh, repeats=3):
    """Each pass timed `repeats` times, interleaved, keeping the fastest: the machine is shared, and
    the least disturbed run is the best estimate of each pass's own cost."""
    device = next(model.parameters()).device
    tape = dict(batch_size=batch_size, progress=False, autocast=autocast)
    grads = [([GradientSum()], "data", "mean")]
    plain_forward_backward(model, blocks.subset([0]), batch_size, autocast)        # warm-up
    best: dict = {}

    def keep(name, fn):
        seconds, out = timed(fn, device)
        best[name] = min(best.get(name, float("inf")), seconds)
        return out

    factors = None
    for _ in range(repeats):
        keep("plain", lambda: plain_forward_backward(model, blocks, batch_size, autocast))
        keep("grad", lambda: run_tape(model, blocks, [GradientSum()], **tape))
        # what score() runs: one forward per batch, a sampled-label backward for the statistics and a
        # data-label backward for the gradients
        keep("diag", lambda: run_tape(model, blocks, [DiagonalFisher()], labels="sampled", reduction="sum",
                                      then=grads, **tape))
        factors = KFACFactors()
        keep("kfac", lambda: run_tape(model, blocks, [factors], labels="sampled", reduction="sum", then=grads,
                                      **tape))
    row = dict(model=name, device=str(device), autocast_bf16=autocast, tokens=int(blocks.attention_mask.sum()),
               repeats=repeats, plain_s=best["plain"], grad_pass_s=best["grad"], diag_pass_s=best["diag"],
               kfac_pass_s=best["kfac"], cpus=os.cpu_count(), torch=torch.__version__, machine=platform.machine())
    if with_eigh:
        t_eigh, eig = timed(lambda: {key: curv.symmetric_eigen(v) for key, v in factors.state.items()}, device)
        bases = {k: (eig[("A", *owner)][1], eig[("G", *k)][1]) for k, owner in factors.a_owner.items()}
        for _ in range(repeats):
            keep("ekfac", lambda: run_tape(model, blocks, [EKFACCorrection(bases)], labels="sampled",
                                           reduction="sum", **tape))
        row.update(eigh_s=t_eigh, ekfac_pass_s=best["ekfac"])
    row["ratio_grad"] = best["grad"] / best["plain"]
    row["ratio_diag"] = best["diag"] / best["plain"]
    row["ratio_kfac"] = best["kfac"] / best["plain"]
    if with_eigh:   # EK-FAC adds the correction pass (sampled labels, activation gradients only)
        row["ratio_ekfac"] = (best["kfac"] + best["ekfac"]) / best["plain"]
    return row


def table(rows):
    lines = ["| model | device | bf16 | tokens | plain fwd+bwd | gradients | gradients + diag | gradients + K-FAC | "
             "gradients + EK-FAC | eigh (fixed) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ek = f"{r['ratio_ekfac']:.2f}x" if "ratio_ekfac" in r else "-"
        eigh = f"{r['eigh_s']:.1f} s" if "eigh_s" in r else "-"
        lines.append(f"| {r['model']} | {r['device']} | {'yes' if r['autocast_bf16'] else 'no'} | {r['tokens']} | "
                     f"{r['plain_s']:.2f} s | {r['ratio_grad']:.2f}x | {r['ratio_diag']:.2f}x | {r['ratio_kfac']:.2f}x | "
                     f"{ek} | {eigh} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["smollm2", "qwen"])
    parser.add_argument("--bf16", action="store_true", help="also time with bf16 autocast")
    parser.add_argument("--repeats", type=int, default=3, help="timings per pass; the fastest is kept")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    blocks = load_task("prose", tok, split="train", n_blocks=args.blocks, block_size=args.block_size)
    rows = []
    for autocast in ([False, True] if args.bf16 else [False]):
        if "smollm2" in args.shapes:
            rows.append(bench("SmolLM2-135M", model, blocks, args.batch_size, autocast, with_eigh=True,
                              repeats=args.repeats))
            print(table(rows[-1:]), flush=True)
        if "qwen" in args.shapes:
            qwen = qwen_shaped().to(next(model.parameters()).device)
            cpu = next(model.parameters()).device.type == "cpu"   # 4864-wide eigh on 2 cores: minutes
            rows.append(bench("Qwen2.5-0.5B shape (random)", qwen, blocks, args.batch_size, autocast, with_eigh=not cpu,
                              repeats=args.repeats))
            print(table(rows[-1:]), flush=True)
            del qwen
    out = Path(__file__).parent / "results" / "scoring.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))


if __name__ == "__main__":
    main()
