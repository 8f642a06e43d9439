"""The ``fastmlp`` command: train / predict / evaluate / export / info / bench.

    fastmlp train DATA --target COLUMN [--layers 256,128] [--activation relu] [--epochs 10]
                  [--batch-size 128] [--lr 1e-3] [--validation-split 0.1] -o model.safetensors
    fastmlp predict MODEL DATA -o predictions.csv [--proba]
    fastmlp evaluate MODEL DATA --target COLUMN
    fastmlp export MODEL --onnx model.onnx
    fastmlp info MODEL
    fastmlp bench [--quick | --smoke]
    fastmlp search (DATA --target COLUMN | --dataset digits|fashion-mnist) [--strategy random]
                   [--n-trials 20] [--epochs 10] [--depth 1:3] [--width 32:512] [--lr 1e-4:1e-2]
                   (LOW:HIGH a range, A,B,C choices, one value fixed)

DATA is a CSV or TSV file with a header row (the target named, or numbered from 0), a
``.npy`` array (the target a column number) or ``.npz`` (arrays ``X`` and ``y``), a pair of
IDX files ``images.idx,labels.idx`` (gzipped or not), or Parquet where pyarrow is
installed. ``train`` fits an MLPClassifier (string or integer targets; string labels are
kept in the model and predictions give them back) or an MLPRegressor (other numbers;
``--task`` overrides the guess). Exit status: 0 on success, 2 on a usage error, 1 on a data
or model error, with a one-line message and no traceback.
"""
import argparse
import csv
import os
import subprocess
import sys
import warnings

import numpy as np


class DataError(ValueError):
    """Data the command cannot use; the message says what and where."""


# ------------------------------------------------------------------ data
def _read_table(path):
    """(column names, rows of strings) of a CSV / TSV file (or Parquet)."""
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow).") from None
        table = pq.read_table(path)
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return list(table.column_names), [list(map(_cell, r)) for r in zip(*cols)]
    delim = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    with open(path, newline="", encoding="utf-8") as f:
        try:
            rows = list(csv.reader(f, delimiter=delim, strict=True))
        except csv.Error as exc:
            raise DataError(f"{path}: malformed {'TSV' if delim == chr(9) else 'CSV'}: {exc}.") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file.") from None
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one row of data.")
    header = [h.strip() for h in rows[0]]
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataError(f"{path}, line {i}: {len(r)} fields, but the header has {len(header)}.")
    return header, rows[1:]


def _cell(v):
    return "" if v is None else str(v)


def _column_index(header, target, path):
    if target in header:
        return header.index(target)
    if target.isdigit() and int(target) < len(header):
        return int(target)
    raise DataError(f"{path}: no column {target!r}; the columns are {', '.join(header)}.")


def _floats(rows, cols, header, path):
    X = np.empty((len(rows), len(cols)), dtype=np.float64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            try:
                X[i, j] = float(r[c])
            except ValueError:
                raise DataError(f"{path}, row {i + 1}, column {header[c]!r}: {r[c]!r} is not a number.") from None
    return X


def load_data(path, target=None, features=None):
    """(X, y or None, feature names or None) of a data file (see the module docstring)."""
    if "," in path and not os.path.exists(path):
        parts = path.split(",")
        if len(parts) != 2:
            raise DataError(f"{path!r}: a pair of IDX files is written images.idx,labels.idx.")
        from .datasets import load_idx

        X, y = (_load_idx(p, load_idx) for p in parts)
        return X.reshape(X.shape[0], -1).astype(np.float64), y, None
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file.")
    low = path.lower()
    if low.endswith((".idx", ".gz", "-ubyte")) or "idx" in os.path.basename(low):
        from .datasets import load_idx

        X = _load_idx(path, load_idx)
        return X.reshape(X.shape[0], -1).astype(np.float64), None, None
    if low.endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: not a numeric .npy file ({exc}).") from None
        if a.ndim != 2:
            raise DataError(f"{path}: a .npy data file holds a 2-d array, got shape {a.shape}.")
        if target is None:
            return a.astype(np.float64), None, None
        if not (target.isdigit() and int(target) < a.shape[1]):
            raise DataError(f"{path}: the target of a .npy file is a column number from 0 to {a.shape[1] - 1}, "
                            f"got {target!r}.")
        t = int(target)
        return np.delete(a, t, axis=1).astype(np.float64), a[:, t], None
    if low.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z:
                raise DataError(f"{path}: a .npz data file holds arrays 'X' (and 'y'); it has {sorted(z)}.")
            X = z["X"]
            y = z["y"] if "y" in z else None
        return X.reshape(X.shape[0], -1).astype(np.float64), y, None
    header, rows = _read_table(path)
    if features is not None:
        missing = [c for c in features if c not in header]
        if missing:
            raise DataError(f"{path}: the model needs the column(s) {', '.join(missing)}, which the file lacks.")
        cols = [header.index(c) for c in features]
    else:
        cols = list(range(len(header)))
    y = None
    if target is not None:
        t = _column_index(header, target, path)
        cols = [c for c in cols if c != t]
        y = np.array([r[t].strip() for r in rows], dtype=object)
    return _floats(rows, cols, header, path), y, [header[c] for c in cols]


def _load_idx(path, load_idx):
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file.")
    return load_idx(path)


def _targets(y, task):
    """(targets, task) with numbers where they are numbers."""
    if y.dtype != object:
        num, is_num = y.astype(np.float64), True
    else:
        try:
            num, is_num = np.array([float(v) for v in y]), True
        except ValueError:
            num, is_num = None, False
    if task == "auto":
        task = "classification" if not is_num or np.all(num == np.round(num)) else "regression"
    if task == "regression":
        if not is_num:
            raise DataError("--task regression needs numeric targets.")
        return num, task
    if is_num and np.all(num == np.round(num)):
        return num.astype(np.int64), task
    return y.astype(str), task


# -------------------------------------------------------------- commands
def _train(a):
    from . import MLPClassifier, MLPRegressor

    X, y, names = load_data(a.data, a.target)
    if y is None:
        raise DataError(f"{a.data}: no target: pass --target COLUMN (or give a .npz with 'y', or an IDX pair).")
    y, task = _targets(np.asarray(y), a.task)
    est_cls = MLPClassifier if task == "classification" else MLPRegressor
    est = est_cls(hidden_layer_sizes=a.layers, activation=a.activation, max_iter=a.epochs,
                  batch_size=a.batch_size, learning_rate_init=a.lr, random_state=a.seed,
                  early_stopping=a.validation_split > 0, validation_fraction=a.validation_split or 0.1,
                  n_iter_no_change=a.epochs, dtype=a.dtype, verbose=not a.quiet)
    bar = None if a.quiet else _progress_bar(a.epochs)
    if bar is not None:
        est.verbose = False

        def tick(epoch, loss):
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)

        est._epoch_hook = tick
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
    finally:
        if bar is not None:
            bar.close()
            del est._epoch_hook
    if names is not None:
        est.feature_names_in_ = np.array(names, dtype=object)
    est.save(a.output)
    score = est.score(X, y) if names is None else _score_quiet(est, X, y)
    print(f"saved {a.output}: {task}, {X.shape[0]} rows, {X.shape[1]} features, training "
          f"{'accuracy' if task == 'classification' else 'R^2'} {score:.4f}")


def _progress_bar(epochs):
    """A tqdm bar over the epochs on a terminal (``pip install "fastmlp[cli]"``); None elsewhere
    or without tqdm, where the estimator's per-epoch lines are printed instead."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # mininterval=0: an epoch is rarely shorter than tqdm's default redraw interval, and each
    # one should show
    return tqdm(total=epochs, unit="epoch", desc="train", file=sys.stderr, dynamic_ncols=True, mininterval=0)


def _score_quiet(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.score(X, y)


def _model_features(est):
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def _load_est(path):
    from .saving import load_model

    est = load_model(path)
    if not hasattr(est, "n_features_in_"):
        raise DataError(f"{path}: a Sequential model file; the command line predicts with MLPClassifier / "
                        "MLPRegressor files (from fastmlp train or est.save).")
    return est


def _predict(a):
    est = _load_est(a.model)
    X, _, _ = load_data(a.data, None, _model_features(est))
    _check_width(est, X, a.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if a.proba:
            if not hasattr(est, "predict_proba"):
                raise DataError("--proba needs a classifier model.")
            out, header = est.predict_proba(X), [str(c) for c in est.classes_]
        else:
            out = est.predict(X)
            out = out.reshape(out.shape[0], -1)
            header = ["prediction"] if out.shape[1] == 1 else [f"prediction_{i}" for i in range(out.shape[1])]
    with open(a.output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in out:
            w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
    print(f"wrote {out.shape[0]} predictions to {a.output}")


def _check_width(est, X, path):
    if X.shape[1] != est.n_features_in_:
        raise DataError(f"{path}: {X.shape[1]} feature columns, but the model was trained on {est.n_features_in_}.")


def _evaluate(a):
    est = _load_est(a.model)
    feats = _model_features(est)
    X, y, _ = load_data(a.data, a.target, feats)
    if y is None:
        raise DataError(f"{a.data}: no target: pass --target COLUMN.")
    _check_width(est, X, a.data)
    task = "classification" if hasattr(est, "classes_") else "regression"
    y, _ = _targets(np.asarray(y), task)
    if task == "classification" and est.classes_.dtype.kind in "UO":
        y = y.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = est.score(X, y)
    print(f"{'accuracy' if task == 'classification' else 'r2'}: {score:.6f}")


def _export(a):
    from . import onnx as fm_onnx
    from .saving import load_model

    fm_onnx.export(load_model(a.model), a.onnx)
    print(f"wrote {a.onnx}")


def _info(a):
    from .saving import load_model, read_document

    doc, _ = read_document(a.model)
    model = load_model(a.model)
    seq = getattr(model, "_model", model)
    print(f"{a.model}: {doc['kind']}, fastmlp {doc.get('fastmlp_version')}, format {doc['format_version']}")
    print(f"input_dim: {seq.input_dim}  dtype: {seq.dtype.name}  parameters: {seq.count_params()}")
    for i, layer in enumerate(seq.layers):
        print(f"  {i}: {layer!r}")
    if seq.optimizer is not None:
        print(f"loss: {seq._loss.name}  optimizer: {seq.optimizer!r}  steps: {seq.optimizer.t}")
    print(f"epochs done: {getattr(seq, '_epochs_done', 0)}")
    if hasattr(model, "classes_"):
        print(f"classes: {', '.join(map(str, model.classes_))}")
    if getattr(model, "loss_", None) is not None:
        print(f"loss_: {model.loss_:.6f}")


def _bench(a):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "compare.py")
    if not os.path.exists(script):
        raise DataError("fastmlp bench runs benchmarks/compare.py from a source checkout of fastmlp; none was "
                        "found beside this installation.")
    args = ["--smoke"] if a.smoke else ["--quick"]
    sys.exit(subprocess.call([sys.executable, script, *args, *a.rest]))


def _search_data(a):
    """(X, y) of ``fastmlp search``: a data file with a target column, or a named data set."""
    if a.dataset == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return X / 16.0, y
    if a.dataset == "fashion-mnist":
        from .datasets import load_fashion_mnist

        (X, y), _ = load_fashion_mnist(a.data)
        return X, y
    if a.data is None or a.target is None:
        raise DataError("fastmlp search needs DATA and --target COLUMN, or --dataset digits|fashion-mnist.")
    X, y, _ = load_data(a.data, a.target)
    y, task = _targets(y, "classification")
    return X, np.unique(y, return_inverse=True)[1]  # classes as 0..k-1


def _range(text):
    """'1:3' -> (1, 3), a range; '1,2,3' -> [1, 2, 3], choices; '64' -> 64, a fixed value."""
    def number(v):
        try:
            return int(v)
        except ValueError:
            return float(v)

    try:
        if ":" in text:
            low, high = text.split(":")
            return (number(low), number(high))
        vals = [number(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes LOW:HIGH, A,B,C or one value, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _search(a):
    import json

    from . import search

    X, y = _search_data(a)
    space = search.Space(depth=a.depth, width=a.width, lr=a.lr, batch_size=a.batch_size,
                         activation=a.activation)
    result = search.run(space, X, y, strategy=a.strategy, n_trials=a.n_trials, epochs=a.epochs,
                        validation_split=a.validation_split, executor=a.executor, n_jobs=a.n_jobs, seed=a.seed,
                        time_budget=a.time_budget, verbose=0 if a.quiet else 1)
    if result.best_params is None:
        raise ValueError(f"every one of the {len(result)} trials failed; the first error: "
                         f"{result.trials.error.iloc[0]}")
    t = result.trials
    print(f"{len(t)} trials ({int((t.status != 'failed').sum())} trained) in {result.seconds:.1f} s; "
          f"best val_accuracy {result.best_metric:.4f}")
    print(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in result.best_params.items()}))


def _layers(text):
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes sizes like 256,128, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"--layers takes sizes > 0 like 256,128, got {text!r}")
    return sizes


def _fraction(text):
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"--validation-split must be in [0, 1), got {text}")
    return v


def _positive(kind):
    def parse(text):
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def parser():
    p = argparse.ArgumentParser(prog="fastmlp", description="Train and use fastmlp models from the shell.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fit an MLPClassifier / MLPRegressor on a data file")
    t.add_argument("data")
    t.add_argument("--target", required=True, help="the target column: its name, or its number from 0")
    t.add_argument("--layers", type=_layers, default=(100,), help="hidden layer sizes, e.g. 256,128")
    t.add_argument("--activation", default="relu")
    t.add_argument("--epochs", type=_positive(int), default=10)
    t.add_argument("--batch-size", type=_positive(int), default=128)
    t.add_argument("--lr", type=_positive(float), default=1e-3)
    t.add_argument("--validation-split", type=_fraction, default=0.0)
    t.add_argument("--task", choices=("auto", "classification", "regression"), default="auto")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument("-o", "--output", required=True)
    t.set_defaults(run=_train)
    pr = sub.add_parser("predict", help="write a model's predictions for a data file to CSV")
    pr.add_argument("model")
    pr.add_argument("data")
    pr.add_argument("-o", "--output", required=True)
    pr.add_argument("--proba", action="store_true", help="class probabilities, one column per class")
    pr.set_defaults(run=_predict)
    e = sub.add_parser("evaluate", help="score a model on a labelled data file")
    e.add_argument("model")
    e.add_argument("data")
    e.add_argument("--target", required=True)
    e.set_defaults(run=_evaluate)
    x = sub.add_parser("export", help="write a model as ONNX")
    x.add_argument("model")
    x.add_argument("--onnx", required=True)
    x.set_defaults(run=_export)
    i = sub.add_parser("info", help="print a model file's summary")
    i.add_argument("model")
    i.set_defaults(run=_info)
    b = sub.add_parser("bench", help="the quick comparison of benchmarks/compare.py")
    b.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(run=_bench)
    s = sub.add_parser("search", help="search MLP widths, depths and learning rates (fastmlp.search)")
    s.add_argument("data", nargs="?", default=None, help="a data file, or the folder of --dataset fashion-mnist")
    s.add_argument("--target", help="the target column (classification)")
    s.add_argument("--dataset", choices=("digits", "fashion-mnist"))
    s.add_argument("--strategy", choices=("grid", "random", "halving", "evolution"), default="random")
    s.add_argument("--n-trials", type=_positive(int), default=None, help="default: all the grid, or 20")
    s.add_argument("--epochs", type=_positive(int), default=10)
    s.add_argument("--depth", type=_range, default=(1, 3), help="LOW:HIGH, A,B,C or one value (default 1:3)")
    s.add_argument("--width", type=_range, default=(32, 512), help="LOW:HIGH (log-uniform), A,B,C or one value")
    s.add_argument("--lr", type=_range, default=(1e-4, 1e-2), help="LOW:HIGH (log-uniform), A,B,C or one value")
    s.add_argument("--batch-size", type=_positive(int), default=128)
    s.add_argument("--activation", default="relu")
    s.add_argument("--validation-split", type=_fraction, default=0.2)
    s.add_argument("--executor", choices=("processes",), default=None, help="loky worker processes")
    s.add_argument("--n-jobs", type=int, default=1)
    s.add_argument("--time-budget", type=_positive(float), default=None, help="seconds")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=_search)
    return p


def main(argv=None):
    args = parser().parse_args(argv)  # usage errors exit with status 2
    try:
        args.run(args)
    except (DataError, ValueError, OSError, ImportError, TypeError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastmlp {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastmlp {args.command}: interrupted", file=sys.stderr)
        return 1
    return 0
