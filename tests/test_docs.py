"""The documentation builds without a warning, every public name is in the API reference with a
docstring, and ruff and mypy pass: a broken docstring, example or lint fails the tests."""
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"

# The modules whose public names the API reference must list.
PUBLIC_MODULES = ["fastmlp", "fastmlp.model", "fastmlp.layers", "fastmlp.optim", "fastmlp.callbacks",
                  "fastmlp.checkpoints", "fastmlp.estimators", "fastmlp.saving", "fastmlp.onnx",
                  "fastmlp.datasets", "fastmlp.activations", "fastmlp.losses", "fastmlp.initializers",
                  "fastmlp.backends", "fastmlp.schedules", "fastmlp.search", "fastmlp.diagnostics", "fastmlp.plot"]


def run(*args, env=None, timeout=600):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    return proc.returncode, (proc.stdout + proc.stderr)[-8000:]


def public_objects(module_name):
    """The classes and functions a user reaches from the module (its own, or in its __all__)."""
    mod = importlib.import_module(module_name)
    exported = set(getattr(mod, "__all__", ()))
    if module_name == "fastmlp":
        exported |= {"MLPClassifier", "MLPRegressor"}
    out = {}
    for name in sorted(exported | set(dir(mod))):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        own = obj.__module__ == module_name or (module_name == "fastmlp.callbacks"
                                                 and obj.__module__ == "fastmlp.checkpoints")
        if name not in exported and not own:
            continue  # imported from elsewhere (numpy, scikit-learn, fastmlp's own private modules)
        out[f"{module_name}.{name}"] = obj
    return out


def documented_objects():
    """The objects the API pages' auto directives name (resolved against ``currentmodule``)."""
    found = {}
    for page in sorted(API.glob("*.rst")):
        current = None
        for line in page.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\.\. (currentmodule|automodule):: (\S+)", line.strip())
            if m:
                current = m.group(2)
                continue
            m = re.match(r"\.\. auto(class|function|exception|data):: (\S+)", line.strip())
            if m:
                name = m.group(2)
                full = name if name.startswith("fastmlp") else f"{current}.{name}"
                found[full] = page.name
    objects = {}
    for full in found:
        parts = full.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            objects[full] = obj
            break
    return objects


def test_api_reference_lists_every_public_name():
    documented = {id(obj) for obj in documented_objects().values()}
    missing = [name for module in PUBLIC_MODULES for name, obj in public_objects(module).items()
               if id(obj) not in documented]
    assert not missing, f"public names missing from docs/api/*.rst: {missing}"


def test_every_public_name_has_a_docstring():
    lacking = []
    for module in PUBLIC_MODULES:
        for name, obj in public_objects(module).items():
            if not (obj.__doc__ or "").strip():
                lacking.append(name)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    # an override inherits its base's docstring (inspect.getdoc looks it up)
                    if not attr.startswith("_") and inspect.isfunction(member) \
                            and not (inspect.getdoc(getattr(obj, attr)) or "").strip() \
                            and not attr.startswith("on_") and attr not in ("set_model", "get_config"):
                        lacking.append(f"{name}.{attr}")
    assert not lacking, f"public names without a docstring: {sorted(set(lacking))}"


def test_the_api_check_sees_a_missing_name(monkeypatch):
    """The check above would fail if a public function were added without a page entry."""
    import fastmlp.datasets

    def load_something_new():
        """A new loader."""

    monkeypatch.setattr(fastmlp.datasets, "load_something_new", load_something_new, raising=False)
    load_something_new.__module__ = "fastmlp.datasets"
    documented = {id(obj) for obj in documented_objects().values()}
    assert "fastmlp.datasets.load_something_new" in public_objects("fastmlp.datasets")
    assert id(load_something_new) not in documented


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    # -E: a fresh environment, so every docstring is read again; every gallery example runs (small)
    code, out = run("-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", "docs", str(tmp_path / "html"),
                    env={"FASTMLP_DOCS_RERUN": "1", "MPLBACKEND": "agg"})
    assert code == 0, out
    html = tmp_path / "html"
    for page in ["index.html", "api/model.html", "benchmarks.html", "design.html", "guide/activations.html",
                 "auto_examples/plot_activations.html", "changelog.html"]:
        assert (html / page).is_file(), page
    assert "sphx_glr_plot_activations_001.png" in (html / "guide" / "activations.html").read_text(encoding="utf-8")
    assert 'id="fastmlp.Sequential.fit"' in (html / "api" / "model.html").read_text(encoding="utf-8")


def test_ruff():
    code, out = run("-m", "ruff", "check", "--no-cache", ".")
    assert code == 0, out


def test_mypy():
    code, out = run("-m", "mypy", "--no-incremental")  # files and options: [tool.mypy] in pyproject.toml
    assert code == 0, out
