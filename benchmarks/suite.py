"""The broader suite of ``compare.py --suite``: wide, deep with BatchNorm and Dropout, float64, batch inference.

Each workload is timed against PyTorch (2.13), NumPy's GEMM bound for its
products (the same products with NumPy's BLAS at the same shapes and threads)
and the physical limit: the epoch's floating-point operations at the FMA peak
of the cores used, measured by ``fma_peak.c`` (compiled here with the
extension's compiler flags). Frameworks are timed in turn within each repeat,
as in ``compare.py``; the medians are reported. fastmlp's warm-up fit runs
with ``plan="measure"`` so that its timed fits (``plan="auto"``) take the
planner's cached decision, as a user's fits do after the first one; the
variant each row ran on is printed.

Workloads (2 threads unless --threads; float32 unless said):

* wide: 784-2048-2048-10 ReLU, SGD(0.01, momentum 0.9), batch 256, 10k rows of A's data;
* deep: 784-512-256-256-128-10, each hidden layer Dense + BatchNorm + ReLU + Dropout(0.1),
  Adam(1e-3), batch 256, 30k rows;
* A f64: A (784-256-128-10 ReLU, Adam(1e-3), batch 128) in float64, 30k rows;
* predict: A's ``predict`` on 60k rows (fastmlp's default batches of 4096) against the same
  net under ``torch.inference_mode()``.

Also: the planner's cost, the wall time of a first fit of A b128 (10 epochs on A's
60k rows) with an empty cache against the same fit with the decision cached.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _workloads as W  # noqa: E402

import fastmlp as fm  # noqa: E402


@dataclass(frozen=True)
class SuiteWorkload:
    """One row of the suite: a net (a list of layer specs), its optimizer, batch, dtype and rows."""

    name: str
    d_in: int
    layers: tuple      # ("dense", k, act) | ("bn",) | ("act", name) | ("dropout", rate)
    optimizer: str     # "adam" | "sgd"
    lr: float
    batch: int
    rows: int
    dtype: str = "float32"
    momentum: float = 0.0
    predict: bool = False

    def products(self):
        """(fan_in, fan_out) of every dense layer."""
        out, width = [], self.d_in
        for spec in self.layers:
            if spec[0] == "dense":
                out.append((width, spec[1]))
                width = spec[1]
        return out

    def flops(self, rows):
        """Floating-point operations of the matrix products of an epoch over ``rows`` rows
        (training: forward, dW and dX but the first layer's; predict: forward)."""
        prods = self.products()
        fwd = sum(2 * i * o for i, o in prods)
        if self.predict:
            return rows * fwd
        return rows * (2 * fwd + sum(2 * i * o for i, o in prods[1:]))


def _hidden(k, bn=False, dropout=0.0):
    out = [("dense", k, "linear" if bn else "relu")]
    if bn:
        out += [("bn",), ("act", "relu")]
    if dropout:
        out.append(("dropout", dropout))
    return out


A_NET = tuple(_hidden(256) + _hidden(128) + [("dense", 10, "linear")])
SUITE = [
    SuiteWorkload("wide b256", 784, tuple(_hidden(2048) + _hidden(2048) + [("dense", 10, "linear")]), "sgd", 0.01,
                  256, 10_000, momentum=0.9),
    SuiteWorkload("deep BN+Dropout b256", 784,
                  tuple(sum((_hidden(k, True, 0.1) for k in (512, 256, 256)), []) + _hidden(128, True)
                        + [("dense", 10, "linear")]), "adam", 1e-3, 256, 30_000),
    SuiteWorkload("A f64 b128", 784, A_NET, "adam", 1e-3, 128, 30_000, dtype="float64"),
    SuiteWorkload("predict A 60k", 784, A_NET, "adam", 1e-3, 4096, 60_000, predict=True),
]


# ------------------------------------------------------------------- runners
def fastmlp_model(wl, n_threads, seed=W.SEED):
    layers = []
    for spec in wl.layers:
        if spec[0] == "dense":
            layers.append(fm.Dense(spec[1], activation=spec[2]))
        elif spec[0] == "bn":
            layers.append(fm.BatchNorm())
        elif spec[0] == "act":
            layers.append(fm.Activation(spec[1]))
        else:
            layers.append(fm.Dropout(spec[1]))
    model = fm.Sequential(layers, input_dim=wl.d_in, dtype=wl.dtype, seed=seed, backend="cython", n_threads=n_threads)
    opt = fm.optim.Adam(lr=wl.lr) if wl.optimizer == "adam" else fm.optim.SGD(lr=wl.lr, momentum=wl.momentum)
    model.compile(loss="cross_entropy", optimizer=opt)
    return model


class FastmlpSuiteRunner:
    label = "fastmlp"

    def __init__(self, wl, X, y, n_threads):
        why = W.backend_status("cython", train=not wl.predict)
        if why:
            raise W.Unavailable(f"fastmlp[cython]: {why}")
        self.wl, self.X, self.y = wl, X, y
        self.model = fastmlp_model(wl, n_threads)
        self.plan = None

    def warmup(self):
        if self.wl.predict:
            self.model.fit(self.X[:1024], self.y[:1024], epochs=1, batch_size=128, verbose=0)
            return self.epoch()
        # measure once (the cache keeps it), as a user's first long fit would
        self.model.fit(self.X, self.y, epochs=1, batch_size=self.wl.batch, verbose=0, plan="measure")
        self.plan = self.model.plan_
        return None

    def epoch(self):
        if self.wl.predict:
            self.model.predict(self.X)
            return None
        h = self.model.fit(self.X, self.y, epochs=1, batch_size=self.wl.batch, verbose=0)
        self.plan = self.model.plan_
        return h.history["loss"][0]


class TorchSuiteRunner:
    label = "torch"

    def __init__(self, wl, X, y, n_threads):
        torch = W._torch()
        self.torch, self.wl, self.n_threads = torch, wl, n_threads
        torch.set_num_threads(n_threads)
        torch.manual_seed(W.SEED)
        mods, width = [], wl.d_in
        for spec in wl.layers:
            if spec[0] == "dense":
                mods.append(torch.nn.Linear(width, spec[1]))
                width = spec[1]
                if spec[2] == "relu":
                    mods.append(torch.nn.ReLU())
            elif spec[0] == "bn":
                mods.append(torch.nn.BatchNorm1d(width))
            elif spec[0] == "act":
                mods.append(torch.nn.ReLU())
            else:
                mods.append(torch.nn.Dropout(spec[1]))
        self.net = torch.nn.Sequential(*mods)
        if wl.dtype == "float64":
            self.net = self.net.double()
        params = self.net.parameters()
        self.opt = (torch.optim.Adam(params, lr=wl.lr) if wl.optimizer == "adam"
                    else torch.optim.SGD(params, lr=wl.lr, momentum=wl.momentum))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)

    def epoch(self):
        torch, bs = self.torch, self.wl.batch
        torch.set_num_threads(self.n_threads)
        if self.wl.predict:
            self.net.eval()
            with torch.inference_mode():
                torch.softmax(self.net(self.X), dim=1)
            return None
        n = self.X.shape[0]
        perm = torch.randperm(n)
        total = torch.zeros((), dtype=self.X.dtype)
        self.net.train()
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            xb, yb = self.X[idx], self.y[idx]
            if xb.shape[0] < 2 and any(isinstance(m, torch.nn.BatchNorm1d) for m in self.net):
                continue
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(xb), yb)
            loss.backward()
            self.opt.step()
            total += loss.detach() * xb.shape[0]
        return float(total) / n

    warmup = epoch


class GemmSuiteBound(W.GemmBound):
    """The epoch's matrix products alone with NumPy's BLAS (_workloads.GemmBound at the workload's
    products and dtype; predict: the forward products of fastmlp's predict batches)."""

    label = "gemm"

    def __init__(self, wl, n_rows, n_threads):
        prods = wl.products()
        super().__init__(wl, n_rows, n_threads, sizes=[prods[0][0]] + [o for _, o in prods],
                         dtype=np.dtype(wl.dtype), forward_only=wl.predict)


# ------------------------------------------------------------------ the peak
def fma_peak(n_threads):
    """{"registers", "float32_1", "float64_1", "float32_n", "float64_n"} GFLOP/s from fma_peak.c, or None."""
    cc = sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma_peak")
        try:
            subprocess.run(cc.split() + ["-O3", "-march=native", "-fopenmp", str(HERE / "fma_peak.c"), "-o", exe],
                           check=True, capture_output=True, timeout=120)
            out = subprocess.run([exe, str(n_threads)], check=True, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------- the run
def _data(wl, rows):
    X, y, _ = W.load_a(rows)
    return np.ascontiguousarray(X, dtype=wl.dtype), np.ascontiguousarray(y)


def run_suite(args, log=print):
    """Time every suite workload; returns the report's lines."""
    quick = args.smoke or args.quick
    scale = 0.05 if args.smoke else 0.34 if args.quick else 1.0
    peak = fma_peak(args.threads)
    rows_of = {wl.name: max(2 * wl.batch if not wl.predict else 2048, int(wl.rows * scale)) for wl in SUITE}
    table = {}
    for wl in SUITE:
        X, y = _data(wl, rows_of[wl.name])
        cells = {}
        for label, make in (("fastmlp", lambda: FastmlpSuiteRunner(wl, X, y, args.threads)),
                            ("torch", lambda: TorchSuiteRunner(wl, X, y, args.threads)),
                            ("gemm", lambda: GemmSuiteBound(wl, X.shape[0], args.threads))):
            try:
                cells[label] = [make(), []]
            except W.Unavailable as exc:
                cells[label] = [None, str(exc)]
        table[wl.name] = (wl, X.shape[0], cells)
    for name, (wl, n, cells) in table.items():  # warm-up: JIT, allocators, the planner's measurement
        for label, cell in cells.items():
            if cell[0] is not None:
                cell[0].warmup()
                log(f"suite warm-up {name} {label}")
    repeats = 1 if quick else args.repeats
    for r in range(repeats):
        for name, (wl, n, cells) in table.items():
            for label, cell in cells.items():
                if cell[0] is None:
                    continue
                time.sleep(args.settle)
                t0 = time.perf_counter()
                loss = cell[0].epoch()
                t = time.perf_counter() - t0
                if loss is not None and not np.isfinite(loss):
                    raise FloatingPointError(f"{label} on {name}: the epoch's loss is {loss}")
                cell[1].append(t)
                log(f"suite repeat {r + 1}/{repeats} {name} {label} {t:.4g}")
    return render_suite(table, peak, args), table, peak


def _verdict(best, torch_t, gemm_t, limit):
    if best is None:
        return "n/a"
    parts = []
    if torch_t is not None:
        r = torch_t / best
        if limit is not None and torch_t / 2 < limit:  # 2x PyTorch would beat the physical limit
            parts.append(f"2x PyTorch beats the limit; within 1.2x of it: {'PASS' if best <= 1.2 * limit else 'FAIL'}"
                         f" ({best / limit:.2f}x)")
        else:
            parts.append(f">=2x PyTorch: {'PASS' if r >= 2 else 'FAIL'} ({r:.2f}x)")
    if gemm_t is not None:
        parts.append(f"<=1.1x GEMM: {'PASS' if best <= 1.1 * gemm_t else 'FAIL'} ({best / gemm_t:.2f}x)")
    return "; ".join(parts)


def render_suite(table, peak, args):
    head = ["workload", "rows", "fastmlp s", "PyTorch s", "GEMM bound s", "limit s", "PyTorch / fastmlp",
            "fastmlp / GEMM", "fastmlp / limit", "fastmlp GFLOP/s", "loop variant", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for name, (wl, n, cells) in table.items():
        med = {k: (statistics.median(c[1]) if c[0] is not None and c[1] else None) for k, c in cells.items()}
        flops = wl.flops(n)
        limit = None if peak is None else flops / (peak[f"{wl.dtype}_n"] * 1e9)
        best = med["fastmlp"]
        runner = cells["fastmlp"][0]
        plan = getattr(runner, "plan", None)
        variant = "predict" if wl.predict else ("n/a" if not plan else f"{plan['variant']} ({plan['how']})")

        def f(x):
            return "n/a" if x is None else f"{x:.3f}"

        def rt(a, b):
            return "n/a" if a is None or b is None else f"{a / b:.2f}x"

        lines.append("| " + " | ".join([
            f"{name} ({wl.dtype})", str(n), f(best), f(med["torch"]), f(med["gemm"]), f(limit),
            rt(med["torch"], best), rt(best, med["gemm"]), rt(best, limit),
            "n/a" if best is None else f"{flops / best / 1e9:.0f}", variant,
            _verdict(best, med["torch"], med["gemm"], limit)]) + " |")
    if peak is not None:
        lines.append(f"\nFMA peak ({peak['registers']} registers, fma_peak.c, best of 3): one core "
                     f"{peak['float32_1']:.0f} GFLOP/s float32, {peak['float64_1']:.0f} float64; "
                     f"{args.threads} threads {peak['float32_n']:.0f} float32, {peak['float64_n']:.0f} float64. "
                     "limit = the epoch's products' floating-point operations at the threads' peak.")
    else:
        lines.append("\nFMA peak: not measured (fma_peak.c did not build or run here); no limit column")
    return lines


def planner_cost(args, log=print):
    """First fit of A b128 with an empty planner cache against the same fit with the decision cached."""
    rows = 6_000 if args.smoke else 20_000 if args.quick else 60_000
    epochs = 3 if args.smoke or args.quick else 10  # long enough for 2% to cover the measurement
    X, y, source = W.load_a(rows)
    saved = os.environ.get("FASTMLP_CACHE_DIR")
    tmp = tempfile.mkdtemp(prefix="fastmlp-plan-")
    os.environ["FASTMLP_CACHE_DIR"] = tmp
    lines = []
    try:
        W.fastmlp_model(W.A128, "cython", args.threads).fit(X[:512], y[:512], epochs=1, batch_size=128, verbose=0)
        times, plans = [], []
        for label in ("first fit, empty cache", "second fit, cached", "forced to the same variant"):
            model = W.fastmlp_model(W.A128, "cython", args.threads)
            kw = {"plan": plans[0]["variant"]} if label.startswith("forced") and plans[0]["how"] != "rule" else {}
            time.sleep(args.settle)
            t0 = time.perf_counter()
            model.fit(X, y, epochs=epochs, batch_size=128, verbose=0, **kw)
            times.append(time.perf_counter() - t0)
            plans.append(model.plan_)
            log(f"planner cost: {label} {times[-1]:.3f} s")
        lines.append(f"planner cost (A b128, {epochs} epochs of {X.shape[0]} rows of {source}, {args.threads} threads, "
                     "wall time of the whole fit, one run each: indicative on a shared machine):")
        for label, t, p in zip(("first fit, empty cache", "second fit, cached", "forced to the same variant"),
                               times, plans):
            cost = f"; measurement {p['cost_s']:.3f} s, {p['timed_steps']} timed steps of {p['fit_steps']}" \
                if p.get("cost_s") else ""
            lines.append(f"  {label:28s} {t:.3f} s  variant {p['variant']} ({p['reason']}){cost}")
    finally:
        if saved is None:
            os.environ.pop("FASTMLP_CACHE_DIR", None)
        else:
            os.environ["FASTMLP_CACHE_DIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
    return lines
