"""fastmlp against PyTorch, scikit-learn and the GEMM bound: the issue's targets in one table.

    python benchmarks/compare.py [--threads 2] [--repeats 3] [--quick] [--smoke]

Prints the CPU and thread count, then a Markdown table of the median seconds
per epoch (microseconds per call for C) of every fastmlp backend that can
run here, PyTorch, scikit-learn and the GEMM bound (the epoch's matrix
products alone with NumPy's BLAS), with the ratios and the targets' pass /
fail; then peak memory during a fit and the first-fit latency of the
backends. All frameworks are timed side by side in one run: each repeat
times every framework of every row once, in turn, so that machine noise hits
all of them; each gets one warm-up epoch outside the timing. Before each
timing the script sleeps --settle seconds (default 0.25), so that the thread
pools of the framework timed before it have gone idle: OpenBLAS's workers
spin for about 0.1 s after a call, as do PyTorch's and GOMP's, and would
otherwise hold a core while the next framework runs.

--quick cuts the data (10k rows for A, 20k for B) and repeats once (about a
minute); --smoke uses tiny sizes (1000 rows) and skips the latency subprocesses (for the
smoke test). The full run takes several minutes. The section "callbacks' cost" times the A
b128 epoch with an EarlyStopping and a learning-rate schedule against the same epoch
without them (--no-overhead skips it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _workloads as W  # noqa: E402

import fastmlp as fm  # noqa: E402

BACKENDS = ("cython", "numba", "reference")
COLUMNS = [f"fastmlp-{b}" for b in BACKENDS] + ["torch", "sklearn", "gemm"]
HEADERS = {"fastmlp-cython": "cython", "fastmlp-numba": "numba", "fastmlp-reference": "reference",
           "torch": "PyTorch", "sklearn": "scikit-learn", "gemm": "GEMM bound"}
# The rows of the table: which frameworks each one runs (reference only where
# it is not painfully slow, unless --reference all).
ROWS = [
    ("A b128", ["torch", "sklearn", "gemm"]),
    ("A b32", ["torch", "gemm"]),
    ("A b512", ["fastmlp-reference", "torch", "gemm"]),
    ("B b32", ["fastmlp-reference", "torch", "sklearn"]),
    ("C predict", ["fastmlp-reference", "torch"]),
    ("P b128", ["torch"]),
    ("M b128", ["torch"]),
    ("R b128", ["torch"]),
]
MEMORY_SLACK_MIB = 64.0   # target: peak during fit <= dataset + 64 MiB
FLAT_MIB = 4.0            # "flat across epochs": peak grows by at most this after epoch 1


# --------------------------------------------------------------------- machine
def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def logical_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def versions():
    out = [f"fastmlp {fm.__version__}", f"numpy {np.__version__}"]
    for mod in ("torch", "sklearn"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            out.append(f"{mod} not installed")
    try:
        from threadpoolctl import threadpool_info
        blas = sorted({f"{i['internal_api']}" for i in threadpool_info() if i["user_api"] == "blas"})
        out.append("BLAS " + "/".join(blas))
    except ImportError:  # pragma: no cover
        pass
    return ", ".join(out)


# ---------------------------------------------------------------------- timing
class Cell:
    """One framework on one row: its runner (or why there is none) and its timings."""

    def __init__(self, framework, runner=None, why=None):
        self.framework, self.runner, self.why, self.times = framework, runner, why, []

    @property
    def ok(self):
        return self.runner is not None and self.why is None

    def median(self):
        return statistics.median(self.times) if self.ok and self.times else None


def build_cells(row, frameworks, data, args, notes):
    workload = W.WORKLOADS.get(row, W.B32)
    X, y = data[workload.key]
    cells = {}
    for fw in COLUMNS:
        if fw not in frameworks:
            continue
        try:
            if row == "C predict":
                runner = W.make_runner(fw, W.B32, None, None, args.threads, train=False)
            else:
                runner = W.make_runner(fw, workload, X, y, args.threads)
            cells[fw] = Cell(fw, runner)
        except W.Unavailable as exc:
            cells[fw] = Cell(fw, why=str(exc))
            notes.setdefault(str(exc), None)
    return cells


def run_once(row, cell, args, x1):
    """One timed measurement: seconds per epoch, or microseconds per predict call for C."""
    runner = cell.runner
    if row == "C predict":
        # up to args.calls calls, in chunks, stopping early after args.predict_budget seconds
        predict1, done, chunk = runner.predict1, 0, max(1, min(50, args.calls))
        t0 = time.perf_counter()
        while done < args.calls:
            for _ in range(chunk):
                predict1(x1)
            done += chunk
            if time.perf_counter() - t0 > args.predict_budget:
                break
        return (time.perf_counter() - t0) / done * 1e6
    t0 = time.perf_counter()
    loss = runner.epoch()
    elapsed = time.perf_counter() - t0
    if loss is not None and not np.isfinite(loss):
        raise FloatingPointError(f"{cell.framework} on {row}: the epoch's loss is {loss}")
    return elapsed


def guarded(row, cell, fn, notes):
    """Run fn(); a framework that fails is marked (and noted), never the whole script."""
    try:
        return fn()
    except W.Unavailable as exc:
        cell.why = str(exc)
        notes.setdefault(f"{cell.framework} on {row}: {exc}", None)
    except Exception as exc:  # a backend under development may crash: report, go on
        cell.why = f"error: {type(exc).__name__}: {exc}"
        notes.setdefault(f"{cell.framework} on {row}: {cell.why}\n"
                         + textwrap.indent(traceback.format_exc(limit=3), "    "), None)
    return None


def measure(rows, args, data, notes):
    x1 = np.ascontiguousarray(data["B"][0][:1])
    table = {row: build_cells(row, fws, data, args, notes) for row, fws in rows}
    log("runners built")
    # warm-up: one epoch per framework (JIT, allocators), or a burst of predict calls
    for row, cells in table.items():
        for cell in cells.values():
            if not cell.ok:
                continue
            if row == "C predict":
                guarded(row, cell, lambda: [cell.runner.predict1(x1) for _ in range(20)], notes)
            else:
                guarded(row, cell, cell.runner.warmup, notes)
            log(f"warm-up {row:9s} {cell.framework}")
    for r in range(args.repeats):
        for row, cells in table.items():
            for cell in cells.values():
                if cell.ok:
                    time.sleep(args.settle)
                    t = guarded(row, cell, lambda: run_once(row, cell, args, x1), notes)
                    if t is not None:
                        cell.times.append(t)
                        log(f"repeat {r + 1}/{args.repeats} {row:9s} {cell.framework:18s} {t:.4g}")
    return table


# ---------------------------------------------------------------------- table
def fmt(value, unit):
    if value is None:
        return "n/a"
    return f"{value:.1f}" if unit == "us/call" else f"{value:.3f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


def verdict(ok):
    return "PASS" if ok else "FAIL"


def target_text(row, best, torch_t, gemm_t):
    r_torch, r_gemm = ratio(torch_t, best), ratio(best, gemm_t)
    if best is None:
        return "n/a (no fastmlp backend ran)"
    if row == "A b128":
        parts = []
        parts.append(">=3x PyTorch: " + ("n/a" if r_torch is None else f"{verdict(r_torch >= 3)} ({r_torch:.2f}x)"))
        parts.append("<=1.25x GEMM: " + ("n/a" if r_gemm is None else f"{verdict(r_gemm <= 1.25)} ({r_gemm:.2f}x)"))
        return "; ".join(parts)
    need = {"A b32": 1.0, "A b512": 1.0, "B b32": 20.0, "C predict": 10.0, "P b128": 2.0, "M b128": 2.0,
            "R b128": 2.5}[row]
    label = "faster than PyTorch" if need == 1.0 else f">={need:g}x PyTorch"
    if r_torch is None:
        return f"{label}: n/a"
    return f"{label}: {verdict(r_torch > need if need == 1.0 else r_torch >= need)} ({r_torch:.2f}x)"


def cell_text(cell, unit):
    if cell is None:
        return "-"
    if cell.ok:
        return fmt(cell.median(), unit)
    if cell.why and cell.why.startswith("fastmlp[") and "train_steps" in cell.why:
        return "not available"
    if cell.why and "not installed" in cell.why:
        return "n/a"
    return "error" if cell.why and cell.why.startswith("error") else "n/a"


def render(table, memory_row=None):
    head = ["workload", "unit", *[HEADERS[c] for c in COLUMNS], "PyTorch / fastmlp", "fastmlp / GEMM",
            "sklearn / fastmlp", "target (PASS / FAIL)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    summary = {}
    for row, cells in table.items():
        unit = "us/call" if row == "C predict" else "s/epoch"
        fm_times = {c: cells[c].median() for c in cells if c.startswith("fastmlp-") and cells[c].median()}
        best_name = min(fm_times, key=fm_times.get) if fm_times else None
        best = fm_times.get(best_name)
        med = {c: (cells[c].median() if c in cells else None) for c in ("torch", "sklearn", "gemm")}
        values = [cell_text(cells.get(c), unit) for c in COLUMNS]
        if best_name:
            i = COLUMNS.index(best_name)
            values[i] = f"**{values[i]}**"
        lines.append("| " + " | ".join([
            row, unit, *values,
            fmt_ratio(ratio(med["torch"], best)), fmt_ratio(ratio(best, med["gemm"])),
            fmt_ratio(ratio(med["sklearn"], best)), target_text(row, best, med["torch"], med["gemm"]),
        ]) + " |")
        summary[row] = {"best": best_name, "seconds" if unit == "s/epoch" else "us": best,
                        **{c: cells[c].median() for c in cells}}
    if memory_row is not None:
        lines.append(memory_row)
    return "\n".join(lines), summary


# ------------------------------------------------------------------ subprocesses
MEMORY_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {bench!r}); sys.path.insert(0, {repo!r})
import numpy as np
import _workloads as W

def maxrss():
    # Peak RSS in MiB. Linux carries ru_maxrss across fork + exec (a child
    # starts at its parent's peak), so read this process's own high-water
    # mark, VmHWM, where there is one.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

import_peak = maxrss()
# A first fit on 256 zero rows loads the compiled code (Numba cache or JIT,
# OpenMP / BLAS thread pools): a one-time cost of the process, reported
# apart from the fit's own memory.
model = W.fastmlp_model(W.A128, {backend!r}, {threads})
model.fit(np.zeros((256, 784), np.float32), np.zeros(256, np.int64), epochs=1, batch_size=128, verbose=0)
model = W.fastmlp_model(W.A128, {backend!r}, {threads})
base_peak, base_rss = maxrss(), rss()
X = np.load({xpath!r}); y = np.load({ypath!r})
loaded_peak = maxrss()
epochs = []
model.fit(X, y, epochs={epochs}, batch_size=128, verbose=0,
          callbacks=[lambda m, e, logs: epochs.append((maxrss(), rss()))])
print(json.dumps(dict(import_peak=import_peak, base_peak=base_peak, base_rss=base_rss, loaded_peak=loaded_peak,
                      data_mib=(X.nbytes + y.nbytes) / 2**20, epochs=epochs)))
"""

LATENCY_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {bench!r}); sys.path.insert(0, {repo!r})
import numpy as np
import fastmlp
import _workloads as W
t_import = time.perf_counter() - t0
X, y, _ = W.load_b({rows})
model = W.fastmlp_model(W.B32, {backend!r}, {threads})
try:
    t = time.perf_counter(); model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    first = time.perf_counter() - t
    t = time.perf_counter(); model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    second = time.perf_counter() - t
    print(json.dumps(dict(import_s=t_import, first=first, second=second, backend=model.backend.NAME)))
except AttributeError as exc:
    print(json.dumps(dict(error=str(exc))))
"""


def child(code, env=None, timeout=900):
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_check(args, X, y):
    """Peak RSS of a fastmlp fit of A b128 in a fresh process: (table row, detail lines)."""
    backends = W.trainable_backends()
    if not backends:
        return None, ["memory: no fastmlp backend can fit here"]
    backend = backends[0]
    with tempfile.TemporaryDirectory() as tmp:
        xpath, ypath = os.path.join(tmp, "X.npy"), os.path.join(tmp, "y.npy")
        np.save(xpath, X)
        np.save(ypath, y)
        res = child(MEMORY_CHILD.format(bench=str(HERE), repo=str(HERE.parent), backend=backend,
                                        threads=args.threads, xpath=xpath, ypath=ypath, epochs=3))
    data, base = res["data_mib"], res["base_peak"]
    peaks = [p for p, _ in res["epochs"]]
    increase = max(peaks) - base
    overhead = increase - data
    growth = peaks[-1] - peaks[0]
    ok_peak, ok_flat = increase <= data + MEMORY_SLACK_MIB, growth <= FLAT_MIB
    value = f"+{increase:.1f} MiB peak (dataset {data:.1f} MiB, fit overhead {overhead:+.1f} MiB)"
    values = ["-"] * len(COLUMNS)
    values[COLUMNS.index(f"fastmlp-{backend}")] = value
    row = "| " + " | ".join([
        f"memory A b128 ({X.shape[0]} rows, 3 epochs)", "MiB", *values, "", "", "",
        f"<= dataset + 64 MiB: {verdict(ok_peak)}; flat: {verdict(ok_flat)} ({growth:+.1f} MiB after epoch 1)",
    ]) + " |"
    lines = [f"memory ({backend} backend, fresh process): peak RSS after imports {res['import_peak']:.1f} MiB; "
             f"after a first fit on 256 rows (loads compiled code, one-time, not counted) {base:.1f} MiB "
             f"(+{base - res['import_peak']:.1f}); after loading the data {res['loaded_peak']:.1f} MiB; "
             f"dataset {data:.1f} MiB"]
    for i, (p, r) in enumerate(res["epochs"]):
        lines.append(f"  after epoch {i + 1}: peak RSS {p:.1f} MiB (+{p - base:.1f}), current RSS {r:.1f} MiB")
    return row, lines


def latency_check(args):
    """First-fit latency (B network, 1 epoch on 1000 rows) in fresh processes."""
    lines = ["first-fit latency (B network, 1 epoch on 1000 rows, fresh process; "
             "second fit in the same process for comparison):"]
    common = dict(bench=str(HERE), repo=str(HERE.parent), rows=1000, threads=args.threads)
    avail = fm.available_backends()

    def line(label, res):
        if "error" in res:
            return f"  {label}: not available ({res['error']})"
        return (f"  {label}: first fit {res['first']:.3f} s, second fit {res['second']:.3f} s "
                f"(import {res['import_s']:.2f} s)")

    for backend in ("numba", "cython"):
        if backend not in avail:
            lines.append(f"  {backend}: not built")
            continue
        why = W.backend_status(backend)
        if why:
            lines.append(f"  {backend}: not available ({why})")
            continue
        try:
            if backend == "numba":
                with tempfile.TemporaryDirectory() as cache:
                    env = {"NUMBA_CACHE_DIR": cache}
                    code = LATENCY_CHILD.format(backend="numba", **common)
                    lines.append(line("numba, cold cache (empty NUMBA_CACHE_DIR)", child(code, env)))
                    lines.append(line("numba, warm cache (same NUMBA_CACHE_DIR)", child(code, env)))
            else:
                lines.append(line("cython (no warm-up needed)",
                                  child(LATENCY_CHILD.format(backend="cython", **common))))
        except Exception as exc:  # report, never crash the table
            lines.append(f"  {backend}: error: {exc}")
    return lines


# ---------------------------------------------------------- callbacks' cost
def callback_overhead(args, data, backends=("cython", "numba")):
    """The A b128 epoch with an EarlyStopping and a CosineDecay schedule against
    the same epoch without them, and against one native call per epoch (the
    loop before chunks), timed in turn (the target: within 2%)."""
    from fastmlp import _chunks
    X, y = data["A"]
    wl = W.WORKLOADS["A b128"]
    steps = -(-X.shape[0] // wl.batch)
    lines = [f"callbacks' cost (A b128, {X.shape[0]} rows, {args.threads} threads; median of "
             f"{args.overhead_repeats} epochs each, timed in turn):"]
    for backend in backends:
        why = W.backend_status(backend)
        if why:
            lines.append(f"  {backend}: not available ({why})")
            continue
        plain, scheduled, whole = (W.fastmlp_model(wl, backend, args.threads) for _ in range(3))
        scheduled.optimizer.lr = fm.schedules.CosineDecay(wl.lr, decay_steps=100 * steps, alpha=0.5)
        stop = [fm.callbacks.EarlyStopping(monitor="loss", patience=10**6)]
        runs = {
            "plain": lambda: plain.fit(X, y, epochs=1, batch_size=wl.batch, verbose=0),
            "EarlyStopping + CosineDecay": lambda: scheduled.fit(X, y, epochs=1, batch_size=wl.batch, verbose=0,
                                                                  callbacks=stop),
            "one native call per epoch": lambda: whole.fit(X, y, epochs=1, batch_size=wl.batch, verbose=0),
        }
        times = {name: [] for name in runs}
        saved = _chunks.QUIET_CHUNK_SECONDS
        try:
            for r in range(args.overhead_repeats + 1):  # the first round warms up
                for name, run in runs.items():
                    _chunks.QUIET_CHUNK_SECONDS = 1e9 if name == "one native call per epoch" else saved
                    time.sleep(args.settle)
                    t0 = time.perf_counter()
                    run()
                    if r:
                        times[name].append(time.perf_counter() - t0)
        finally:
            _chunks.QUIET_CHUNK_SECONDS = saved
        med = {name: statistics.median(t) for name, t in times.items()}
        base = med["plain"]
        for name, m in med.items():
            rel = "" if name == "plain" else f", {m / base:.3f}x plain (best {min(times[name]) / min(times['plain']):.3f}x)"
            lines.append(f"  {backend:7s} {name:28s} {m:.4f} s/epoch{rel}")
    return lines


# ------------------------------------------------------------- broader suite
def suite_section(args):
    """The broader suite (benchmarks/suite.py) and the planner's cost, printed."""
    import suite

    print()
    print(f"broader suite ({args.threads} threads; {'1 repeat' if args.quick or args.smoke else f'{args.repeats} repeats'}"
          ", median s/epoch, predict: s/call; PyTorch " + versions().split("torch ")[-1].split(",")[0] + "):")
    lines, _, _ = suite.run_suite(args, log=log)
    for line in lines:
        print(line, flush=True)
    print()
    for line in suite.planner_cost(args, log=log):
        print(line, flush=True)


# ------------------------------------------------------------------------ main
def log(msg):
    if LOG:
        print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


LOG = False
T0 = time.perf_counter()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="10k rows for A, 20k for B, 1 repeat")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no latency subprocesses")
    p.add_argument("--rows-a", type=int, default=None)
    p.add_argument("--rows-b", type=int, default=None)
    p.add_argument("--calls", type=int, default=None,
                   help="most predict calls per timing of C (fewer when they take over 1-3 s)")
    p.add_argument("--reference", choices=("auto", "all", "none"), default="auto",
                   help="where the (slow) reference backend runs: auto = A b512, B, C")
    p.add_argument("--settle", type=float, default=None,
                   help="seconds of sleep before each timing (default 0.25; 0 with --smoke)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-overhead", action="store_true", help="skip the callbacks' cost section")
    p.add_argument("--overhead-repeats", type=int, default=7, help="epochs per variant in that section")
    p.add_argument("--json", default=None, help="also write the medians to this file")
    p.add_argument("--only", default=None, help="comma-separated rows to run, e.g. 'A b128,P b128,M b128'")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.add_argument("--suite", action="store_true",
                   help="also run the broader suite (suite.py: wide, deep with BatchNorm and Dropout, float64, "
                        "batch inference, each against PyTorch, the GEMM bound and the FMA peak; the planner's cost)")
    p.add_argument("--suite-only", action="store_true", help="run the broader suite alone (no A/B/C table)")
    args = p.parse_args(argv)
    if args.smoke:
        rows_a, rows_b, repeats, calls, args.predict_budget = 1_000, 1_000, 1, 20, 0.2
    elif args.quick:
        rows_a, rows_b, repeats, calls, args.predict_budget = 10_000, 20_000, 1, 2_000, 1.0
    else:
        rows_a, rows_b, repeats, calls, args.predict_budget = W.A_ROWS, W.B_ROWS, 3, 10_000, 3.0
    args.rows_a = args.rows_a or rows_a
    args.rows_b = args.rows_b or rows_b
    args.repeats = args.repeats or repeats
    args.calls = args.calls or calls
    if args.settle is None:
        args.settle = 0.0 if args.smoke else 0.25
    if args.smoke:
        args.no_latency = True
        args.overhead_repeats = 1
    return args


def main(argv=None):
    global LOG
    args = parse_args(argv)
    LOG = args.verbose
    t_start = time.perf_counter()
    Xa, ya, source_a = W.load_a(args.rows_a)
    Xb, yb, source_b = W.load_b(args.rows_b)
    data = {"A": (Xa, ya), "B": (Xb, yb)}
    log("data loaded")

    rows = []
    only = None if args.only is None else {r.strip() for r in args.only.split(",")}
    for row, fws in ROWS:
        if only is not None and row not in only:
            continue
        fws = [f for f in fws if f != "fastmlp-reference"]
        if args.reference == "all" or (args.reference == "auto" and row in ("A b512", "B b32", "C predict")):
            fws.append("fastmlp-reference")
        rows.append((row, ["fastmlp-cython", "fastmlp-numba", *fws]))

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(f"CPU: {cpu_model()} ({logical_cpus()} logical CPUs available); threads: {args.threads}")
    print(f"{versions()}")
    print(f"mode: {mode}; {args.repeats} timed repeat(s), median; float32; "
          f"A = 784-256-128-10 ReLU, Adam(1e-3), {Xa.shape[0]} rows of {source_a}; "
          f"B = 20-64-64-2 ReLU, SGD(0.05, momentum 0.9), {Xb.shape[0]} rows ({source_b}); "
          f"C = single-row predict on B (up to {args.calls} calls per timing); "
          f"P, M = A's widths and data with Dense + PReLU, Maxout(pieces=2) hidden layers; "
          f"R = 784-256-[4 x Residual(Dense(256, relu), Dense(256)), relu]-10 on A's data")
    print(f"command: python benchmarks/compare.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(flush=True)

    if args.suite_only:
        suite_section(args)
        print(f"\ntotal run time: {time.perf_counter() - t_start:.0f} s")
        return 0

    notes = {}
    table = measure(rows, args, data, notes)

    memory_row, memory_lines = None, []
    if not args.no_memory:
        try:
            memory_row, memory_lines = memory_check(args, Xa, ya)
        except Exception as exc:  # report, never crash the table
            memory_lines = [f"memory: error: {exc}"]
    text, summary = render(table, memory_row)
    print(text)
    print()
    print("Seconds per epoch are medians; **bold** is the fastest fastmlp backend, which the ratios use. "
          "'not available': the backend has no native step loop yet; 'n/a': not installed or not measured; "
          "'-': not run on this row.")
    sk_b = table.get("B b32", {}).get("sklearn")
    if sk_b is not None and sk_b.ok:
        print("scikit-learn on B uses one logistic output unit (20-64-64-1), its form of a 2-class softmax.")
    for note in notes:
        print(f"note: {note}")
    for line in memory_lines:
        print(line)
    if not args.no_overhead:
        print()
        for line in callback_overhead(args, data):
            print(line, flush=True)
    if not args.no_latency:
        print()
        for line in latency_check(args):
            print(line)
    if args.suite:
        suite_section(args)
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal run time: {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": mode, "threads": args.threads, "cpu": cpu_model(),
                                               "rows": summary, "elapsed_s": elapsed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
