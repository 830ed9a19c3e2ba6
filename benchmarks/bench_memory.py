"""Peak memory of scoring SmolLM2-135M on CPU, one fresh process per curvature (Linux: /proc/self/status).

    python benchmarks/bench_memory.py [--blocks 8] [--block-size 256] [--batch-size 1] [--layers-per-pass K]
Target (DESIGN.md section 9): <= 4 GiB. Each curvature runs in its own process, so one run's freed
memory does not hide the next one's peak. "peak" is the whole process's high-water mark (VmHWM: torch,
the model, the blocks and the scoring pass), reset after loading so that the loading's own transient
peak is reported apart. Writes benchmarks/results/memory.jsonl and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status: this benchmark needs Linux")


def child(curvature: str, n_blocks: int, block_size: int, batch_size: int, layers_per_pass: int | None) -> dict:
    from layerq_nb import load_model, load_task, score
    model, tok = load_model("smollm2-135m")
    blocks = load_task("prose", tok, split="train", n_blocks=n_blocks, block_size=block_size)
    loaded_peak, loaded = status_mib("VmHWM"), status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")          # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    score(model, blocks, curvature=curvature, batch_size=batch_size, layers_per_pass=layers_per_pass, progress=False)
    return dict(curvature=curvature, tokens=int(blocks.attention_mask.sum()), batch_size=batch_size,
                layers_per_pass=layers_per_pass,
                rss_after_load_mib=loaded, load_peak_mib=loaded_peak, scoring_peak_mib=status_mib("VmHWM"),
                seconds=time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1, help="blocks per pass (score's default: 1)")
    parser.add_argument("--curvatures", nargs="+", default=["identity", "diag", "kfac", "ekfac"])
    parser.add_argument("--layers-per-pass", type=int, default=None,
                        help="score(layers_per_pass=K): statistics for K layers at a time (default: all at once)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.blocks, args.block_size, args.batch_size, args.layers_per_pass)))
        return
    rows = []
    for curvature in args.curvatures:
        out = subprocess.run([sys.executable, __file__, "--child", curvature, "--blocks", str(args.blocks),
                              "--block-size", str(args.block_size), "--batch-size", str(args.batch_size),
                              *(["--layers-per-pass", str(args.layers_per_pass)] if args.layers_per_pass else [])],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    path = Path(__file__).parent / "results" / "memory.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("| curvature | tokens | batch | RSS after load | peak while loading | peak while scoring | scoring time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['curvature']} | {r['tokens']} | {r['batch_size']} | {r['rss_after_load_mib'] / 1024:.2f} GiB | "
              f"{r['load_peak_mib'] / 1024:.2f} GiB | {r['scoring_peak_mib'] / 1024:.2f} GiB | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
