"""Row loops over whole matrices (each with its parallel twin), shared by the def kernels and the loop."""
from cython cimport floating


cdef void rows_act(const floating* Z, floating* A, Py_ssize_t n, Py_ssize_t k, int act,
                   floating alpha) noexcept nogil
cdef void rows_bias_act(floating* Z, const floating* b, floating* A, Py_ssize_t n, Py_ssize_t k,
                        bint has_bias, int act, floating alpha) noexcept nogil
cdef void rows_act_grad(const floating* Z, const floating* A, const floating* dA, floating* dZ,
                        Py_ssize_t n, Py_ssize_t k, int act, floating alpha) noexcept nogil
