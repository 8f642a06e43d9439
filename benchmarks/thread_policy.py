"""The thread policy across net sizes: one thread, the split loop, the loop beside OpenBLAS's threads.

    python benchmarks/thread_policy.py [--rows 20000] [--repeats 7] [--threads 2]

For each net and batch size below (synthetic data, Adam, float32, cython
backend), times one epoch of ``Sequential.fit`` in turn with: n_threads=1; the
bound n_threads and the split loop forced on (``_set_loop_split_limits(0, 16)``);
the same with the split loop's products in BLAS instead of on packed operands
(``_set_packed_gemm(False)``); the bound and the split loop off (the loop on one
thread beside OpenBLAS's own threads); the bound with the default limits. Prints the fastest epoch of each
in ms, and how many threads of its own the loop ran on. The nets run from the
model's own threshold for using threads at all (batch x largest product >=
262144 multiply-adds) to the 784-256-128-10 net.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastmlp
from fastmlp._native import loop as K

NETS = [((64, 64, 10), 64), ((16, 512, 2), 32), ((512, 16, 2), 32), ((20, 64, 64, 2), 64),
        ((64, 64, 64, 10), 64), ((100, 100, 10), 64), ((64, 128, 128, 10), 128), ((128, 256, 128, 10), 32),
        ((784, 256, 128, 10), 32), ((512, 512, 512, 10), 32)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nets", type=int, default=len(NETS), help="only the first N nets")
    return p.parse_args(argv)


def bench(sizes, batch, rows, repeats, n_threads, rng):
    X = rng.standard_normal((rows, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], rows)

    def make(nt):
        m = fastmlp.Sequential([fastmlp.Dense(h, activation="relu") for h in sizes[1:-1]] + [fastmlp.Dense(sizes[-1])],
                               input_dim=sizes[0], seed=0, backend="cython", n_threads=nt)
        m.compile(loss="cross_entropy", optimizer="adam")
        m.fit(X[:2 * batch], y[:2 * batch], epochs=1, batch_size=batch, verbose=0)
        return m

    default = K._set_loop_split_limits(*K._set_loop_split_limits(0, 1))
    packed = K._set_packed_gemm(True)
    K._set_packed_gemm(packed)
    runs = {"1 thread": (make(1), default, packed), "split": (make(n_threads), (0, default[1]), packed),
            "split, BLAS": (make(n_threads), (0, default[1]), False),
            "not split": (make(n_threads), (1 << 62, default[1]), packed),
            "default": (make(n_threads), default, packed)}
    best = {k: float("inf") for k in runs}
    threads = {}
    try:
        for _ in range(repeats):
            for name, (model, limits, pk) in runs.items():
                K._set_loop_split_limits(*limits)
                K._set_packed_gemm(pk)
                time.sleep(0.1)
                t = time.perf_counter()
                model.fit(X, y, epochs=1, batch_size=batch, shuffle=True, verbose=0)
                best[name] = min(best[name], time.perf_counter() - t)
                threads[name] = f"{K._last_loop_threads()}{'p' if K._last_loop_packed() else ''}"
    finally:
        K._set_loop_split_limits(*default)
        K._set_packed_gemm(packed)
    return best, threads


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    fastmlp.get_backend("cython")
    print(f"{args.rows} rows, Adam, float32, cython backend, bound {args.threads} threads; fastest of "
          f"{args.repeats} epochs, ms (threads of the loop's own; p: on packed operands)")
    print()
    print("| net | batch | multiply-adds per step | 1 thread | split | split, BLAS products | not split | default |")
    print("|---|---|---|---|---|---|---|---|")
    for sizes, batch in NETS[:args.nets]:
        best, threads = bench(sizes, batch, args.rows, args.repeats, args.threads, rng)
        work = batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        cells = " | ".join(f"{1000 * best[k]:.1f} ({threads[k]})" for k in best)
        print(f"| {'-'.join(map(str, sizes))} | {batch} | {work / 1e6:.2f}M | {cells} |", flush=True)


if __name__ == "__main__":
    main()
