"""``Sequential.summary()`` and ``Sequential.loop_path()``: what a model is and how it would train.

The table follows Keras' ``Model.summary()`` (layer and type, output shape,
parameter count; total, trainable and non-trainable parameters, the batch-norm
running statistics being non-trainable as in Keras), and adds what fastmlp
compiles the layers into: the native units (a Dense layer and the Activation
after it run as one unit), the dtype, the backend, the loss and optimizer, and
the loop path the next ``fit`` would take (:func:`loop_path`).
"""
from dataclasses import dataclass

from . import _validation
from . import activations as _act
from .layers import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU, Residual

DEFAULT_BATCH_SIZE = 32  # fit's default, used before any fit
DEFAULT_LINE_LENGTH = 78
_POSITIONS = (0.40, 0.68, 0.86, 1.0)  # right edges of the four columns, as fractions of the line
_TYPE_NAMES = {Dense: "dense", Activation: "activation", BatchNorm: "batch_norm", Dropout: "dropout", PReLU: "p_re_lu",
               Maxout: "maxout", Residual: "residual"}


def _not_built(what):
    return ValueError(
        f"This model has not yet been built: {what} needs the number of input features. Build it with "
        "model.build(input_dim), pass Sequential(..., input_dim=...), or call fit first.")


@dataclass(frozen=True)
class LoopPath:
    """The path of the training loop for full batches of ``batch_size`` rows.

    Attributes
    ----------
    backend : str
        The backend's name ("cython", "numba", "reference").
    batch_size : int
    n_threads : int or None
        The thread bound the fit sets for BLAS and the backend (None: the
        libraries' defaults are left alone).
    loop_threads : int
        Threads of its own the training loop runs on (> 1: the Cython loop
        splits each batch's rows between them).
    packed_units : tuple of int
        Indices of the units whose products run on packed float32 operands.
    path : {"serial", "split", "packed"}
    description : str
        One line saying the above in words.
    plan : str
        Who chose the path (fastmlp._planner): "rule" (the loop's constants), the
        planner's cached measurement, a forced variant, or the last fit's
        ``plan_`` when it was of this batch size and thread bound.
    """

    backend: str
    batch_size: int
    n_threads: object
    loop_threads: int
    packed_units: tuple
    path: str
    description: str
    plan: str = "rule"

    def __str__(self):
        return self.description


def loop_path(model, batch_size=None, n_threads=None):
    """The :class:`LoopPath` a ``model.fit(..., batch_size=batch_size, n_threads=n_threads)``
    would take now (the same thread policy as fit, and for the Cython backend the
    compiled loop's own rule, asked without training).

    ``batch_size`` defaults to the last fit's (after fit capped it at the number
    of rows), else 32; a last partial batch is trained on a plan of its own and
    may take another path.
    """
    if not model.built:
        raise _not_built("loop_path()")
    if batch_size is None:
        batch_size = getattr(model, "_fit_batch_size", DEFAULT_BATCH_SIZE)
    batch_size = _validation.check_positive_int(batch_size, "batch_size")
    if n_threads is not None:
        n_threads = _validation.check_positive_int(n_threads, "n_threads")
    bound = model._fit_threads(n_threads, batch_size)
    blas = "one BLAS thread" if bound == 1 else (
        "BLAS on its default threads" if bound is None else f"BLAS on {bound} threads")
    asked = n_threads if n_threads is not None else model.n_threads
    small = bound == 1 and asked != 1  # fit's own policy chose one thread
    why = " (each product is below BLAS's threading threshold, so the fit runs on one thread)" if small else ""
    name = model.backend.NAME
    nt, packed, chosen = 1, (), "rule"
    if name == "cython":
        from . import _planner
        from ._native import codes as _codes
        from ._native import policy as _policy
        from ._native import runtime as _runtime

        rt_threads = _runtime.get_num_threads() if bound is None else bound  # what fit leaves or sets
        recs = model._records(model._train_acts, batch_size, dropout=True)
        variant, chosen = _plan_of(model, batch_size, bound)
        code = int(_codes.Variant.RULE) if variant is None else int(_planner.VARIANTS[variant])
        chosen = chosen or "rule"
        nt, packed = _policy._loop_path(recs, model._params.size, batch_size, rt_threads,
                                        model.dtype.itemsize == 4, code)
        if packed:
            path = "packed"
            text = (f"split loop on {nt} threads of its own, units {', '.join(map(str, packed))} on packed "
                    "float32 kernels, the others in place with one BLAS thread each")
        elif nt > 1:
            path = "split"
            text = f"split loop: {nt} threads of its own share each batch's rows, one BLAS thread each"
        else:
            path = "serial"
            text = f"the compiled loop on one thread of its own, products on {blas}"
            if rt_threads > 1 and variant is None:
                why = (" (batch norm needs the whole batch: the loop does not split)" if model._has_batchnorm
                       else " (this build cannot split the loop)" if not _policy._HAVE_LOOP_THREADS
                       else " (the step is too small for the loop to split it)")
    elif name == "numba":
        path = "serial"
        text = f"the compiled Numba loop, serial element-wise kernels, products on {blas}"
    else:
        path = "serial"
        text = f"a Python loop over the steps (NumPy kernels), products on {blas}"
    if chosen != "rule":
        why += f" [{chosen}]"
    return LoopPath(name, batch_size, bound, nt, tuple(packed), path, text + why, chosen)


def _plan_of(model, batch_size, bound):
    """``(variant or None, who chose it)`` for a fit of this batch size and thread policy:
    the last fit's ``plan_`` when it had the same key, else what the planner's cache or
    FASTMLP_PLAN gives now, else (None, None): the rule."""
    from . import _planner

    last = getattr(model, "plan_", None)
    if isinstance(last, dict) and last.get("how") != "rule" and last.get("key") is not None:
        try:
            same = last["key"] == _planner.cache_key(model, batch_size, bound)
        except (OSError, AttributeError):
            same = False
        if same:
            return last["variant"], f"planner: {last['reason']} (the last fit)"
    return _planner.cached_variant(model, batch_size, bound)


# ------------------------------------------------------------------ the table
def _layer_rows(model):
    """Per layer: (name, type, width, params, non-trainable params, unit index or None), and the units;
    a residual block's row (its parameters: its layers' and its projection's) is followed by its
    layers' rows, their names indented."""
    units = model._compile_units(model.input_dim)  # fresh: the units' layer indices, whatever the model's age
    unit_of = {}
    for i, u in enumerate(units):
        for j in u.layers:
            unit_of.setdefault(j, i)  # a block's row: its start unit
    counts, rows, width = {}, [], model.input_dim
    block = None  # (its row, its input width)
    for j, (layer, depth) in enumerate(model._flat_layers()):
        if block is not None and depth == 0:
            _close_block(rows, block, width)
            block = None
        base = _TYPE_NAMES[type(layer)]
        k = counts[base] = counts.get(base, -1) + 1
        params = frozen = 0
        if isinstance(layer, Residual):
            block = (len(rows), width)
        elif isinstance(layer, Dense):
            params = width * layer.units + (layer.units if layer.use_bias else 0)
            width = layer.units
        elif isinstance(layer, Maxout):
            params = width * layer.units * layer.pieces + (layer.units * layer.pieces if layer.use_bias else 0)
            width = layer.units
        elif isinstance(layer, BatchNorm):
            params, frozen = 4 * width, 2 * width  # gamma, beta trained; running mean, var not (Keras)
        elif isinstance(layer, PReLU):
            params = 1 if layer.shared else width
        rows.append(("  " * depth + (base if k == 0 else f"{base}_{k}"), type(layer).__name__, width, params, frozen,
                     unit_of.get(j)))
    if block is not None:
        _close_block(rows, block, width)
    return rows, units


def _close_block(rows, block, width):
    """Fill in a residual block's row: its output width, its layers' parameters and its projection's."""
    at, d = block
    inner = rows[at + 1:]
    name, kind, _, _, _, unit = rows[at]
    params = sum(r[3] for r in inner) + (d * width if width != d else 0)
    rows[at] = (name, kind, width, params, 0, unit)


def _unit_text(u):
    act = _act.CODE_TO_NAME[u.act]
    if u.res == 1:
        return f"residual block start on {u.fan_out} (shortcut to unit {u.link})"
    if u.res == 2:
        return (f"residual add of unit {u.link}'s input" + (f" through a {u.fan_in}->{u.fan_out} projection"
                                                            if u.dense else "")
                + ("" if u.act == _act.IDENTITY else f" + {act}"))
    if u.bn:
        return f"batch norm {u.fan_out}"
    if u.dropout:
        return f"dropout {u.rate:g} on {u.fan_out}"
    if u.prelu:
        return f"prelu on {u.fan_out} ({'one alpha' if u.shared else 'an alpha per feature'})"
    if u.pieces:
        return f"maxout {u.fan_in}->{u.fan_out} ({u.pieces} pieces)"
    if u.dense:
        return f"dense {u.fan_in}->{u.fan_out}{'' if u.use_bias else ' (no bias)'}" + (
            "" if u.act == _act.IDENTITY else f" + {act}")
    return f"{act} on {u.fan_out}"


def _memory(n_bytes):
    """Keras' readable_memory_size: 1024-based units, two decimals."""
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"


def _row(fields, line_length):
    line, edges = "", [int(line_length * p) for p in _POSITIONS]
    for field, edge in zip(fields, edges):
        line = (line + " " + str(field))[:edge - 1].ljust(edge)
    return line.rstrip()


def summary_lines(model, line_length=None, batch_size=None, n_threads=None):
    """The lines :meth:`fastmlp.Sequential.summary` prints (see there)."""
    if not model.built:
        raise _not_built("summary()")
    line_length = DEFAULT_LINE_LENGTH if line_length is None else _validation.check_positive_int(
        line_length, "line_length")
    path = loop_path(model, batch_size, n_threads)  # checks batch_size and n_threads
    rows, units = _layer_rows(model)
    names = [r[0].strip() for r in rows]
    rule, double = "_" * line_length, "=" * line_length
    lines = ['Model: "sequential"', rule,
             _row(("Layer (type)", "Output Shape", "Param #", "Unit"), line_length), double]
    for name, kind, width, params, _, unit in rows:
        lines.append(_row((f"{name} ({kind})", f"(None, {width})", f"{params:,}",
                           "-" if unit is None else unit), line_length))
    total = model.count_params()
    frozen = sum(r[4] for r in rows)
    item = model.dtype.itemsize
    lines += [double,
              f"Total params: {total:,} ({_memory(total * item)})",
              f"Trainable params: {total - frozen:,} ({_memory((total - frozen) * item)})",
              f"Non-trainable params: {frozen:,} ({_memory(frozen * item)})",
              rule,
              f"Fused units: {len(units)} (each runs its layers in one pass of the native loop)"]
    spec = model._loss
    for i, u in enumerate(units):
        text = f" {i}: {_unit_text(u)}  <- {', '.join(names[j] for j in u.layers)}"
        if i == len(units) - 1 and spec is not None and spec.fused_act >= 0:
            text += f"; in training its {_act.CODE_TO_NAME[spec.fused_act]} is fused into the {spec.name} loss"
        lines.append(text)
    if spec is None:
        compiled = "not compiled (call compile(loss=..., optimizer=...) before fit)"
    else:
        clip = "" if model.clip_norm is None else f", clip_norm={model.clip_norm:g}"
        if getattr(model, "clip_value", None) is not None:
            clip += f", clip_value={model.clip_value:g}"
        lr = model.optimizer.lr
        lr = f"{lr:g}" if isinstance(lr, (int, float)) else repr(lr)  # a schedule shows itself
        wd = model.optimizer.weight_decay
        decay = f", weight_decay={wd:g}" if wd or model.optimizer.decoupled else ""
        compiled = f"loss={spec.name}, optimizer={type(model.optimizer).__name__}(lr={lr}{decay}){clip}"
    lines += [f"dtype: {model.dtype.name}",
              f"backend: {path.backend}",
              f"compiled: {compiled}",
              f"next fit (batch_size={path.batch_size}, n_threads={n_threads if n_threads is not None else model.n_threads}): "
              f"{path.description}",
              rule]
    return lines


def summary_text(model, line_length=None, batch_size=None, n_threads=None):
    """The summary as one string (the lines joined by newlines)."""
    return "\n".join(summary_lines(model, line_length, batch_size, n_threads))
