"""The Cython loop on threads of its own against the same loop on one thread, in one process.

    python benchmarks/loop_threads_ab.py [--workload "A b128"] [--repeats 6] [--threads 2] [--rows N]

Times epochs of one benchmark network (see _workloads.py) with the cython
backend in turn: the loop split between threads of its own (the default for
big steps; in float32 on packed operands, fastmlp/_packgemm.h), the same
split loop with its products in BLAS (``_set_packed_gemm(False)``), the loop
on one thread beside OpenBLAS's own threads (switched with
``fastmlp._native.loop._set_loop_split_limits``), and the GEMM bound; each timing
after a 0.25 s pause (see compare.py --settle). Prints the fastest and the
median epoch of each.
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
    p.add_argument("--repeats", type=int, default=6)
    return p.parse_args(argv)


def measure(workload, X, y, repeats, n_threads):
    from fastmlp._native import loop as _kernels

    runner, bound = W.cython_loop_and_bound(workload, X, y, n_threads)
    default = _kernels._set_loop_split_limits(*_kernels._set_loop_split_limits(0, 1))
    packed = _kernels._set_packed_gemm(True)
    _kernels._set_packed_gemm(packed)
    modes = {"split loop": (default, packed), "split loop, BLAS products": (default, False),
             "one-thread loop": ((1 << 62, default[1]), packed)}
    times = {name: [] for name in (*modes, "GEMM bound")}
    threads = {}
    try:
        for _ in range(repeats):
            for name, (limits, pk) in modes.items():
                _kernels._set_loop_split_limits(*limits)
                _kernels._set_packed_gemm(pk)
                time.sleep(0.25)
                t = time.perf_counter()
                runner.epoch()
                times[name].append(time.perf_counter() - t)
                threads[name] = f"{_kernels._last_loop_threads()}{', packed' if _kernels._last_loop_packed() else ''}"
            time.sleep(0.25)
            t = time.perf_counter()
            bound.epoch()
            times["GEMM bound"].append(time.perf_counter() - t)
    finally:
        _kernels._set_loop_split_limits(*default)
        _kernels._set_packed_gemm(packed)
    return times, threads


def main(argv=None):
    args = parse_args(argv)
    workload = W.WORKLOADS[args.workload]
    X, y, source = W.load(workload, args.rows)
    times, threads = measure(workload, X, y, args.repeats, args.threads)
    print(f"{workload.name}: {'-'.join(map(str, workload.sizes))}, {workload.optimizer}, {X.shape[0]} rows of "
          f"{source}, {args.threads} threads, cython backend; {args.repeats} epochs each, in turn")
    print()
    print("| | threads of its own | fastest s/epoch | median s/epoch | epochs |")
    print("|---|---|---|---|---|")
    for name, v in times.items():
        own = threads.get(name, "-")
        print(f"| {name} | {own} | {min(v):.4f} | {statistics.median(v):.4f} | "
              + " ".join(f"{x:.3f}" for x in v) + " |")


if __name__ == "__main__":
    main()
