"""Where the K-FAC eigendecompositions' time goes on a CPU, and what the alternatives cost (issue 20, item 5).

    python benchmarks/bench_eigh.py [--n 1536] [--tokens 2048] [--matrices 4] [--repeats 2]

SmolLM2-135M's fixed cost is dominated by its 90 factors of width 1,536 (the gate/up output gradients and
the down input). On a few random factors of that width, built as X^T X / N from N token rows with an
uneven spectrum, this times, per matrix and fastest of `--repeats`:
- torch.linalg.eigh in float32 and float64 (LAPACK syevd: what `curvature.symmetric_eigen` runs);
- eigenvalues alone (torch.linalg.eigvalsh): the tridiagonal reduction (sytrd), which needs every
  eigenvector-free step of syevd, so eigh minus eigvalsh is what the eigenvectors add;
- a batched call, and two workers of one thread each (the two cores split by matrix, not inside one);
- SciPy's syevd and syevr (MRRR) drivers;
- with fewer token rows than the width (--tokens < --n), `curvature.row_eigen` from the rows (thin QR,
  then a (tokens, tokens) float64 eigh; under twice the rows, the float64 (n, n) eigh of their float64
  sum): what K-FAC runs on such a factor.
Writes benchmarks/results/eigh.jsonl and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_mdl import best_of  # the benchmarks' one timing rule: fastest of `repeats` calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1536)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--matrices", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    import scipy.linalg
    gen = torch.Generator().manual_seed(0)
    mats, xs = [], []
    for _ in range(args.matrices):
        x = torch.randn(args.tokens, args.n, generator=gen) * torch.rand(args.n, generator=gen).pow(4)
        xs.append(x)
        mats.append((x.T @ x / args.tokens).contiguous())
    threads = torch.get_num_threads()

    def two_workers():
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(torch.linalg.eigh, mats))
        finally:
            torch.set_num_threads(threads)

    arrays = [m.numpy() for m in mats]
    variants = {
        "eigh float32 (default path)": lambda: [torch.linalg.eigh(m) for m in mats],
        "eigh float64": lambda: [torch.linalg.eigh(m.double()) for m in mats],
        "eigvalsh float32 (tridiagonal reduction + eigenvalues)": lambda: [torch.linalg.eigvalsh(m) for m in mats],
        "eigh float32, one batched call": lambda: torch.linalg.eigh(torch.stack(mats)),
        "eigh float32, two workers x one thread": two_workers,
        "scipy syevd float32": lambda: [scipy.linalg.eigh(a, driver="evd", check_finite=False) for a in arrays],
        "scipy syevr float32": lambda: [scipy.linalg.eigh(a, driver="evr", check_finite=False) for a in arrays],
    }
    if args.tokens < args.n:
        from layerq_nb.curvature import row_eigen
        variants["row_eigen float64 from the token rows"] = lambda: [row_eigen(x, args.tokens) for x in xs]
    rows = []
    for name, fn in variants.items():
        per = best_of(fn, args.repeats) / args.matrices
        rows.append(dict(variant=name, n=args.n, tokens=args.tokens, threads=threads, seconds_per_matrix=round(per, 4)))
    out = Path(__file__).parent / "results" / "eigh.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    base = rows[0]["seconds_per_matrix"]
    print(f"| n = {args.n}, {threads} threads | s per matrix | vs default |\n|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['seconds_per_matrix']:.3f} | {row['seconds_per_matrix'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
