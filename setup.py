"""Build of the compiled kernels (fastmlp/_kernels.pyx) with OpenMP."""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


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
    # kernels AVX2/AVX-512 instead of SSE2 (measured on AMD EPYC, per step of
    # the 784-256-128-10 net: Adam 295 -> see the commit message). For a
    # binary that must run on other CPUs set FASTMLP_PORTABLE=1.
    if os.environ.get("FASTMLP_PORTABLE") != "1" and _march_native_ok():
        flags.append("-march=native")
    return flags


compile_args, link_args = _openmp_flags()
extensions = [
    Extension(
        "fastmlp._kernels",
        ["fastmlp/_kernels.pyx"],
        depends=["fastmlp/_fastmath.h", "fastmlp/_smallgemm.h", "fastmlp/_barrier.h", "fastmlp/_packgemm.h"],
        include_dirs=[np.get_include()],
        extra_compile_args=[*_opt_flags(), *compile_args],
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
