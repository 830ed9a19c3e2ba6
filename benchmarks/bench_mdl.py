"""Closed form vs cvxpy for the two MDL programs: time to build and to solve, as ratios in one run.

    python benchmarks/bench_mdl.py            # K = 30, 300, 3000, and 1000 instances at K = 30 in one batch
Writes one JSON line per (program, K) to benchmarks/results/mdl.jsonl. Target (DESIGN.md section 9):
the closed form is >= 1000x faster than cvxpy at K = 30.
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from layerq_nb import mdl, reference


def best_of(fn, repeats):
    """Smallest wall time of `repeats` calls (the least disturbed run), in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def instance(k, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.gamma(0.5, size=k)
    return q, rng.uniform(1, 3, k)


def run(ks=(30, 300, 3000)):
    rows = []
    warnings.simplefilter("ignore")
    for k in ks:
        q, cost = instance(k)
        programs = {
            "allocate": (lambda m: mdl.allocate(q, 4.0 * k, cost=cost, upper=16.0, method=m),
                         lambda: reference.build_allocation(q, 4.0 * k, cost=cost, upper=16.0)),
            "prune": (lambda m: mdl.prune(q, 0.6, sizes=cost, method=m),
                      lambda: reference.build_prune(q, 0.6, sizes=cost)),
        }
        for name, (closed, build) in programs.items():
            reps = 200 if k <= 300 else 50
            t_bisect = best_of(lambda: closed("bisection"), reps)
            t_sorted = best_of(lambda: closed("sorted"), reps)
            problem = closed("sorted").problem          # validated once: the closed form alone
            t_core = best_of(lambda: problem.x_of_nu(mdl._sorted_exact(problem)), reps)
            t_build = best_of(build, 5)
            solves, solver_only = [], []
            for _ in range(5):
                cvx_problem = build()[0]
                t0 = time.perf_counter()
                cvx_problem.solve(solver="CLARABEL", **reference.TIGHT["CLARABEL"])
                solves.append(time.perf_counter() - t0)
                solver_only.append(cvx_problem.solver_stats.solve_time or np.nan)
            t_solve = min(solves)
            cvx = t_build + t_solve
            rows.append(dict(program=name, K=k, bisection_s=t_bisect, sorted_s=t_sorted, core_s=t_core,
                             cvxpy_build_s=t_build, cvxpy_solve_s=t_solve, clarabel_only_s=min(solver_only),
                             ratio_bisection=cvx / t_bisect, ratio_sorted=cvx / t_sorted, ratio_core=cvx / t_core,
                             iterations=closed("bisection").iterations, machine=platform.machine(),
                             cpus=os.cpu_count()))
    return rows


def run_batch(k=30, n=1000):
    """Program A for n instances at once (allocate_batch) against n single allocate() calls and cvxpy,
    all per instance."""
    rng = np.random.default_rng(1)
    q = rng.gamma(0.5, size=(n, k)) + 1e-3
    cost = rng.uniform(1, 3, k)
    budgets = 4.0 * k * rng.uniform(0.5, 1.5, n)
    t_batch = best_of(lambda: mdl.allocate_batch(q, budgets, cost=cost, upper=16.0), 20) / n
    t_single = best_of(lambda: [mdl.allocate(q[i], budgets[i], cost=cost, upper=16.0, method="sorted")
                                for i in range(100)], 3) / 100
    cvx = []
    for i in range(5):
        t0 = time.perf_counter()
        built = reference.build_allocation(q[i], budgets[i], cost=cost, upper=16.0)
        built[0].solve(solver="CLARABEL", **reference.TIGHT["CLARABEL"])
        cvx.append(time.perf_counter() - t0)
    batch = mdl.allocate_batch(q[:5], budgets[:5], cost=cost, upper=16.0)
    gap = max(np.max(np.abs(batch.x[i] - reference.allocate(q[i], budgets[i], cost=cost, upper=16.0).x))
              for i in range(5))
    return dict(program="allocate_batch", K=k, instances=n, batch_per_instance_s=t_batch,
                single_sorted_s=t_single, cvxpy_s=min(cvx), ratio_batch=min(cvx) / t_batch,
                ratio_single=min(cvx) / t_single, max_gap_to_cvxpy=gap, machine=platform.machine(), cpus=os.cpu_count())


def batch_table(row):
    return ("| K | instances | allocate_batch, per instance | allocate(sorted), one call | cvxpy (build + solve) | "
            "cvxpy / batch | cvxpy / one call | max gap to cvxpy |\n|---|---|---|---|---|---|---|---|\n"
            f"| {row['K']} | {row['instances']} | {row['batch_per_instance_s'] * 1e6:.2f} us | "
            f"{row['single_sorted_s'] * 1e6:.0f} us | {row['cvxpy_s'] * 1e3:.2f} ms | {row['ratio_batch']:.0f}x | "
            f"{row['ratio_single']:.0f}x | {row['max_gap_to_cvxpy']:.1e} |")


def table(rows):
    lines = ["| program | K | allocate() bisection | allocate() sorted | closed form alone | cvxpy build | "
             "cvxpy solve (compile + Clarabel) | cvxpy / bisection | cvxpy / sorted | cvxpy / closed form |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['program']} | {r['K']} | {r['bisection_s'] * 1e6:.0f} us | {r['sorted_s'] * 1e6:.0f} us | "
                     f"{r['core_s'] * 1e6:.0f} us | {r['cvxpy_build_s'] * 1e3:.2f} ms | {r['cvxpy_solve_s'] * 1e3:.1f} ms | "
                     f"{r['ratio_bisection']:.0f}x | {r['ratio_sorted']:.0f}x | {r['ratio_core']:.0f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    rows = run()
    batch = run_batch()
    out = Path(__file__).parent / "results" / "mdl.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in [*rows, batch]))
    print(table(rows))
    print()
    print(batch_table(batch))
