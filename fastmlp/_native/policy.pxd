"""Which path a training call takes: the loop on threads of its own or not, units on packed
operands or in place. A call's variant (codes.Variant, from fastmlp._planner) forces one
where it is valid; RULE leaves it to the constants."""
from fastmlp._native.common cimport VAR_PACKED, VAR_SERIAL, VAR_SPLIT, UnitRec
from fastmlp._native.gemm cimport pk_slack_ok
from fastmlp._native.units cimport UnitPtrs

cdef enum:
    MAX_LOOP_THREADS = 64


cdef struct LoopPolicy:
    Py_ssize_t mt_min_work     # the smallest step (multiply-adds) the loop splits between threads
    Py_ssize_t mt_min_rows     # the fewest batch rows per thread of its own
    bint packed_gemm           # the split float32 loop may keep units on packed operands
    Py_ssize_t pk_max_rows     # ... for batches of at most this many rows per thread
    Py_ssize_t pk_min_weights  # ... on dense units of at least this many weights
    bint fold_l2               # Adam on the split loop adds the L2 term in its own pass


cdef LoopPolicy* loop_policy() noexcept nogil
cdef int threads_for(const UnitRec* recs, Py_ssize_t n_units, Py_ssize_t n_params, Py_ssize_t rows,
                     int variant) noexcept nogil


cdef inline bint pk_allowed(const LoopPolicy* pol, int variant, Py_ssize_t rows, int nt) noexcept nogil:
    # Whether a split float32 loop of nt threads may keep units packed: the
    # variant forces it (PACKED) or forbids it (SPLIT), or the rule's row bound decides
    if nt < 2 or not pol.packed_gemm or variant == VAR_SPLIT or variant == VAR_SERIAL:
        return False
    return variant == VAR_PACKED or rows <= pol.pk_max_rows * nt


cdef inline bint pk_unit(const LoopPolicy* pol, const UnitPtrs* u, Py_ssize_t i) noexcept nogil:
    # Whether the split float32 loop keeps unit i packed: a dense unit with a W
    # of at least pk_min_weights weights, whose products lose at most 1/8 of
    # their work to the zero columns of the last 16-column panel (of W, and of
    # W^T where the unit has a product into the previous dA). Smaller and
    # narrower layers stay in place, on BLAS or smallgemm.h.
    return (u.r.kind == 1 and u.r.fan_in * u.r.fan_out >= pol.pk_min_weights
            and pk_slack_ok(u.r.fan_out) and (i == 0 or pk_slack_ok(u.r.fan_in)))
