"""The jitted kernels of the Numba backend, one module per idea (``fastmlp.backends.numba_backend``
is the public module: the reference's names, their checks, the training loop's entry)."""
