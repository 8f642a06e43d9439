"""fastmlp: train multilayer perceptrons on the CPU at native speed."""
from . import activations, callbacks, datasets, diagnostics, initializers, losses, optim, schedules
from .backends import available_backends, get_backend, use_backend
from .layers import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU, Residual
from ._container import ModelFileError
from .model import History, Sequential
from .saving import load_model

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "BatchNorm",
    "Dense",
    "Dropout",
    "History",
    "Maxout",
    "ModelFileError",
    "PReLU",
    "Residual",
    "Sequential",
    "activations",
    "available_backends",
    "callbacks",
    "datasets",
    "diagnostics",
    "get_backend",
    "initializers",
    "load_model",
    "losses",
    "optim",
    "schedules",
    "use_backend",
]


def __getattr__(name):  # MLPClassifier / MLPRegressor load on first use: scikit-learn is optional
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators
        return getattr(estimators, name)
    if name in ("onnx", "search", "plot"):  # onnx, search's pandas / joblib / dask, plot's matplotlib are optional
        import importlib
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
