"""Build of the compiled native layer (fastmlp/_native/*.pyx) with OpenMP.

The ``*.tp`` files are Tempita templates (Tempita ships with Cython): this
script renders them first (``common.pxd`` from the codes of
``fastmlp/_native/codes.py``, ``kernels.pyx`` with its loss and twin-loop
tables), then cythonizes every module.
"""
import os
import runpy
import sys
from pathlib import Path

import numpy as np
from Cython import Tempita
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = Path(__file__).resolve().parent / "fastmlp" / "_native"
MODULES = ("runtime", "gemm", "units", "kernels", "policy", "loop", "predictor")
HEADERS = ("barrier.h", "fastmath.h", "smallgemm.h", "packgemm.h")


def _render_templates():
    """Render every fastmlp/_native/*.tp next to it (only when the output would change)."""
    codes = runpy.run_path(str(NATIVE / "codes.py"))
    twins = runpy.run_path(str(NATIVE / "twins.py"))
    names = dict(
        twin=twins["twin"], chunks=twins["chunks"],
        enums=codes["ENUMS"], Act=codes["Act"], Phase=codes["Phase"],
        prefix={"Unit": "UNIT", "Act": "ACT", "Loss": "LOSS", "Opt": "OPT", "Phase": "PH", "Variant": "VAR"},
        unit_fields=codes["UNIT_FIELDS"], hyper_fields=codes["HYPER_FIELDS"],
        ctype={"int64": "int64_t", "float64": "double"},
    )
    for tp in sorted(NATIVE.glob("*.tp")):
        text = Tempita.sub(tp.read_text(), **names)
        out = tp.with_suffix("")
        if not out.exists() or out.read_text() != text:
            out.write_text(text)


def _openmp_flags():
    if os.environ.get("FASTMLP_NO_OPENMP") == "1":
        return [], []
    if sys.platform == "darwin":  # Apple clang needs libomp; build without it
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


def _march_native_ok():
    """Whether the C compiler accepts -march=native (GCC and Clang on x86-64 and ARM do)."""
    import subprocess
    import sysconfig
    import tempfile

    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as fh:
            fh.write("int main(void) { return 0; }\n")
        try:
            done = subprocess.run([*cc, "-march=native", "-c", src, "-o", os.path.join(tmp, "t.o")],
                                  capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
    return done.returncode == 0


def _opt_flags():
    if sys.platform == "win32":
        return ["/O2"]
    # No errno from sqrt lets GCC/Clang vectorize the optimizer loops; the
    # kernels never read errno. (No -ffast-math: results must match the reference.)
    flags = ["-O3", "-fno-math-errno"]
    # fastmlp builds from source on the machine that runs it, like Numba,
    # which compiles for the host CPU: -march=native gives the element-wise
    # kernels AVX2/AVX-512 instead of SSE2. For a binary that must run on
    # other CPUs set FASTMLP_PORTABLE=1.
    if os.environ.get("FASTMLP_PORTABLE") != "1" and _march_native_ok():
        flags.append("-march=native")
    return flags


_render_templates()
compile_args, link_args = _openmp_flags()
extensions = [
    Extension(
        f"fastmlp._native.{name}",
        [f"fastmlp/_native/{name}.pyx"],
        depends=[f"fastmlp/_native/{h}" for h in HEADERS] + ["fastmlp/_native/codes.py", "fastmlp/_native/twins.py"],
        include_dirs=[np.get_include(), "fastmlp/_native"],
        extra_compile_args=[*_opt_flags(), *compile_args],
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in MODULES
]

setup(
    # the modules compile independently: one compiler per core
    options={"build_ext": {"parallel": max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                              else (os.cpu_count() or 1))}},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["."],
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
