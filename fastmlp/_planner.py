"""The planner: which variant of the training loop a fit runs on, measured on the fit's own buffers.

The Cython loop has up to three variants for a fit (``codes.Variant``):
``serial`` (one thread of its own, the products on the BLAS's threads),
``split`` (the batch's rows split between threads of its own, one BLAS thread
each) and ``packed`` (split, with the float32 dense units of at least
``pk_min_weights`` weights on packgemm.h's kernels). The constants of
``policy.pyx`` (the "rule") pick one per instruction set; the planner times
the valid candidates instead, for a few steps each, on a copy of the
parameters and of the optimizer's state (the model's training is not
changed: a planned fit is bit-identical to a fit with the chosen variant
forced), within at most ``BUDGET`` (2%) of the fit's expected time, and not
at all for fits too short to matter (the rule decides). The decision is
cached on disk per machine and fit shape (:func:`cache_key`), so that the
next fit with the same key pays nothing.

What to do comes from ``fit(plan=...)``, else ``FASTMLP_PLAN``, else "auto":

* "auto": the cached decision, else measure (when the fit is long enough);
* "measure": measure again, whatever the cache holds or the fit's length;
* "rule": the constants, no measurement;
* "serial", "split", "packed": that variant, forced (an error where it is not
  valid for the fit).

The cache is one JSON file, ``plans.json``, in ``$FASTMLP_CACHE_DIR``, else
``$XDG_CACHE_HOME/fastmlp``, else ``~/.cache/fastmlp``; written atomically
(a temporary file renamed over it); a corrupt or unreadable file is ignored
and a directory that cannot be written leaves the fit undisturbed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ._native import codes as _codes
from ._native import plan as _plan

MODES = ("auto", "measure", "rule")
VARIANTS = {"serial": _codes.Variant.SERIAL, "split": _codes.Variant.SPLIT, "packed": _codes.Variant.PACKED}
CHOICES = MODES + tuple(VARIANTS)
ENV = "FASTMLP_PLAN"
CACHE_ENV = "FASTMLP_CACHE_DIR"
CACHE_FILE = "plans.json"
CACHE_VERSION = 1

BUDGET = 0.02            # the most the measurement may cost, as a fraction of the fit's expected time
MIN_FIT_SECONDS = 3.0    # fits expected to take less are left to the rule ("too short to matter")
# The calls are sized to spend this fraction of the budget: the steps timed at the start of a fit
# can run slower than its average (measured on A b128: 7.05 against 4.0 ms), and the budget
# is the bound, not the target.
PLAN_SHARE = 0.5
ROUNDS = 3               # timed calls per candidate, interleaved (the best one counts)
# A candidate whose first step is this many times the fastest's is not timed further (a BLAS
# fighting for busy cores can be 50 times slower), nor, after the first round, one this many
# times the fastest; the rule's variant is timed in every round.
DROP = 4.0
DROP_AFTER = 1.5
MIN_STEPS = 2            # the fewest steps of a timed call of the rule's variant (others: 1)
MAX_STEPS = 32           # the most steps of a timed call
KEEP_RULE = 1.02         # the rule's variant stays unless another is more than 2% faster


def check_choice(value, name="plan"):
    """``value`` if it is one of :data:`CHOICES`, else a ValueError naming them."""
    if not (isinstance(value, str) and value in CHOICES):
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in sorted(CHOICES))}, got {value!r}.")
    return value


def requested(plan=None):
    """``(choice, source)``: ``plan`` when given (source "plan="), else ``FASTMLP_PLAN``
    when set and not empty, else ``("auto", None)``; checked."""
    if plan is not None:
        return check_choice(plan, "plan"), "plan="
    env = os.environ.get(ENV, "").strip()
    if env:
        return check_choice(env, ENV), ENV
    return "auto", None


# ------------------------------------------------------------------ candidates
def _runtime_threads(threads):
    """The loop's thread bound in a fit whose policy gave ``threads`` (None: the runtime's default)."""
    from ._native import runtime as _runtime

    return _runtime.get_num_threads() if threads is None else int(threads)


def candidates(model, batch_size, threads):
    """``(rule, valid)``: the variant the rule takes for full batches of ``batch_size`` rows
    under the fit's thread policy ``threads`` (``model._fit_threads``' value), and every
    valid variant by name with its ``(loop threads, packed units)``, the rule's first."""
    if model.backend.NAME != "cython":
        return "serial", {"serial": (1, ())}
    from ._native import policy as _policy

    recs = model._records(model._train_acts, batch_size, dropout=True)
    n, single, rt = model._params.size, model.dtype.itemsize == 4, _runtime_threads(threads)
    nt, packed = _policy._loop_path(recs, n, batch_size, rt, single, int(_codes.Variant.RULE))
    rule = "packed" if packed else "split" if nt > 1 else "serial"
    valid = {}
    for name, code in VARIANTS.items():
        nt, packed = _policy._loop_path(recs, n, batch_size, rt, single, int(code))
        if name == "serial" or (nt > 1 and (name == "split" or packed)):
            valid[name] = (nt, tuple(packed))
    return rule, {rule: valid[rule], **valid}


def check_request(model, choice, source, batch_size, threads):
    """A ValueError before any work when ``choice`` forces a variant this fit cannot run."""
    if choice in VARIANTS:
        _, valid = candidates(model, batch_size, threads)
        if choice not in valid:
            raise ValueError(
                f"{source} asks for the {choice!r} loop variant, which this fit cannot run ({_why_not(model, choice)}); "
                f"valid here: {', '.join(repr(v) for v in sorted(valid))}, or 'auto', 'measure', 'rule'.")


def _why_not(model, choice):
    if model.backend.NAME != "cython":
        return f"the {model.backend.NAME} backend has one loop"
    if choice == "packed" and model.dtype.itemsize != 4:
        return "the packed kernels are float32 only"
    if model._has_batchnorm:
        return "batch norm needs the whole batch: the loop does not split"
    return "the loop cannot split it: one thread, too few rows per thread, or a build without OpenMP"


# ------------------------------------------------------------------ the cache
def cpu_model():
    """The CPU's model string (/proc/cpuinfo's "model name", else platform's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=None)
def _file_hash(path, mtime_ns, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def build_id():
    """fastmlp's version and a hash of the compiled loop and policy modules (their flags are in them)."""
    from . import __version__
    from ._native import loop as _loop
    from ._native import policy as _policy

    parts = [__version__]
    for mod in (_loop, _policy):
        st = os.stat(mod.__file__)
        parts.append(_file_hash(mod.__file__, st.st_mtime_ns, st.st_size))
    return "-".join(parts)


def cache_key(model, batch_size, threads):
    """What a decision depends on: the machine (CPU model, logical cores, build), the loop's
    thread bound, the dtype, the unit records' kinds and shapes, the optimizer and the batch size."""
    recs = model._records(model._train_acts, batch_size, dropout=True)
    units = [[int(r["kind"]), int(r["fan_in"]), int(r["fan_out"]), int(r["act"])] for r in recs]
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "build": build_id(),
            "threads": _runtime_threads(threads), "dtype": model.dtype.name, "units": units,
            "optimizer": "none" if model.optimizer is None else _codes.Opt(model.optimizer.kind).name.lower(),
            "batch_size": int(batch_size)}


def _key_text(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir():
    """Where the decisions are kept: $FASTMLP_CACHE_DIR, $XDG_CACHE_HOME/fastmlp or ~/.cache/fastmlp."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fastmlp"
    return Path.home() / ".cache" / "fastmlp"


def _read(path):
    """The cache's entries (a dict), or {} when the file is missing, unreadable or not ours."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not (isinstance(doc, dict) and doc.get("version") == CACHE_VERSION and isinstance(doc.get("entries"), dict)):
        return {}
    return {k: e for k, e in doc["entries"].items() if isinstance(e, dict) and isinstance(e.get("key"), dict)}


def lookup(key):
    """The cached entry of ``key`` (a dict with "variant" and "timings"), or None."""
    entry = _read(cache_dir() / CACHE_FILE).get(_key_text(key))
    if (isinstance(entry, dict) and entry.get("key") == key and entry.get("variant") in VARIANTS
            and isinstance(entry.get("timings"), dict)):
        return entry
    return None


def store(key, entry):
    """Add ``entry`` under ``key`` to the cache (atomically); None, or why it could not be written."""
    folder = cache_dir()
    path = folder / CACHE_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        entries = _read(path)
        entries[_key_text(key)] = dict(entry, key=key)
        fd, tmp = tempfile.mkstemp(prefix=".plans-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with _suppress_os():
                os.unlink(tmp)
            raise
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class _suppress_os:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


# -------------------------------------------------------------- measurement
def _run_steps(backend, plan, loop, X, target, sw, order, n_steps):
    """One timed training call of ``n_steps`` steps: (seconds, steps done). Tests count its calls."""
    losses, correct = np.empty(n_steps), np.empty(n_steps)
    t0 = time.perf_counter()
    done = backend.train_steps(plan, loop, X, target, sw, order, 0, n_steps, losses, correct)
    return time.perf_counter() - t0, done


class _Trial:
    """A copy of the model's parameters and optimizer state, on which candidates are timed."""

    def __init__(self, model, X, target, sw, batch_size, clip_norm, clip_value):
        self.model, self.X, self.target, self.sw = model, X, target, sw
        self.clip_norm, self.clip_value = clip_norm, clip_value
        recs = model._records(model._train_acts, batch_size, dropout=True)
        self.params = model._params.copy()
        self.plan = _plan.Plan(recs, self.params, np.zeros_like(model._grads), batch_size, loss=model._loss_kind,
                               training=True, weighted=model._weighted)
        self.order = np.random.default_rng(0).permutation(X.shape[0]).astype(np.int64)
        self.states = [s.copy() for s in model.optimizer.states()]
        # The loop's phase timer gives the steps' own time, without the call's (waking the loop's
        # threads, pinning the BLAS, packing: about 10 ms a call on a loaded 2-core machine, which
        # a fit's calls of 0.1-1 s amortize and a timed call of a few steps would not). Used only
        # when nobody else is timing (its totals are 0).
        from ._native import runtime as _runtime

        self.runtime = _runtime
        self.phase_timer = not any(_runtime.loop_phase_times(reset=False).values())

    def time(self, variant, n_steps):
        """``(seconds per step, steps done)`` of a call of ``n_steps`` steps of ``variant``: the
        loop's own time (the phase timer's), else the call's wall time."""
        opt = self.model.optimizer
        loop = opt.loop_state(self.clip_norm, 0, n_steps, self.clip_value, int(VARIANTS[variant]))
        loop.state1, loop.state2 = self.states  # the copies: the model's own state is not touched
        if self.phase_timer:
            self.runtime.loop_phase_times(enable=True, reset=True)
        try:
            seconds, done = _run_steps(self.model.backend, self.plan, loop, self.X, self.target, self.sw,
                                       self.order, n_steps)
        finally:
            if self.phase_timer:
                inside = sum(self.runtime.loop_phase_times(enable=False, reset=True).values())
        if self.phase_timer and inside > 0.0:
            seconds = inside
        return (seconds / done if done else np.inf), done


def measure(model, X, target, sw, batch_size, fit_steps, names, clip_norm, clip_value, force=False):
    """Time the variants ``names`` (the rule's first) on a copy of the model's state.

    The budget is ``BUDGET`` of the fit's expected time, the fit's steps times the
    fastest step seen so far (so it shrinks as the timings come in: first calls
    are slow). One step of each variant first (first calls, thread pools),
    dropping those over ``DROP`` times the fastest (never the rule's); then up to
    ``ROUNDS`` interleaved calls per candidate, each candidate's steps set so that
    they take an equal share of what is left of the budget (a slow one fewer, at
    least one); no call starts that would overrun it (the first round must time
    every candidate, else no decision). A variant's time is its best call's, by
    the loop's phase timer where it can be used (the steps' own time, without the
    call's), and the budget is spent in wall time.

    Returns a dict: "variant" (the fastest, or None when the fit is too short to
    measure or the budget too small), "timings" (seconds per step by name),
    "cost_s", "timed_steps", "expected_fit_s" (the fit's steps times the fastest
    step), "budget_s" (BUDGET of that) and "why" (for None). ``force``
    ("measure") measures whatever the budget, with the fewest steps.
    """
    trial = _Trial(model, X, target, sw, batch_size, clip_norm, clip_value)
    max_steps = min(MAX_STEPS, X.shape[0] // batch_size)
    out = {"variant": None, "timings": {}, "cost_s": 0.0, "timed_steps": 0, "expected_fit_s": None, "budget_s": None,
           "why": ""}
    t_start = time.perf_counter()
    est = {}  # the best seconds per step seen of each variant

    def spent():
        return time.perf_counter() - t_start

    def budget():
        return BUDGET * fit_steps * min(est.values())

    def run(name, k):
        per_step, done = trial.time(name, k)
        out["timed_steps"] += k
        if done == k:
            est[name] = min(est.get(name, np.inf), per_step)
        return done == k

    def too_short():
        return (f"too short to measure: {BUDGET:.0%} of the fit's {fit_steps * min(est.values()):.2g} s does not "
                f"cover {MIN_STEPS} timed steps of each candidate")

    best = {}
    if not run(names[0], 1):
        out["why"] = "the loss is not finite at the first step"
    elif not force and fit_steps * est[names[0]] < MIN_FIT_SECONDS:
        out["why"] = f"too short to measure (about {fit_steps * est[names[0]]:.2g} s expected)"
    else:
        for name in names[1:]:
            if not force and spent() >= budget():
                break
            run(name, 1)
        if any(n not in est for n in names) and not force:
            out["why"] = too_short()
        live = [n for n in names if n in est and (n == names[0] or est[n] <= DROP * min(est.values()))]
        for r in range(ROUNDS if not out["why"] else 0):
            # each candidate gets the same share of what is left: a slow one fewer steps
            share = (PLAN_SHARE * budget() - spent()) / ((ROUNDS - r) * len(live))
            steps = {n: min(max_steps, int(share / est[n])) for n in live}
            if steps[names[0]] < MIN_STEPS:
                if r == 0 and not force:
                    out["why"] = too_short()
                if not (force and r == 0):
                    break
            over = False
            for name in live:
                k = min(max_steps, max(steps[name], MIN_STEPS if force else 1))
                if not force and spent() + k * est[name] > budget():
                    over = True
                    break
                if run(name, k):
                    best[name] = est[name]
            if over:
                if r == 0:
                    out["why"] = too_short()
                break
            if r == 0:  # a second look only at the candidates that could still win
                live = [n for n in live if n in best and (n == names[0] or best[n] <= DROP_AFTER * min(best.values()))]
        if not out["why"] and not best:
            out["why"] = "the loss is not finite within the timed steps"
    if best and not out["why"]:
        out["timings"] = best
        fastest = min(best, key=best.get)
        rule = names[0]
        out["variant"] = rule if rule in best and best[rule] <= KEEP_RULE * best[fastest] else fastest
    if est:
        out["expected_fit_s"], out["budget_s"] = fit_steps * min(est.values()), budget()
    out["cost_s"] = spent()
    return out


# ------------------------------------------------------------------ decision
def decide(model, X, target, sw, batch_size, threads, fit_steps, choice, source, clip_norm=0.0, clip_value=0.0):
    """The fit's plan: a dict ("variant", "code", "how", "reason", "timings", "key", and the
    measurement's cost where it ran), for ``model.plan_``. ``choice`` and ``source`` come
    from :func:`requested` (and :func:`check_request` passed)."""
    rule, valid = candidates(model, batch_size, threads)
    plan = {"variant": rule, "code": int(_codes.Variant.RULE), "how": "rule", "reason": "", "timings": {},
            "candidates": list(valid), "key": None, "cost_s": 0.0, "timed_steps": 0, "fit_steps": int(fit_steps)}
    if choice in VARIANTS:
        plan.update(variant=choice, code=int(VARIANTS[choice]), how="forced", reason=f"forced by {source}")
        return plan
    if choice == "rule":
        plan["reason"] = f"rule: asked by {source}"
        return plan
    if len(valid) == 1:
        plan["reason"] = (f"rule: the only valid variant ({_why_not(model, 'split')})" if model.backend.NAME == "cython"
                          else f"rule: the {model.backend.NAME} backend has one loop")
        return plan
    key = plan["key"] = cache_key(model, batch_size, threads)
    if choice == "auto":
        hit = lookup(key)
        if hit is not None and hit["variant"] in valid:
            plan.update(variant=hit["variant"], code=int(VARIANTS[hit["variant"]]), how="cached",
                        timings=dict(hit["timings"]), reason="cached: " + _timings_text(hit["timings"]))
            return plan
        if fit_steps * BUDGET < len(valid) * (1 + 2 * MIN_STEPS):
            plan["reason"] = f"rule: too short to measure ({fit_steps} steps)"
            return plan
    got = measure(model, X, target, sw, batch_size, fit_steps, list(valid), clip_norm, clip_value,
                  force=choice == "measure")
    plan.update(cost_s=got["cost_s"], timed_steps=got["timed_steps"], expected_fit_s=got["expected_fit_s"],
                budget_s=got["budget_s"])
    if got["variant"] is None:
        plan["reason"] = f"rule: {got['why']}"
        return plan
    plan.update(variant=got["variant"], code=int(VARIANTS[got["variant"]]), how="measured", timings=got["timings"],
                reason="measured: " + _timings_text(got["timings"]))
    failed = store(key, {"variant": got["variant"], "timings": got["timings"], "rule": rule,
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if failed:
        plan["reason"] += f" (not cached: {failed})"
    return plan


def _timings_text(timings):
    return ", ".join(f"{name} {1e3 * t:.3g} ms/step" for name, t in sorted(timings.items(), key=lambda kv: kv[1]))


def cached_variant(model, batch_size, threads):
    """What an "auto" fit would take from the cache now, without measuring: ``(variant, reason)``
    or ``(None, None)`` (for loop_path and summary)."""
    try:
        choice, source = requested()
    except ValueError:
        return None, None
    rule, valid = candidates(model, batch_size, threads)
    if choice in VARIANTS:
        return (choice, f"forced by {source}") if choice in valid else (None, None)
    if choice != "auto" or len(valid) == 1:
        return None, None
    hit = lookup(cache_key(model, batch_size, threads))
    if hit is not None and hit["variant"] in valid:
        return hit["variant"], "planner: cached measurement, " + _timings_text(hit["timings"])
    return None, None
