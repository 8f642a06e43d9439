"""No native entry point may touch memory it does not own.

Every kernel of the contract (fastmlp._native.contract.KERNELS, plus gemm),
train_steps, make_predictor and a predictor's run are called by every native
backend with each of their buffers one element too short (a row or a column
fewer), and each call must raise ValueError (IndexError for indices) before
any work. The calls run in a subprocess, so that a crash fails the test
instead of killing the test run; the subprocess prints each case before it
runs it, so a crash names its case.
"""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp._native import contract
from fastmlp._native.codes import Act
from fastmlp.backends import reference as ref

from conftest import NATIVE_BACKENDS

SIZES = {"n": 5, "k": 4, "d": 3, "N": 7, "m": 6, "4": 4, "2": 2}
SCALARS = dict(act=int(Act.TANH), alpha=0.1, l2=0.01, lr=0.1, momentum=0.9, nesterov=False, rho=0.9,
               eps=1e-5, beta1=0.9, beta2=0.999, step=1, factor=0.5, seed=1, unit=0, rate=0.3)


def _array(shape, kind, dt, rng):
    shape = tuple(SIZES[s.split("|")[0]] for s in shape)
    if kind == "lab":
        return rng.integers(0, SIZES["k"], shape).astype(np.int64)
    if kind.startswith("idx"):
        return rng.integers(0, SIZES["N"] - 1, shape).astype(np.int64)  # rows short of the last one
    return np.ascontiguousarray(rng.uniform(0.5, 1.5, shape), dtype=dt)


def _shorter(a):
    """The arrays one element too short of a: a row fewer, or a column fewer."""
    if a.ndim == 1:
        return [a[:-1].copy()]
    return [np.ascontiguousarray(a[:-1]), np.ascontiguousarray(a[:, :-1])]


def _constrained(kernel, name):
    """The dimensions of an argument that another argument pins: only those can be too short."""
    spec = {arg: shape for arg, shape, _ in contract.KERNELS[kernel]}
    shape = spec[name][0] if isinstance(spec[name][0], tuple) else spec[name]
    others = [s for arg, sh in spec.items() if arg != name
              for s in (sh[0] if isinstance(sh[0], tuple) else sh)]
    return [i for i, sym in enumerate(shape) if sym.split("|")[0] in {o.split("|")[0] for o in others}
            or sym in ("4", "2")]


def kernel_cases(dt):
    """(label, kernel name, arguments, valid) of a valid call of each def kernel and of every
    call with an argument one element short."""
    rng = np.random.default_rng(0)
    for kernel, spec in contract.KERNELS.items():
        params = list(inspect.signature(getattr(ref, kernel)).parameters)
        arrays = {name: _array(shape[0] if isinstance(shape[0], tuple) else shape, kind, dt, rng)
                  for name, shape, kind in spec}
        yield f"{kernel}, valid", kernel, [arrays[p] if p in arrays else SCALARS[p] for p in params], True
        for name, shape, kind in spec:
            dims = _constrained(kernel, name)
            for which, short in enumerate(_shorter(arrays[name])):
                axis = 0 if arrays[name].ndim == 1 or which == 0 else 1
                if axis not in dims:
                    continue
                args = [short if p == name else arrays[p] if p in arrays else SCALARS[p] for p in params]
                yield f"{kernel}({name} {short.shape})", kernel, args, False
    A, B, C = (np.ones(s, dt) for s in ((5, 3), (3, 4), (5, 4)))
    yield "gemm, valid", "gemm", [A, B, C, False, False, 0.0], True
    for name, which in (("A", 0), ("B", 1), ("C", 2)):
        for short in _shorter((A, B, C)[which]):
            args = [A, B, C]
            args[which] = short
            yield f"gemm({name} {short.shape})", "gemm", args + [False, False, 0.0], False


def _model(backend, dt, layers):
    m = fastmlp.Sequential(layers, input_dim=6, dtype=dt, seed=0, backend=backend)
    m.compile(loss="cross_entropy", optimizer=fastmlp.optim.Adam(1e-2))
    return m


def loop_cases(backend, dt):
    """(label, callable, valid) of valid calls of train_steps, make_predictor and run, and of every
    call with a buffer one element short."""
    from fastmlp import BatchNorm, Dense, Dropout

    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 6)).astype(dt)
    y = rng.integers(0, 3, 20).astype(np.int64)
    order = np.arange(20, dtype=np.int64)
    nets = {"dropout": [Dense(8, activation="relu"), Dropout(0.5), Dense(3)],
            "batchnorm": [Dense(8, use_bias=False), BatchNorm(), Dense(7, activation="tanh"), Dense(3)]}
    for net, layers in nets.items():
        m = _model(backend, dt, layers)
        m.optimizer.init_state(m._params.size, m.dtype)
        be = m.backend

        def fresh():
            return m._make_plan(m._train_acts, 4, training=True, dropout=True), m.optimizer.loop_state(0.0, 7)

        def call(plan, loop, X=X, y=y, sw=np.empty(0, dt), order=order, losses=None, correct=None):
            return lambda: be.train_steps(plan, loop, X, y, sw, order, 0, 5,
                                          np.zeros(5) if losses is None else losses,
                                          np.zeros(5) if correct is None else correct)

        plan, loop = fresh()
        yield f"{net}: the valid call", call(plan, loop), True
        for field in ("x", "P", "y", "params", "grads"):
            for short in _shorter(getattr(plan, field)):
                p, lp = fresh()
                setattr(p, field, short)
                yield f"{net}: plan.{field} {short.shape}", call(p, lp), False
        for field in ("Z", "A", "dA", "M"):
            for i, buf in enumerate(getattr(plan, field)):
                if buf.size == 0:
                    continue
                for short in _shorter(buf):
                    p, lp = fresh()
                    getattr(p, field)[i] = short
                    yield f"{net}: plan.{field}[{i}] {short.shape}", call(p, lp), False
        for field in ("state1", "state2"):
            p, lp = fresh()
            setattr(lp, field, getattr(lp, field)[:-1].copy())
            yield f"{net}: loop.{field} short", call(p, lp), False
        p, lp = fresh()
        lp.hyper = lp.hyper[:0]
        yield f"{net}: loop.hyper empty", call(p, lp), False
        for name, kw in (("X", dict(X=X[:, :-1].copy())), ("y", dict(y=y[:-1].copy())),
                         ("sw", dict(sw=np.ones(19, dt))), ("order", dict(order=order[:19].copy())),
                         ("losses_out", dict(losses=np.zeros(4))), ("correct_out", dict(correct=np.zeros(4)))):
            p, lp = fresh()
            yield f"{net}: {name} short", call(p, lp, **kw), False
        # the predictor: its plan's buffers, then run's X and out
        infer = m._make_plan(m._infer_acts, 4)
        yield f"{net}: make_predictor, valid", (lambda pl=infer: be.make_predictor(pl)), True
        for field in ("x", "params"):
            for short in _shorter(getattr(infer, field)):
                p = m._make_plan(m._infer_acts, 4)
                setattr(p, field, short)
                yield f"{net}: make_predictor plan.{field} {short.shape}", (lambda pl=p: be.make_predictor(pl)), False
        for field in ("Z", "A"):
            for i, buf in enumerate(getattr(infer, field)):
                for short in _shorter(buf):
                    p = m._make_plan(m._infer_acts, 4)
                    getattr(p, field)[i] = short
                    yield (f"{net}: make_predictor plan.{field}[{i}] {short.shape}",
                           (lambda pl=p: be.make_predictor(pl)), False)
        pred = be.make_predictor(m._make_plan(m._infer_acts, 4))
        yield f"{net}: run, valid", (lambda: pred.run(X[:4].copy(), np.empty((4, 3), dt))), True
        for label, Xr, out in (("X", X[:4, :-1].copy(), np.empty((4, 3), dt)),
                               ("out rows", X[:4].copy(), np.empty((3, 3), dt)),
                               ("out columns", X[:4].copy(), np.empty((4, 2), dt))):
            yield f"{net}: run, {label} short", (lambda a=Xr, b=out: pred.run(a, b)), False


def _run_all(backend):
    """Run every case of a backend (in the subprocess); print one JSON line per case."""
    be = fastmlp.get_backend(backend)
    for dt in (np.float32, np.float64):
        for label, kernel, args, valid in kernel_cases(dt):
            print(json.dumps({"case": f"{dt.__name__} {label}", "started": True}), flush=True)
            print(json.dumps({"case": f"{dt.__name__} {label}", "got": _outcome(lambda: getattr(be, kernel)(*args)),
                              "valid": valid}), flush=True)
        for label, fn, valid in loop_cases(backend, dt):
            print(json.dumps({"case": f"{dt.__name__} {label}", "started": True}), flush=True)
            print(json.dumps({"case": f"{dt.__name__} {label}", "got": _outcome(fn), "valid": valid}), flush=True)


def _outcome(fn):
    try:
        with np.errstate(all="ignore"):
            fn()
    except (ValueError, IndexError) as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported, and fails the test
        return f"UNEXPECTED {type(exc).__name__}: {exc}"
    return "ran"


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_every_buffer_one_element_short_raises(backend):
    here = os.path.dirname(__file__)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_safety; test_safety._run_all({backend!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(here))
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [r["case"] for r in lines if r.get("started")]
    done = {r["case"]: r for r in lines if "got" in r}
    assert proc.returncode == 0, (f"the subprocess died (code {proc.returncode}) in case "
                                  f"{started[-1] if started else None!r}:\n{proc.stderr[-3000:]}")
    assert len(done) == len(started) > 100, (len(done), len(started))
    wrong = {case: r["got"] for case, r in done.items()
             if (r["got"] != "ran") == bool(r.get("valid")) or r["got"].startswith("UNEXPECTED")}
    assert not wrong, wrong
    # the errors say what is wrong: a shape, a length, a size or the parameters
    for case, r in done.items():
        if not r.get("valid"):
            assert any(w in r["got"] for w in ("shape", "length", "expected", "must", "outside", "reach", "rows", "columns")), (case, r)
