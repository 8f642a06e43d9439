"""Save and load models: ``model.save(path)`` and ``fastmlp.load_model(path)``.

One safetensors file (see :mod:`fastmlp._container`) per model: the tensors by stable names
(``layers.0.W``, ``layers.0.b``, ``layers.1.gamma``, ..., a residual block's
``layers.2.layers.0.W`` and projection ``layers.2.Wp``, ``optimizer.m``), and in the
header's metadata, under ``"fastmlp"``, a JSON document: the format version, the fastmlp
version, the model's configuration (layers, input_dim, dtype, loss, optimizer with its
step counter), the random generator's state, the epochs done and the history; for the
estimators also their parameters and fitted attributes (``classes_`` included).

Loading runs no code from the file (no pickle) and checks everything (names, types,
ranges, shapes, dtypes, finiteness) before it builds the model; every problem is a
:class:`ModelFileError`. A model loaded with its optimizer trains on exactly as the
saved one would have (the same shuffles, dropout masks and optimizer steps).
"""
import json
import math
import numbers

import numpy as np

from . import _container, _validation
from . import optim as _optim
from . import schedules as _schedules
from ._container import ModelFileError
from .layers import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU, Residual

FORMAT = "fastmlp.model"
#: The format version this fastmlp writes, and the newest it reads.
FORMAT_VERSION = 1

_LAYERS = {"Dense": (Dense, {"units", "activation", "use_bias", "kernel_initializer", "l2"}),
           "Activation": (Activation, {"activation"}),
           "Dropout": (Dropout, {"rate"}),
           "BatchNorm": (BatchNorm, {"momentum", "eps"}),
           "PReLU": (PReLU, {"init", "shared"}),
           "Maxout": (Maxout, {"units", "pieces", "use_bias", "kernel_initializer"}),
           "Residual": (Residual, {"layers", "activation"})}  # its layers: a list of these documents
_BN_NAMES = ("gamma", "beta", "running_mean", "running_var")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937")
_BACKENDS = (None, "auto", "cython", "numba", "reference")


def _version():
    from . import __version__
    return __version__


# ---------------------------------------------------------------- checks
def _fail(what):
    raise ModelFileError(what)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _get(doc, key, check, what, where):
    """``doc[key]`` if ``check(value)``, else a ModelFileError naming ``where.key`` and ``what`` it must be."""
    if not isinstance(doc, dict) or key not in doc:
        _fail(f"the model file's configuration has no {where}{key}; the file is corrupt or not from fastmlp.")
    value = doc[key]
    if not check(value):
        _fail(f"{where}{key} must be {what}, got {value!r:.120}.")
    return value


def _nonneg_int(v):
    return _is_int(v) and v >= 0


def _opt_int(v):
    return v is None or _nonneg_int(v)


def _real_list(v):
    return isinstance(v, list) and all(_is_real(x) for x in v)


def _check_keys(doc, allowed, where):
    extra = sorted(set(doc) - set(allowed))
    if extra:
        _fail(f"{where or 'the configuration'} has unknown keys {extra}; the file is corrupt or from another program.")


# ------------------------------------------------------------- Sequential
def _history_doc(model):
    h = getattr(model, "history", None)
    if h is None:
        return None
    return {"epoch": [int(e) for e in h.epoch], "history": {k: [float(x) for x in v] for k, v in h.history.items()}}


def sequential_state(model, include_optimizer=True, prefix=""):
    """(document, tensors) of a Sequential; tensor names start with ``prefix``.

    Parameters
    ----------
    model : Sequential
        A built model.
    include_optimizer : bool, default=True
        Include the optimizer's state vectors and step counter.
    prefix : str, default=""
        Prepended to every tensor name (the estimators nest a model under a prefix).

    Returns
    -------
    doc : dict
        The JSON-able configuration.
    tensors : dict of str to ndarray
    """
    layers = _layer_docs(model.layers)
    seed = model.seed if (model.seed is None or _is_int(model.seed)) else None
    doc = {"layers": layers, "input_dim": model.input_dim, "dtype": model.dtype.name,
           "seed": None if seed is None else int(seed), "backend": model.backend_name,
           "n_threads": model.n_threads, "rng": _rng_doc(model._rng),
           "epochs_done": int(getattr(model, "_epochs_done", 0)), "history": _history_doc(model),
           "alpha_per_batch": float(model._alpha_per_batch), "compile": None}
    tensors = {}
    if model.built:
        for name, view in zip(_weight_names(model.layers, model.input_dim), model._weight_views()):
            tensors[prefix + name] = view
    if model._loss is not None:
        opt = model.optimizer
        cls = next(name for name, c in reversed(_optim.OPTIMIZERS.items()) if isinstance(opt, c))  # AdamW first
        with_state = include_optimizer and opt.state is not None
        doc["compile"] = {"loss": model._loss.name, "clip_norm": model.clip_norm,
                          "clip_value": getattr(model, "clip_value", None),
                          "optimizer": {"class": cls, "config": _optimizer_config(opt),
                                        "t": int(opt.t) if with_state else 0, "state": with_state}}
        if with_state:
            for name in opt.state_names:
                tensors[f"{prefix}optimizer.{name}"] = opt.state[name]
    return doc, tensors


def _layer_docs(layers):
    docs = []
    for layer in layers:
        cls = next(name for name, (c, _) in _LAYERS.items() if isinstance(layer, c))
        keys = _LAYERS[cls][1]
        config = {k: v for k, v in layer.get_config().items() if k in keys}
        if cls == "Residual":
            config["layers"] = _layer_docs(layer.layers)
        docs.append({"class": cls, "config": config})
    return docs


def _optimizer_config(opt):
    config = opt.get_config()
    if opt.scheduled:  # a schedule is saved by its class name and numbers, and rebuilt from them
        config["lr"] = {"schedule": type(opt.lr).__name__, "config": opt.lr.get_config()}
    return config


def _schedule_from(doc, where):
    """A learning-rate schedule from its saved form (a class of fastmlp.schedules and numbers)."""
    if not (isinstance(doc, dict) and set(doc) == {"schedule", "config"}):
        _fail(f"{where}lr must be a number or an object with the keys 'schedule' and 'config'.")
    name, config = doc["schedule"], doc["config"]
    if name not in _schedules.SCHEDULES:
        _fail(f"{where}lr.schedule must be one of {sorted(_schedules.SCHEDULES)}, got {name!r}.")
    if not (isinstance(config, dict) and all(
            isinstance(k, str) and (v is None or isinstance(v, bool) or _is_real(v) or _real_list(v))
            for k, v in config.items())):
        _fail(f"{where}lr.config must map names to numbers, lists of numbers, booleans or null.")
    try:
        return _schedules.SCHEDULES[name](**config)
    except (ValueError, TypeError) as exc:
        _fail(f"{where}lr: {exc}")


def _rng_doc(rng):
    state = rng.bit_generator.state
    if state.get("bit_generator") not in _BIT_GENERATORS:
        raise ValueError(f"The model's random generator is a {state.get('bit_generator')}, which a model file cannot "
                         f"hold; use one of {list(_BIT_GENERATORS)} (numpy.random.default_rng gives PCG64).")
    if state["bit_generator"] == "MT19937":
        state = {**state, "state": {**state["state"], "key": [int(k) for k in state["state"]["key"]]}}
    return json.loads(json.dumps(state, default=int))


def _weight_names(layers, input_dim):
    """The tensor names of ``Sequential._weight_views()``, in its order (a residual block's
    layers are ``layers.i.layers.j``, its projection ``layers.i.Wp``, when it has one)."""
    return list(_expected_shapes(layers, input_dim))


def _expected_shapes(layers, input_dim, where="layers"):
    """name -> shape of every weight of ``layers`` on ``input_dim`` features, in get_weights' order
    (the widths, and with them whether a block has a projection, need ``input_dim``)."""
    shapes, fan_in = {}, input_dim
    for i, layer in enumerate(layers):
        if isinstance(layer, Residual):
            inner = _expected_shapes(layer.layers, fan_in, f"{where}.{i}.layers")
            width = inner.pop("", fan_in)
            shapes.update(inner)
            if width != fan_in:
                shapes[f"{where}.{i}.Wp"] = (fan_in, width)
            fan_in = width
            continue
        if isinstance(layer, Dense):
            shapes[f"{where}.{i}.W"] = (fan_in, layer.units)
            if layer.use_bias:
                shapes[f"{where}.{i}.b"] = (layer.units,)
            fan_in = layer.units
        elif isinstance(layer, Maxout):
            shapes[f"{where}.{i}.W"] = (fan_in, layer.units * layer.pieces)
            if layer.use_bias:
                shapes[f"{where}.{i}.b"] = (layer.units * layer.pieces,)
            fan_in = layer.units
        elif isinstance(layer, BatchNorm):
            for n in _BN_NAMES:
                shapes[f"{where}.{i}.{n}"] = (fan_in,)
        elif isinstance(layer, PReLU):
            shapes[f"{where}.{i}.alpha"] = (1 if layer.shared else fan_in,)
    if where != "layers":
        shapes[""] = fan_in  # a block's output width, for the caller
    return shapes


def _make_layers(docs, prefix="model.layers"):
    if not isinstance(docs, list) or not docs:
        _fail(f"{prefix} must be a non-empty list of layers, got {docs!r:.120}.")
    layers = []
    for i, d in enumerate(docs):
        where = f"{prefix}[{i}]"
        cls = _get(d, "class", lambda v: v in _LAYERS, f"one of {', '.join(sorted(_LAYERS))}", where + ".")
        config = _get(d, "config", lambda v: isinstance(v, dict), "a JSON object", where + ".")
        _check_keys(d, {"class", "config"}, where)
        factory, keys = _LAYERS[cls]
        if set(config) != keys:
            _fail(f"{where} ({cls}) must have the settings {sorted(keys)}, got {sorted(config)}.")
        if cls == "Residual":
            if prefix != "model.layers":
                _fail(f"{where}: Residual blocks do not nest.")
            inner = _make_layers(config["layers"], where + ".layers")
            config = {**config, "layers": []}
        for flag in ("use_bias", "shared"):
            if flag in config and not isinstance(config[flag], bool):
                _fail(f"{where}.{flag} must be true or false, got {config[flag]!r:.40}.")
        if not all(isinstance(v, (str, int, float, bool)) for k, v in config.items() if k != "layers"):
            _fail(f"{where} ({cls}) settings must be numbers, strings or booleans, got {config!r:.160}.")
        if cls == "Residual":
            config["layers"] = inner
        try:
            layers.append(factory(**config))
        except (ValueError, TypeError) as exc:
            _fail(f"{where} ({cls}): {exc}")
    return layers


def _make_rng(state):
    if not isinstance(state, dict) or state.get("bit_generator") not in _BIT_GENERATORS:
        _fail(f"model.rng must be the state of one of numpy's bit generators {list(_BIT_GENERATORS)}, got "
              f"{state!r:.120}.")
    bitgen = getattr(np.random, state["bit_generator"])()
    try:
        state = dict(state)
        if state["bit_generator"] == "MT19937" and isinstance(state.get("state"), dict):
            key = state["state"].get("key")
            if not (isinstance(key, list) and len(key) == 624 and all(_is_int(k) and 0 <= k < 2**32 for k in key)):
                _fail("model.rng.state.key must be 624 integers in [0, 2**32).")
            state["state"] = {**state["state"], "key": np.array(key, dtype=np.uint32)}
        bitgen.state = state
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        _fail(f"model.rng is not a valid {state['bit_generator']} state: {type(exc).__name__}: {exc}")
    return np.random.Generator(bitgen)


def _make_history(doc):
    from .model import History

    if doc is None:
        return None
    epochs = _get(doc, "epoch", lambda v: isinstance(v, list) and all(_nonneg_int(e) for e in v),
                  "a list of integers >= 0", "model.history.")
    hist = _get(doc, "history", lambda v: isinstance(v, dict) and all(isinstance(k, str) and _real_list(x)
                                                                      and len(x) == len(epochs) for k, x in v.items()),
                "a map of metric names to lists of numbers, one per epoch", "model.history.")
    _check_keys(doc, {"epoch", "history"}, "model.history")
    h = History()
    h.epoch = [int(e) for e in epochs]
    h.history = {k: [float(x) for x in v] for k, v in hist.items()}
    return h


def _check_tensor(name, arr, shape, dtype):
    if arr is None:
        _fail(f"the tensor {name!r} is missing.")
    if arr.dtype != dtype:
        _fail(f"the tensor {name!r} is {arr.dtype}, but the model is {dtype}.")
    if arr.shape != tuple(shape):
        _fail(f"the tensor {name!r} has shape {arr.shape}, but the configuration needs {tuple(shape)}.")
    if not _validation.all_finite(arr):
        kind = "NaN" if np.isnan(arr).any() else "infinity"
        _fail(f"the tensor {name!r} holds {kind}; a saved model's weights and optimizer state are finite.")


def build_sequential(doc, tensors, prefix=""):
    """A Sequential from its document and tensors (the names start with ``prefix``), every
    part checked before the model is built. Consumes the tensors it uses from ``tensors``.

    Parameters
    ----------
    doc : dict
        The model's document, as :func:`sequential_state` makes it.
    tensors : dict of str to ndarray
        The file's tensors by name.
    prefix : str, default=""
        The names' prefix.

    Returns
    -------
    Sequential
    """
    from .model import Sequential

    keys = {"layers", "input_dim", "dtype", "seed", "backend", "n_threads", "rng", "epochs_done", "history",
            "alpha_per_batch", "compile"}
    if not isinstance(doc, dict):
        _fail("the model's configuration must be a JSON object.")
    _check_keys(doc, keys, "model")
    layers = _make_layers(doc.get("layers"))
    w = "model."
    input_dim = _get(doc, "input_dim", lambda v: v is None or (_is_int(v) and 0 < v < 2**31),
                     "null or an integer > 0", w)
    dtype = _get(doc, "dtype", lambda v: v in ("float32", "float64"), "'float32' or 'float64'", w)
    seed = _get(doc, "seed", _opt_int, "null or an integer >= 0", w)
    backend = _get(doc, "backend", lambda v: v in _BACKENDS, f"one of {_BACKENDS}", w)
    n_threads = _get(doc, "n_threads", lambda v: v is None or (_is_int(v) and v > 0), "null or an integer > 0", w)
    epochs_done = _get(doc, "epochs_done", _nonneg_int, "an integer >= 0", w)
    alpha = _get(doc, "alpha_per_batch", lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
                 "a finite number >= 0", w)
    rng = _make_rng(doc.get("rng"))
    history = _make_history(doc.get("history"))
    comp = doc.get("compile")
    try:
        model = Sequential(layers, dtype=dtype, seed=seed, backend=backend, n_threads=n_threads)
    except (ValueError, TypeError) as exc:
        _fail(f"the layers do not make a model: {exc}")
    opt, with_state, t = None, False, 0
    if comp is not None:
        w = "model.compile."
        if not isinstance(comp, dict):
            _fail("model.compile must be null or a JSON object.")
        _check_keys(comp, {"loss", "clip_norm", "clip_value", "optimizer"}, "model.compile")
        loss = _get(comp, "loss", lambda v: isinstance(v, str), "a loss name", w)
        clip = _get(comp, "clip_norm", lambda v: v is None or _is_real(v), "null or a number", w)
        clip_value = comp.get("clip_value")  # files of before clip_value have none
        if not (clip_value is None or _is_real(clip_value)):
            _fail(f"{w}clip_value must be null or a number, got {clip_value!r:.120}.")
        od = _get(comp, "optimizer", lambda v: isinstance(v, dict), "a JSON object", w)
        _check_keys(od, {"class", "config", "t", "state"}, "model.compile.optimizer")
        w += "optimizer."
        cls = _get(od, "class", lambda v: v in _optim.OPTIMIZERS, f"one of {sorted(_optim.OPTIMIZERS)}", w)
        config = _get(od, "config", lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and (isinstance(x, (int, float, bool)) or k == "lr") for k, x in v.items()),
            "a map of settings to numbers", w)
        if "lr" in config and not isinstance(config["lr"], (int, float)):
            config["lr"] = _schedule_from(config["lr"], w + "config.")
        t = _get(od, "t", lambda v: _nonneg_int(v) and v < 2**62, "an integer >= 0", w)
        with_state = _get(od, "state", lambda v: isinstance(v, bool), "true or false", w)
        try:
            opt = _optim.OPTIMIZERS[cls](**config)
            model.compile(loss=loss, optimizer=opt, clip_norm=clip, clip_value=clip_value)
        except (ValueError, TypeError) as exc:
            _fail(f"model.compile: {exc}")
    # the tensors: every weight, and the optimizer's state when it was saved
    shapes = _expected_shapes(layers, input_dim) if input_dim is not None else {}
    if input_dim is None and any(k.startswith(prefix + "layers.") for k in tensors):
        _fail("the file holds weights but the model has no input_dim.")
    n_params = sum(math.prod(s) for s in shapes.values())
    if with_state:
        if input_dim is None:
            _fail("the file holds optimizer state but the model has no input_dim.")
        for name in opt.state_names:
            shapes[f"optimizer.{name}"] = (n_params,)
    arrays = {}
    for name, shape in shapes.items():
        arrays[name] = tensors.pop(prefix + name, None)
        _check_tensor(prefix + name, arrays[name], shape, np.dtype(dtype))
    for name in ("optimizer.v", "optimizer.sq"):  # second moments are >= 0
        if name in arrays and (arrays[name] < 0).any():
            _fail(f"the tensor {prefix + name!r} holds negative values; it is a running mean of squares.")
    # everything checked: build
    if input_dim is not None:
        model.build(input_dim)
        for name, view in zip(_weight_names(layers, input_dim), model._weight_views()):
            view[...] = arrays[name]
        if with_state:
            opt.init_state(model._params.size, model.dtype)
            for name in opt.state_names:
                opt.state[name][...] = arrays[f"optimizer.{name}"]
            opt.t = t
    model._rng = rng
    model._epochs_done = epochs_done
    model._alpha_per_batch = alpha
    if history is not None:
        model.history = history
    model._infer_cache = model._predictor = None
    return model


# ------------------------------------------------------------ the file
def _write(path, kind, body, tensors):
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "fastmlp_version": _version(), "kind": kind, **body}
    meta = {"format": FORMAT, "fastmlp": json.dumps(doc, allow_nan=True, separators=(",", ":"))}
    _container.write_atomic(path, _container.encode(tensors, meta))


def save_model(obj, path, include_optimizer=True, extra=None):
    """Write a Sequential, MLPClassifier or MLPRegressor to ``path`` (see the module docstring).

    Parameters
    ----------
    obj : Sequential, MLPClassifier or MLPRegressor (fitted)
    path : str or os.PathLike; conventionally ``*.safetensors``
    include_optimizer : bool
        Save the optimizer's state and step counter, so that training resumes exactly;
        without it a loaded model trains on with a fresh optimizer of the same settings.
    extra : dict or None
        A JSON object stored as the document's ``"extra"`` (the callbacks' bookkeeping).
    """
    from .model import Sequential

    if not isinstance(include_optimizer, bool):
        raise ValueError(f"include_optimizer must be True or False, got {include_optimizer!r}.")
    more = {} if extra is None else {"extra": dict(extra)}
    if isinstance(obj, Sequential):
        doc, tensors = sequential_state(obj, include_optimizer)
        _write(path, "Sequential", {"model": doc, **more}, tensors)
        return
    from . import _saving_estimators

    kind, body, tensors = _saving_estimators.estimator_state(obj, include_optimizer)
    _write(path, kind, {**body, **more}, tensors)


def read_document(path):
    """The checked JSON document and the tensors of a fastmlp model file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    doc : dict
    tensors : dict of str to ndarray
    """
    meta, tensors = _container.read(path)
    where = str(path)
    if meta.get("format") != FORMAT or "fastmlp" not in meta:
        raise ModelFileError(f"{where} is a safetensors file but not a fastmlp model file (its metadata has no "
                             f"format {FORMAT!r}).")
    try:
        doc = json.loads(meta["fastmlp"])
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{where}: the model document is not valid JSON ({str(exc)[:120]}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{where}: the model document is not a fastmlp model document.")
    version = doc.get("format_version")
    if not _is_int(version) or version < 1:
        raise ModelFileError(f"{where}: format_version must be an integer >= 1, got {version!r:.40}.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{where} was written in model format version {version} (by fastmlp {doc.get('fastmlp_version')!s:.20}), "
            f"newer than the version {FORMAT_VERSION} that this fastmlp {_version()} reads: upgrade fastmlp to "
            "load it.")
    return doc, tensors


def load_model(path):
    """Load a model written by ``save``: a Sequential, an MLPClassifier or an MLPRegressor.

    Nothing in the file is executed. Raises :class:`ModelFileError` (a ValueError) that says
    what is wrong for any file that is missing, corrupt, truncated, of a newer format, or
    whose tensors do not match its configuration.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``model.save`` / ``estimator.save``.

    Returns
    -------
    Sequential, MLPClassifier or MLPRegressor
    """
    doc, tensors = read_document(path)
    try:
        kind = doc.get("kind")
        _check_keys(doc, {"format", "format_version", "fastmlp_version", "kind", "model", "estimator", "extra"},
                    "the document")
        if not isinstance(doc.get("extra", {}), dict):
            _fail("extra must be a JSON object.")
        if kind == "Sequential":
            model = build_sequential(doc.get("model"), tensors)
        elif kind in ("MLPClassifier", "MLPRegressor"):
            from . import _saving_estimators

            model = _saving_estimators.build_estimator(kind, doc, tensors)
        else:
            _fail(f"kind must be 'Sequential', 'MLPClassifier' or 'MLPRegressor', got {kind!r:.40}.")
        if tensors:
            _fail(f"the file holds tensors that the configuration has no place for: {sorted(tensors)[:5]}.")
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return model
