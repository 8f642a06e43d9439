"""The estimators' part of a model file: parameters, fitted attributes, ``classes_``.

The inner Sequential is saved by :mod:`fastmlp.saving` under the tensor prefix ``model.``;
the estimator's own attributes go into the document by name, from a fixed table (a file
can set no attribute outside it), and its early-stopping best weights as tensors.
"""
import math

import numpy as np

from .saving import _fail, _get, _is_int, _is_real, _nonneg_int, build_sequential, sequential_state


def _opt_real(v):
    return v is None or _is_real(v)


def _reals(v):
    return isinstance(v, list) and all(_is_real(x) for x in v)


# fitted attribute -> (check, what it must be); None values are kept as None
_ATTRS = {
    "n_iter_": (_nonneg_int, "an integer >= 0"), "t_": (_nonneg_int, "an integer >= 0"),
    "n_outputs_": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "n_layers_": (lambda v: _is_int(v) and v > 1, "an integer > 1"),
    "n_features_in_": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "out_activation_": (lambda v: v in ("softmax", "logistic", "identity", "exp"), "an output activation"),
    "loss_": (_opt_real, "a number"), "best_loss_": (_opt_real, "null or a number"),
    "loss_curve_": (lambda v: v is None or _reals(v), "a list of numbers"),
    "validation_scores_": (lambda v: v is None or _reals(v), "null or a list of numbers"),
    "best_validation_score_": (_opt_real, "null or a number"),
    "_no_improvement_count": (_nonneg_int, "an integer >= 0"),
    "_learning_rate": (_opt_real, "a number"), "_loss_constant": (_opt_real, "a number"),
    "_units": (lambda v: isinstance(v, list) and len(v) > 1 and all(_is_int(u) and u > 0 for u in v),
               "a list of layer sizes"),
    "_model_solver": (lambda v: v in ("adam", "sgd", "lbfgs"), "a solver name"),
    "_model_dropout": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "_model_batch_norm": (lambda v: isinstance(v, bool), "true or false"),
}
_ARRAY_KINDS = ("i", "u", "f", "b", "U", "O")


def _array_doc(a, name):
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in _ARRAY_KINDS:
        raise ValueError(f"{name} must be a 1-d array of numbers, booleans or strings to be saved, got {a.dtype}.")
    if a.dtype.kind == "O" and not all(isinstance(x, str) for x in a):
        raise ValueError(f"{name} holds objects other than strings; a model file holds numbers and strings only.")
    values = [x.item() if hasattr(x, "item") else x for x in a]
    if a.dtype.kind == "f" and not all(math.isfinite(x) for x in values):
        raise ValueError(f"{name} holds NaN or infinity; a model file cannot hold them as labels.")
    return {"dtype": a.dtype.str if a.dtype.kind != "O" else "object", "values": values}


def _array(doc, name):
    check = {"i": _is_int, "u": lambda v: _is_int(v) and v >= 0, "f": _is_real, "b": lambda v: isinstance(v, bool),
             "U": lambda v: isinstance(v, str), "O": lambda v: isinstance(v, str)}
    if not isinstance(doc, dict) or set(doc) != {"dtype", "values"} or not isinstance(doc["values"], list):
        _fail(f"estimator.{name} must be {{dtype, values}}, got {doc!r:.80}.")
    dt = doc["dtype"]
    try:
        dtype = np.dtype(object) if dt == "object" else np.dtype(dt)
    except TypeError:
        _fail(f"estimator.{name}.dtype {dt!r:.40} is not a dtype.")
    if dtype.kind not in _ARRAY_KINDS or (dt != "object" and dtype.str != dt):
        _fail(f"estimator.{name}.dtype {dt!r:.40} is not a dtype of labels.")
    if not all(check[dtype.kind](v) for v in doc["values"]):
        _fail(f"estimator.{name} has values that are not of dtype {dt}.")
    try:
        return np.array(doc["values"], dtype=dtype)
    except (ValueError, OverflowError) as exc:
        _fail(f"estimator.{name}: {exc}")


def estimator_state(est, include_optimizer):
    """(kind, document body, tensors) of a fitted MLPClassifier / MLPRegressor."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    kind = type(est).__name__
    params = est.get_params(deep=False)
    if params.get("random_state") is not None and not _is_int(params["random_state"]):
        raise ValueError("random_state must be None or an integer to save the estimator (a RandomState instance "
                         "cannot be written to a file); set it with est.set_params(random_state=0).")
    if not isinstance(params["dtype"], str):
        params["dtype"] = np.dtype(params["dtype"]).name
    if isinstance(params.get("hidden_layer_sizes"), (tuple, list)):
        params["hidden_layer_sizes"] = [int(s) for s in params["hidden_layer_sizes"]]
    else:
        params["hidden_layer_sizes"] = int(params["hidden_layer_sizes"])
    if isinstance(params.get("activation"), tuple):
        params["activation"] = list(params["activation"])
    attrs = {}
    for name in _ATTRS:
        if hasattr(est, name):
            v = getattr(est, name)
            attrs[name] = list(v) if isinstance(v, (list, tuple)) else v
            if isinstance(attrs[name], np.generic):
                attrs[name] = attrs[name].item()
    est_doc = {"params": params, "attrs": attrs}
    if hasattr(est, "feature_names_in_"):
        est_doc["feature_names_in_"] = [str(x) for x in est.feature_names_in_]
    if hasattr(est, "_label_binarizer"):
        lb = est._label_binarizer
        est_doc["label_binarizer"] = {"classes_": _array_doc(lb.classes_, "classes_"), "y_type_": lb.y_type_,
                                      "sparse_input_": bool(lb.sparse_input_)}
    model_doc, tensors = sequential_state(est._model, include_optimizer, prefix="model.")
    best = getattr(est, "_best_weights", None)
    if best is not None:
        est_doc["n_best_weights"] = len(best)
        for i, w in enumerate(best):
            tensors[f"estimator.best_weights.{i}"] = np.asarray(w, dtype=est._model.dtype)
    return kind, {"model": model_doc, "estimator": est_doc}, tensors


def build_estimator(kind, doc, tensors):
    from sklearn.preprocessing import LabelBinarizer

    from . import estimators
    from .estimators import _split_weights

    ed = doc.get("estimator")
    if not isinstance(ed, dict):
        _fail("the document has no estimator section.")
    extra = set(ed) - {"params", "attrs", "feature_names_in_", "label_binarizer", "n_best_weights"}
    if extra:
        _fail(f"estimator has unknown keys {sorted(extra)}.")
    cls = getattr(estimators, kind)
    params = _get(ed, "params", lambda v: isinstance(v, dict), "a JSON object", "estimator.")
    unknown = set(params) - set(cls().get_params())
    if unknown:
        _fail(f"estimator.params has unknown parameters {sorted(unknown)}.")
    est = cls()
    try:
        if isinstance(params.get("hidden_layer_sizes"), list):
            params = {**params, "hidden_layer_sizes": tuple(params["hidden_layer_sizes"])}
        est.set_params(**params)
        est._check_params()
    except (ValueError, TypeError) as exc:
        _fail(f"estimator.params: {exc}")
    attrs = _get(ed, "attrs", lambda v: isinstance(v, dict), "a JSON object", "estimator.")
    for name, value in attrs.items():
        if name not in _ATTRS:
            _fail(f"estimator.attrs has the unknown attribute {name!r:.40}.")
        check, what = _ATTRS[name]
        if not check(value):
            _fail(f"estimator.attrs.{name} must be {what}, got {value!r:.80}.")
    for name in ("n_iter_", "n_outputs_", "n_features_in_", "out_activation_", "_units"):
        if name not in attrs:
            _fail(f"estimator.attrs has no {name}; the file is not of a fitted estimator.")
    lb = None
    if kind == "MLPClassifier":
        ld = _get(ed, "label_binarizer", lambda v: isinstance(v, dict), "a JSON object", "estimator.")
        classes = _array(ld.get("classes_"), "classes_")
        y_type = _get(ld, "y_type_", lambda v: v in ("binary", "multiclass", "multilabel-indicator"),
                      "binary, multiclass or multilabel-indicator", "estimator.label_binarizer.")
        sparse = _get(ld, "sparse_input_", lambda v: isinstance(v, bool), "true or false", "estimator.label_binarizer.")
        lb = LabelBinarizer()
        lb.classes_, lb.y_type_, lb.sparse_input_ = classes, y_type, sparse
    names = None
    if "feature_names_in_" in ed:
        names = ed["feature_names_in_"]
        if not (isinstance(names, list) and all(isinstance(x, str) for x in names)
                and len(names) == attrs["n_features_in_"]):
            _fail("estimator.feature_names_in_ must be one string per feature.")
    model = build_sequential(doc.get("model"), tensors, prefix="model.")
    if model.input_dim != attrs["n_features_in_"] or model.input_dim != attrs["_units"][0]:
        _fail(f"the model has {model.input_dim} inputs but the estimator {attrs['n_features_in_']} features.")
    if model._units[-1].fan_out != attrs["n_outputs_"]:
        _fail(f"the model has {model._units[-1].fan_out} outputs but the estimator n_outputs_ "
              f"{attrs['n_outputs_']}.")
    best = None
    if "n_best_weights" in ed:
        n = ed["n_best_weights"]
        views = model._weight_views()
        if n != len(views):
            _fail(f"estimator.n_best_weights is {n!r:.20}, the model has {len(views)} weight arrays.")
        best = []
        for i, v in enumerate(views):
            t = tensors.pop(f"estimator.best_weights.{i}", None)
            if t is None or t.shape != v.shape or t.dtype != v.dtype or not np.isfinite(t).all():
                _fail(f"the tensor 'estimator.best_weights.{i}' is missing, or not finite of shape {v.shape} and "
                      f"dtype {v.dtype}.")
            best.append(np.array(t))
    for name, value in attrs.items():
        setattr(est, name, value)
    if lb is not None:
        est._label_binarizer, est.classes_ = lb, lb.classes_
    if names is not None:
        est.feature_names_in_ = np.array(names, dtype=object)
    est._model = model
    est._best_weights = best
    est.coefs_, est.intercepts_, est.batch_norm_params_ = _split_weights(model)
    return est
