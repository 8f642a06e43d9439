"""ONNX export: ``fastmlp.onnx.to_onnx(model, opset=None)`` and ``fastmlp.onnx.export(model, path)``.

Needs the ``onnx`` package (``pip install fastmlp[onnx]``). The graph computes what
``predict`` computes, in the model's dtype (float32 or float64), for any batch size:
every Dense unit as MatMul + Add, BatchNorm with its running statistics, Dropout as the
identity, PReLU as PRelu, Maxout as MatMul + Add + Reshape + ReduceMax, a Residual block
as its layers' nodes and an Add of its input (through a MatMul: the projection), every activation
from primitive operators (with the model's own constants, in
the model's dtype), and the output activation that ``predict`` applies (softmax for
cross_entropy, sigmoid for binary_cross_entropy, exp for poisson).

For the estimators the outputs are named as skl2onnx names them: MLPClassifier gives
``label`` (shape (N,), or (N, n_labels) for multilabel; ``classes_`` themselves, strings
included) and ``probabilities`` ((N, n_classes), as ``predict_proba``); MLPRegressor gives
``variable`` ((N, n_outputs)). The input is ``X`` of shape (N, n_features).
"""
import numpy as np

from . import activations as _act

#: The opset of ``to_onnx(model)``: one that onnxruntime releases of the last years run.
DEFAULT_OPSET = 17
_MIN_OPSET = 13  # Softmax / LogSoftmax over one axis


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the extra is in the test dependencies
        raise ImportError("ONNX export needs the onnx package: pip install 'fastmlp[onnx]'.") from None
    return onnx


class _Graph:
    def __init__(self, onnx, dtype):
        self.onnx, self.h, self.dtype = onnx, onnx.helper, np.dtype(dtype)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value, base="c", dtype=None):
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.name(base)
        if arr.dtype.kind in "UO":
            t = self.h.make_tensor(name, self.onnx.TensorProto.STRING, arr.shape,
                                   [str(s).encode("utf-8") for s in arr.ravel()])
        else:
            t = self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name)
        self.inits.append(t)
        return name

    def op(self, op_type, inputs, base=None, out=None, **attrs):
        out = out or self.name(base or op_type.lower())
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def activation(self, x, code, alpha):
        op, c = self.op, self.const
        if code == _act.IDENTITY:
            return x
        simple = {_act.SIGMOID: "Sigmoid", _act.TANH: "Tanh", _act.RELU: "Relu", _act.EXP: "Exp"}
        if code in simple:
            return op(simple[code], [x])
        if code == _act.SOFTMAX:
            return op("Softmax", [x], axis=1)
        if code == _act.LOG_SOFTMAX:
            return op("LogSoftmax", [x], axis=1)
        pos = op("Greater", [x, c(0.0)])
        if code == _act.STEP:
            return op("Cast", [pos], to=self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype))
        if code == _act.LEAKY_RELU:
            return op("Where", [pos, x, op("Mul", [x, c(alpha)])])
        if code in (_act.ELU, _act.SELU):
            a = alpha if code == _act.ELU else _act.SELU_ALPHA
            em1 = op("Sub", [op("Exp", [op("Min", [x, c(0.0)])]), c(1.0)])
            y = op("Where", [pos, x, op("Mul", [em1, c(a)])])
            return y if code == _act.ELU else op("Mul", [y, c(_act.SELU_SCALE)])
        if code == _act.SOFTPLUS:  # max(x, 0) + log(1 + exp(-|x|)), x above 20
            soft = op("Add", [op("Max", [x, c(0.0)]),
                              op("Log", [op("Add", [op("Exp", [op("Neg", [op("Abs", [x])])]), c(1.0)])])])
            return op("Where", [op("Greater", [x, c(20.0)]), x, soft])
        if code == _act.SWISH:
            return op("Mul", [x, op("Sigmoid", [x])])
        if code == _act.GELU:
            erf = self.erf(op("Mul", [x, c(np.sqrt(0.5))]))
            return op("Mul", [op("Mul", [x, c(0.5)]), op("Add", [erf, c(1.0)])])
        raise ValueError(f"ONNX export has no rule for the activation {_act.CODE_TO_NAME.get(code, code)!r}.")


    def erf(self, z):
        """Erf in float32; in float64 (which onnxruntime's Erf does not take) Kummer's series
        erf(z) = 2 z / sqrt(pi) exp(-z^2) sum_n (2 z^2)^n / (2n + 1)!!, of positive terms only
        (no cancellation), with z clipped to +-6 where erf is 1 to double precision."""
        op, c = self.op, self.const
        if self.dtype != np.float64:
            return op("Erf", [z])
        n = np.arange(_ERF_TERMS, dtype=np.float64)
        log_dfact = np.concatenate([[0.0], np.cumsum(np.log(2.0 * n[1:] + 1.0))])  # log (2n+1)!!
        zc = op("Clip", [z, c(-6.0), c(6.0)])
        z2 = op("Mul", [zc, zc])
        log2z2 = op("Log", [op("Max", [op("Mul", [z2, c(2.0)]), c(1e-300)])])
        arg = op("Sub", [op("Mul", [op("Unsqueeze", [log2z2, c([-1], dtype=np.int64)]), c(n)]), c(log_dfact)])
        series = op("ReduceSum", [op("Exp", [arg]), c([-1], dtype=np.int64)], keepdims=0)
        scale = op("Mul", [op("Mul", [zc, c(2.0 / np.sqrt(np.pi))]), op("Exp", [op("Neg", [z2])])])
        return op("Mul", [scale, series])


_ERF_TERMS = 160  # 2 z^2 <= 72: the terms fall below 1e-17 of the sum well before n = 160


def _sequential_graph(g, model, x):
    """The output name of ``model``'s predict graph on input ``x``."""
    block_inputs = {}  # a residual block's start unit -> the name of its input
    for i, u in enumerate(model._units):
        if u.res == 1:
            block_inputs[i] = x
            continue
        if u.res == 2:  # F(x) + x, or F(x) + x @ Wp
            short = block_inputs.pop(u.link)
            if u.dense:
                short = g.op("MatMul", [short, g.const(u.W, f"Wp{i}")])
            x = g.activation(g.op("Add", [x, short]), model._infer_acts[i], u.alpha)
            continue
        if u.prelu:  # the slope (k,) or (1,) broadcasts over the rows
            x = g.op("PRelu", [x, g.const(u.alphas, f"alpha{i}")])
            continue
        if u.pieces:  # (N, units * pieces) -> (N, units, pieces) -> max over the pieces
            x = g.op("Reshape", [x, g.const([0, u.fan_out, u.pieces], dtype=np.int64)])
            if g.opset >= 18:  # axes became an input
                x = g.op("ReduceMax", [x, g.const([2], dtype=np.int64)], keepdims=0)
            else:
                x = g.op("ReduceMax", [x], axes=[2], keepdims=0)
            continue
        if u.bn:
            gamma, beta, mean, var = (g.const(v, n) for v, n in zip(u.G, ("gamma", "beta", "mean", "var")))
            x = g.op("BatchNormalization", [x, gamma, beta, mean, var], epsilon=float(u.eps))
            continue
        if u.dropout:
            continue
        if u.dense:
            x = g.op("MatMul", [x, g.const(u.W, f"W{i}")])
            if u.use_bias:
                x = g.op("Add", [x, g.const(u.b, f"b{i}")])
        x = g.activation(x, model._infer_acts[i], u.alpha)
    return x


def _check_opset(opset):
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, int) or not _MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an integer from {_MIN_OPSET} to {newest} (this onnx package's newest), "
                         f"got {opset!r}.")
    return opset


def to_onnx(model, opset=None):
    """The ONNX graph (an ``onnx.ModelProto``) of a built Sequential or a fitted estimator.

    Parameters
    ----------
    model : Sequential (built), MLPClassifier or MLPRegressor (fitted)
    opset : int or None
        The ONNX opset; None: :data:`DEFAULT_OPSET`.
    """
    from .model import Sequential

    opset = _check_opset(opset)
    onnx = _onnx()
    h = onnx.helper
    if isinstance(model, Sequential):
        seq, est = model, None
        if not seq.built:
            raise ValueError("The model has no weights yet: pass input_dim=... or call fit before exporting it.")
    else:
        from sklearn.utils.validation import check_is_fitted

        if not hasattr(model, "_model") or not hasattr(model, "n_outputs_"):
            raise TypeError(f"to_onnx takes a fastmlp Sequential, MLPClassifier or MLPRegressor, got "
                            f"{type(model).__name__}.")
        check_is_fitted(model)
        seq, est = model._model, model
    g = _Graph(onnx, seq.dtype)
    g.opset = opset
    elem = h.np_dtype_to_tensor_dtype(seq.dtype)
    inputs = [h.make_tensor_value_info("X", elem, ["N", seq.input_dim])]
    y = _sequential_graph(g, seq, "X")
    k = seq._units[-1].fan_out
    if est is None:
        g.op("Identity", [y], out="output")
        outputs = [h.make_tensor_value_info("output", elem, ["N", k])]
    elif not hasattr(est, "classes_"):
        g.op("Identity", [y], out="variable")
        outputs = [h.make_tensor_value_info("variable", elem, ["N", k])]
    else:
        outputs = _classifier_outputs(g, est, y, elem)
    graph = h.make_graph(g.nodes, f"fastmlp_{type(model).__name__}", inputs, outputs, g.inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="fastmlp")
    from . import __version__

    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    return proto


def _classifier_outputs(g, est, p, elem):
    h, onnx = g.h, g.onnx
    classes = np.asarray(est.classes_)
    if classes.dtype.kind in "iub":
        cdtype, celem = np.int64, onnx.TensorProto.INT64
    elif classes.dtype.kind == "f":
        cdtype, celem = np.float64, onnx.TensorProto.DOUBLE
    elif classes.dtype.kind in "UO":
        cdtype, celem = object, onnx.TensorProto.STRING
    else:  # pragma: no cover - estimators take these kinds only
        raise ValueError(f"classes_ of dtype {classes.dtype} cannot be exported.")
    y_type = est._label_binarizer.y_type_
    n = len(classes)
    if y_type == "multilabel-indicator":  # labels are the 0/1 indicator columns, as predict gives them
        g.op("Identity", [p], out="probabilities")
        g.op("Cast", [g.op("Greater", [p, g.const(0.5)])], out="label", to=onnx.TensorProto.INT64)
        return [h.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N", n]),
                h.make_tensor_value_info("probabilities", elem, ["N", n])]
    if y_type == "binary":  # one logistic output: [1 - p, p]; the label is classes_[p > 0.5]
        g.op("Concat", [g.op("Sub", [g.const(1.0), p]), p], out="probabilities", axis=1)
        index = g.op("Cast", [g.op("Greater", [g.op("Squeeze", [p, g.const([1], dtype=np.int64)]),
                                               g.const(0.5)])], to=onnx.TensorProto.INT64)
    else:
        g.op("Identity", [p], out="probabilities")
        index = g.op("ArgMax", [p], axis=1, keepdims=0)
    g.op("Gather", [g.const(classes.astype(cdtype), "classes", dtype=cdtype), index], out="label", axis=0)
    return [h.make_tensor_value_info("label", celem, ["N"]),
            h.make_tensor_value_info("probabilities", elem, ["N", n])]


def export(model, path, opset=None):
    """Write ``to_onnx(model, opset)`` to ``path`` (atomically, as ``model.save``).

    Parameters
    ----------
    model : Sequential (built), MLPClassifier or MLPRegressor (fitted)
    path : str or os.PathLike
        Conventionally ``*.onnx``.
    opset : int or None
        The ONNX opset; None: :data:`DEFAULT_OPSET`.

    Returns
    -------
    path
    """
    from . import _container

    proto = to_onnx(model, opset)
    _container.write_atomic(path, [proto.SerializeToString()])
    return path
