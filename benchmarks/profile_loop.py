"""Where an epoch of the Cython training loop goes, phase by phase, beside the GEMM bound.

    python benchmarks/profile_loop.py [--workload "A b128"] [--epochs 3] [--threads 2] [--rows N]

Trains one benchmark network (see _workloads.py) with the cython backend and
the loop's phase timing on (``fastmlp._native.runtime.loop_phase_times``), and times
the GEMM bound (the same epoch's matrix products alone with NumPy's BLAS) in
the same run, epoch by epoch in turn, each after a 0.25 s pause (see
compare.py --settle). Prints, per epoch (medians), the seconds in each phase,
the matrix products in the loop against the bound, and what the rest costs
against the 25% that a target of 1.25x the bound leaves. When the loop runs
on threads of its own, the phases are its first thread's: "sync" is its
wait at the barriers for the others. Each phase's matrix products are timed
apart ("forward products", "backward products", "param grads products").
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _workloads as W  # noqa: E402


def parse_args(argv=None):
    p = W.loop_script_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    return p.parse_args(argv)


def profile(workload, X, y, epochs, n_threads):
    """Per-epoch phase seconds (lists), wall seconds and GEMM-bound seconds, in turn."""
    from fastmlp._native import runtime

    runner, bound = W.cython_loop_and_bound(workload, X, y, n_threads)
    phases = {name: [] for name in runtime.loop_phase_times(reset=False)}
    wall, gemm = [], []
    runtime.loop_phase_times(enable=True, reset=True)
    try:
        for _ in range(epochs):
            time.sleep(0.25)
            t = time.perf_counter()
            runner.epoch()
            wall.append(time.perf_counter() - t)
            for name, sec in runtime.loop_phase_times().items():
                phases[name].append(sec)
            time.sleep(0.25)
            t = time.perf_counter()
            bound.epoch()
            gemm.append(time.perf_counter() - t)
    finally:
        runtime.loop_phase_times(enable=False)
    return phases, wall, gemm


def report(workload, phases, wall, gemm, n_threads, rows):
    from fastmlp._native import loop

    med = {name: statistics.median(v) for name, v in phases.items()}
    wall_m, gemm_m = statistics.median(wall), statistics.median(gemm)
    products = sum(sec for name, sec in med.items() if name.endswith(" products"))
    rest = sum(med.values()) - products
    lines = [f"{workload.name}: {'-'.join(map(str, workload.sizes))}, {workload.optimizer}, "
             f"{rows}, {n_threads} threads, cython backend; medians of {len(wall)} epochs; "
             f"the loop ran on {loop._last_loop_threads()} thread(s) of its own",
             "",
             "| phase | s/epoch | share of the loop |",
             "|---|---|---|"]
    total = sum(med.values())
    for name, sec in med.items():
        lines.append(f"| {name} | {sec:.4f} | {100 * sec / total:.1f}% |")
    lines += ["",
              f"epoch (wall, fit() included): {wall_m:.4f} s; phases sum to {total:.4f} s",
              f"GEMM bound (NumPy, same shapes and threads, same run): {gemm_m:.4f} s",
              f"matrix products inside the loop: {products:.4f} s = {products / gemm_m:.2f}x the bound",
              f"everything else in the loop: {rest:.4f} s = {100 * rest / gemm_m:.0f}% of the bound "
              f"(a target of 1.25x the bound leaves 25%: {0.25 * gemm_m:.4f} s)",
              f"epoch / GEMM bound: {wall_m / gemm_m:.2f}x"]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    workload = W.WORKLOADS[args.workload]
    X, y, source = W.load(workload, args.rows)
    phases, wall, gemm = profile(workload, X, y, args.epochs, args.threads)
    print(report(workload, phases, wall, gemm, args.threads, f"{X.shape[0]} rows of {source}"))


if __name__ == "__main__":
    main()
