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


def _opt_flags():
    if sys.platform == "win32":
        return ["/O2"]
    # No errno from sqrt lets GCC/Clang vectorize the optimizer loops; the
    # kernels never read errno. (No -ffast-math: results must match the reference.)
    return ["-O3", "-fno-math-errno"]


compile_args, link_args = _openmp_flags()
extensions = [
    Extension(
        "fastmlp._kernels",
        ["fastmlp/_kernels.pyx"],
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
