"""Backend registry: ``get_backend(name)``, ``use_backend()``, ``available_backends()``.

A backend is a module exposing every kernel that :mod:`.reference` defines,
with the same names and signatures. ``"auto"`` picks the fastest one that is
built and importable (cython, then numba, then reference); the environment
variable ``FASTMLP_BACKEND`` sets the default. Asking for a native backend
that cannot be loaded falls back to the next one with a warning, never
silently.
"""
import contextlib
import importlib
import warnings

from .. import _config

# Fastest first: the order "auto" tries them in.
_MODULES = {
    "cython": ".cython_backend",
    "numba": ".numba_backend",
    "reference": ".reference",
}
BACKEND_NAMES = tuple(_MODULES)
_loaded = {}
_errors = {}
_current = None


class BackendUnavailableWarning(RuntimeWarning):
    """A requested native backend could not be loaded; another one is used."""


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(_MODULES[name], __name__)
    except Exception as exc:  # ImportError, or a compiled module built for another Python
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = mod
    return mod


def available_backends():
    """Names of the backends that load on this machine, fastest first."""
    return [name for name in BACKEND_NAMES if _load(name) is not None]


def backend_error(name):
    """Why a backend failed to load, or None.

    Parameters
    ----------
    name : {"cython", "numba", "reference"}
    """
    _load(name)
    return _errors.get(name)


def get_backend(name=None):
    """Return the backend module for ``name``.

    Parameters
    ----------
    name : {"auto", "cython", "numba", "reference"} or None
        None means the ``use_backend`` context, else ``FASTMLP_BACKEND``,
        else "auto".

    Returns
    -------
    module
        The backend: every kernel of :mod:`fastmlp.backends.reference`, same names and signatures.
    """
    if name is None:
        name = _current or _config.BACKEND
    if not isinstance(name, str) or (name != "auto" and name not in _MODULES):
        valid = ", ".join(["auto", *sorted(_MODULES)])
        raise ValueError(f"Unknown backend {name!r}. Valid backends: {valid}.")
    if name == "auto":
        for candidate in BACKEND_NAMES:
            mod = _load(candidate)
            if mod is not None:
                if candidate != "cython":
                    warnings.warn(
                        "The compiled cython backend is not available "
                        f"({_errors.get('cython')}); using the {candidate} backend. "
                        "Reinstall fastmlp with a C compiler to build it.",
                        BackendUnavailableWarning,
                        stacklevel=2,
                    )
                return mod
    mod = _load(name)
    if mod is not None:
        return mod
    order = list(BACKEND_NAMES)
    for candidate in order[order.index(name) + 1:]:
        fallback = _load(candidate)
        if fallback is not None:
            warnings.warn(
                f"Backend {name!r} is not available ({_errors[name]}); "
                f"falling back to {candidate!r}.",
                BackendUnavailableWarning,
                stacklevel=2,
            )
            return fallback
    raise ImportError(f"No backend could be loaded: {_errors}")  # pragma: no cover


@contextlib.contextmanager
def use_backend(name):
    """Context manager: models created without a backend use ``name``.

    Parameters
    ----------
    name : {"auto", "cython", "numba", "reference"}
        Checked on entry.
    """
    global _current
    get_backend(name)  # validate now, not at first use
    previous, _current = _current, name
    try:
        yield
    finally:
        _current = previous
