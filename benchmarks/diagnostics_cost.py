"""The cost of ``fit(diagnostics=True)``: the A net's epoch (784-256-128-10 ReLU, Adam, batches of
128, Fashion-MNIST train) with diagnostics on (every 16th step, the default) against the same
epoch without, timed in turn on models of the same weights (the target: at most 5% slower), and
with every step sampled, whose cost divided by 16 is the default's without the machine's noise.

    python benchmarks/diagnostics_cost.py [--threads 2] [--repeats 5] [--rows N] [--backends cython,numba]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the fastmlp of this checkout

import _workloads as W  # noqa: E402
import compare  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per setting (after one warm-up)")
    p.add_argument("--rows", type=int, default=None, help="rows of Fashion-MNIST train (default all)")
    p.add_argument("--every", type=int, default=16)
    p.add_argument("--backends", default="cython")
    args = p.parse_args(argv)
    X, y, source = W.load_a(args.rows)
    wl = W.WORKLOADS["A b128"]
    print(f"CPU: {compare.cpu_model()}; {X.shape[0]} rows ({source}), batch {wl.batch}, {args.threads} threads, "
          f"median of {args.repeats} epochs, timed in turn")
    for backend in args.backends.split(","):
        why = W.backend_status(backend)
        if why:
            print(f"  {backend}: not available ({why})")
            continue
        plain, diag, every1 = (W.fastmlp_model(wl, backend, args.threads) for _ in range(3))
        runs = {"off": lambda: plain.fit(X, y, epochs=1, batch_size=wl.batch, verbose=0),
                "on": lambda: diag.fit(X, y, epochs=1, batch_size=wl.batch, verbose=0, diagnostics=True,
                                       diagnostics_every=args.every),
                # every step sampled: the cost of one sampled step, far above the machine's noise
                "every 1": lambda: every1.fit(X, y, epochs=1, batch_size=wl.batch, verbose=0, diagnostics=True,
                                              diagnostics_every=1)}
        times = {name: [] for name in runs}
        for r in range(args.repeats + 1):  # the first round warms up
            for name, run in runs.items():
                time.sleep(0.2)
                t0 = time.perf_counter()
                run()
                if r:
                    times[name].append(time.perf_counter() - t0)
        off, on, one = (statistics.median(times[k]) for k in ("off", "on", "every 1"))
        print(f"  {backend:7s} off {off:.4f} s/epoch, on {on:.4f} s/epoch: {on / off:.3f}x "
              f"(best {min(times['on']) / min(times['off']):.3f}x); every step sampled {one / off:.3f}x, so "
              f"every {args.every}th: {1 + (one / off - 1) / args.every:.3f}x; path: "
              f"{plain.loop_path(wl.batch).description}")


if __name__ == "__main__":
    main()
