"""Sphinx configuration of fastmlp's documentation (``python -m sphinx -W docs docs/_build/html``)."""
import os
import sys
import warnings

sys.path.insert(0, os.path.abspath(".."))

import fastmlp  # noqa: E402

project = "fastmlp"
author = "the fastmlp developers"
copyright = "2026, the fastmlp developers"
release = version = fastmlp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "examples/README.txt", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.codeobj.json"]
html_theme = "alabaster"
html_theme_options = {"description": "MLPs on the CPU at native speed", "fixed_sidebar": True}
html_static_path = []

# API reference: the docstrings, numpydoc format; the build fails on a public name without a
# docstring (GL08), a parameter not documented (PR01) or documented but absent (PR02).
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections carry the types and shapes
autodoc_mock_imports = []
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = {"GL08", "PR01", "PR02"}
numpydoc_validation_exclude = {
    r"\.__init__$",             # documented in the class docstring, as numpydoc asks
    r"\.on_[a-z_]+$",           # the callbacks' hooks: Keras' signatures, documented on Callback
    r"\.set_model$",
    r"\.set_params$",
    r"\.get_config$",
    r"\.__repr__$",
}
numpydoc_xref_param_type = False

# Examples gallery: every script runs in the build, at a small size.
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "plot_gallery": "True",
    "within_subsection_order": "FileNameSortKey",
    "write_computation_times": False,
    # tests/test_docs.py sets it: every example runs, not only those changed since the last build
    "run_stale_examples": os.environ.get("FASTMLP_DOCS_RERUN") == "1",
}
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("FASTMLP_DOCS_SMALL", "1")  # the examples read it to stay small in the build

intersphinx_mapping = {}  # no network in CI: links to other projects are written out

myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")
