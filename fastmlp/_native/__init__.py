"""The native layer: the codes and the plan every backend shares, and the compiled modules.

Pure Python: ``codes`` (the enums), ``plan`` (the Plan, the LoopState and
their checks). Compiled from Cython (``setup.py`` builds them; the Cython
backend loads them): ``runtime``, ``gemm``, ``kernels``, ``loop``,
``predictor``. See the README's "What's where".
"""
