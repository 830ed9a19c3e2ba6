"""Cost of scoring as a ratio to a plain forward+backward over the same tokens, in one run.

    python benchmarks/bench_scoring.py [--blocks 4] [--block-size 256] [--shapes smollm2 qwen]
Targets (the project's design bars): K-FAC <= 2x, EK-FAC <= 3.5x a plain forward+backward. The passes are
timed apart from the factor eigendecompositions, which are a fixed cost per model, not per token.
When kronfluence is importable (`pip install -e ".[kronfluence]" && pip install --no-deps "kronfluence==1.0.1"`:
its declared torchvision would pull a build that does not match the CPU torch), its factor fitting on the same tokens, batch
size and true-Fisher setting is timed in the same run, phase by phase.
Writes benchmarks/results/scoring_<shapes>.jsonl and prints markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import tempfile
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
    for batch in blocks.batches(batch_size, device=device):
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
        # the float64 path first (the reference), then the default (float32 where the spectrum allows)
        gradients = grads[0][0][0].state        # summed over the repeats: a common scale, ratios unchanged
        t64, eig = timed(lambda: {key: curv.symmetric_eigen(v, torch.float64) for key, v in factors.state.items()}, device)
        zeta64 = zeta2_per_layer(eig, factors.a_owner, gradients)
        del eig
        t_one, eig = timed(lambda: {key: curv.symmetric_eigen(v) for key, v in factors.state.items()}, device)
        del eig
        # the default as fit() runs it: float32 where the spectrum allows, one factor per CPU thread
        copy = curv._KFACEigen()
        copy.a_owner, copy.tokens = factors.a_owner, 1       # raw sums, as the float64 reference saw them
        copy.state = {key: v.clone() for key, v in factors.state.items()}
        keys = list(factors.a_owner)
        t_eigh, bases = timed(lambda: copy.eigen_all(keys, 1, workers=curv._eigen_workers(copy)), device)
        eig = {}
        for k, (alpha, q_a, gamma, q_g) in bases.items():
            eig[("A", *factors.a_owner[k])], eig[("G", *k)] = (alpha, q_a), (gamma, q_g)
        zeta = zeta2_per_layer(eig, factors.a_owner, gradients)
        row.update(eigh_float64_s=t64, eigh_one_at_a_time_s=t_one, eigh_workers=curv._eigen_workers(factors),
                   eigh_float32_kept=sum(curv.float32_is_enough(e) for e, _ in eig.values()),
                   eigh_factors=len(eig), zeta2_max_rel_diff=max(abs(zeta[k] - zeta64[k]) / abs(zeta64[k]) for k in zeta64))
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


def zeta2_per_layer(eig, a_owner, gradients, damping=0.1):
    """K-FAC zeta_k^2 per layer from factor eigendecompositions, relative damping: to compare precisions."""
    out: dict = {}
    for k, owner in a_owner.items():
        alpha, q_a = eig[("A", *owner)]
        gamma, q_g = eig[("G", *k)]
        grid = torch.outer(gamma, alpha)
        solve = curv.ModuleSolve(eig=grid, lam=curv.damping_level(damping, "relative", float(grid.double().mean())),
                                 q_a=q_a, q_g=q_g)
        g = gradients[k]
        out[k[0]] = out.get(k[0], 0.0) + float((g.double() * solve.solve(g).double()).sum())
    return out


def kronfluence_fit(model, blocks, batch_size, repeats=3):
    """kronfluence's factor fitting on the same blocks, phase by phase (best of `repeats`), as ratios to
    the plain pass. kronfluence wraps the model's modules in place, so it works on a deep copy.

    Same setting as ours: true Fisher (labels sampled from the model), summed next-token loss over the
    unmasked targets, the 7 linear modules of every decoder layer, fp32 statistics, fp64 eigh."""
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task

    from layerq_nb.models import layers as find_layers
    tracked = [f"{layer.name}.{m}" for layer in find_layers(model) for m in layer.linears]

    class NextToken(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            labels = batch["labels"][:, 1:].reshape(-1)
            if sample:
                with torch.no_grad():
                    drawn = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
                labels = torch.where(labels == -100, labels, drawn)
            return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return tracked

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    device = next(model.parameters()).device
    data = [{k: getattr(blocks, k)[i] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(blocks))]
    task = NextToken()
    wrapped = prepare_model(copy.deepcopy(model), task)
    best: dict = {}
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer(analysis_name="bench", model=wrapped, task=task, cpu=device.type == "cpu",
                            disable_tqdm=True, output_dir=out)
        common = dict(per_device_batch_size=batch_size, overwrite_output_dir=True)
        for repeat in range(repeats):
            # K-FAC's eigendecomposition is the same work as EK-FAC's: timed once, for EK-FAC, whose
            # lambda pass needs it; like ours, it is a fixed cost per model
            for strategy in ("kfac", "ekfac"):
                args = FactorArguments(strategy=strategy)
                phases = [("covariance", lambda: analyzer.fit_covariance_matrices(strategy, data, factor_args=args, **common))]
                if strategy == "ekfac" and repeat == 0:
                    phases.append(("eigh", lambda: analyzer.perform_eigendecomposition(strategy, factor_args=args,
                                                                                       overwrite_output_dir=True)))
                if strategy == "ekfac":
                    phases.append(("lambda", lambda: analyzer.fit_lambda_matrices(strategy, data, factor_args=args, **common)))
                for phase, fn in phases:
                    seconds, _ = timed(fn, device)
                    best[f"{strategy}_{phase}"] = min(best.get(f"{strategy}_{phase}", float("inf")), seconds)
    del wrapped
    return best


def kronfluence_table(rows):
    lines = ["| model | tokens | plain fwd+bwd | ours K-FAC (grads + factors) | kronfluence K-FAC covariance | "
             "ours EK-FAC (passes) | kronfluence EK-FAC covariance + lambda | ours eigh | kronfluence eigh |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "kf_ekfac_lambda_s" not in r:
            continue
        plain = r["plain_s"]
        ours_ek = f"{r['ratio_ekfac']:.2f}x" if "ratio_ekfac" in r else "-"
        ours_eigh = f"{r['eigh_s']:.1f} s" if "eigh_s" in r else "-"
        lines.append(f"| {r['model']} | {r['tokens']} | {plain:.2f} s | {r['ratio_kfac']:.2f}x | "
                     f"{r['kf_kfac_covariance_s'] / plain:.2f}x | {ours_ek} | "
                     f"{(r['kf_ekfac_covariance_s'] + r['kf_ekfac_lambda_s']) / plain:.2f}x | {ours_eigh} | "
                     f"{r['kf_ekfac_eigh_s']:.1f} s |")
    return "\n".join(lines)


def table(rows):
    lines = ["| model | device | bf16 | tokens | plain fwd+bwd | gradients | gradients + diag | gradients + K-FAC | "
             "gradients + EK-FAC | eigh float64 | eigh float32, one at a time | eigh (default) | float32 kept | "
             "max rel. diff of zeta^2 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ek = f"{r['ratio_ekfac']:.2f}x" if "ratio_ekfac" in r else "-"
        eigh64 = f"{r['eigh_float64_s']:.1f} s ({r['eigh_float64_s'] / r['plain_s']:.2f}x)" if "eigh_float64_s" in r else "-"
        eigh = f"{r['eigh_s']:.1f} s ({r['eigh_s'] / r['plain_s']:.2f}x)" if "eigh_s" in r else "-"
        one = (f"{r['eigh_one_at_a_time_s']:.1f} s ({r['eigh_one_at_a_time_s'] / r['plain_s']:.2f}x)"
               if "eigh_one_at_a_time_s" in r else "-")
        kept = f"{r['eigh_float32_kept']}/{r['eigh_factors']}" if "eigh_factors" in r else "-"
        diff = f"{r['zeta2_max_rel_diff']:.1e}" if "zeta2_max_rel_diff" in r else "-"
        lines.append(f"| {r['model']} | {r['device']} | {'yes' if r['autocast_bf16'] else 'no'} | {r['tokens']} | "
                     f"{r['plain_s']:.2f} s | {r['ratio_grad']:.2f}x | {r['ratio_diag']:.2f}x | {r['ratio_kfac']:.2f}x | "
                     f"{ek} | {eigh64} | {one} | {eigh} | {kept} | {diff} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["smollm2", "qwen"])
    parser.add_argument("--bf16", action="store_true", help="also time with bf16 autocast")
    parser.add_argument("--repeats", type=int, default=3, help="timings per pass; the fastest is kept")
    parser.add_argument("--no-kronfluence", action="store_true", help="skip kronfluence even when installed")
    parser.add_argument("--out", default=None, help="JSON lines file (default: results/scoring_<shapes>.jsonl)")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    blocks = load_task("prose", tok, split="train", n_blocks=args.blocks, block_size=args.block_size)
    with_kronfluence = not args.no_kronfluence and importlib.util.find_spec("kronfluence") is not None
    rows = []
    for autocast in ([False, True] if args.bf16 else [False]):
        if "smollm2" in args.shapes:
            rows.append(bench("SmolLM2-135M", model, blocks, args.batch_size, autocast, with_eigh=True,
                              repeats=args.repeats))
            print(table(rows[-1:]), flush=True)
            if with_kronfluence and not autocast:
                kf = kronfluence_fit(model, blocks, args.batch_size, repeats=args.repeats)
                rows[-1].update({f"kf_{k}_s": v for k, v in kf.items()})
                print(kronfluence_table(rows[-1:]), flush=True)
        if "qwen" in args.shapes:
            qwen = qwen_shaped().to(next(model.parameters()).device)
            cpu = next(model.parameters()).device.type == "cpu"   # 4864-wide eigh on 2 cores: minutes
            rows.append(bench("Qwen2.5-0.5B shape (random)", qwen, blocks, args.batch_size, autocast, with_eigh=not cpu,
                              repeats=args.repeats))
            print(table(rows[-1:]), flush=True)
            del qwen
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"scoring_{'_'.join(args.shapes)}.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))
    if with_kronfluence:
        print(kronfluence_table(rows))


if __name__ == "__main__":
    main()
