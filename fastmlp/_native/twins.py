"""Build-time helpers of the Tempita templates (``*.tp``): setup.py passes these to every template.

twin(work, var, n, body): a loop over rows and its parallel twin from one body
(prange when parallel_ok(RT, work), else range).
chunks(work, n, call): one call on the whole span, or one call per thread on
contiguous chunks; call has {s} (the chunk's start) and {m} (its length).
Not imported by fastmlp at run time.
"""


def twin(work, var, n, body, pad="    "):
    inner = "\n".join(pad + "        " + line for line in body.strip("\n").split("\n"))
    return (f"{pad}if parallel_ok(RT, {work}):\n"
            f"{pad}    for {var} in prange({n}, schedule='static', nogil=True, num_threads=RT.n_threads):\n"
            f"{inner}\n{pad}else:\n{pad}    for {var} in range({n}):\n{inner}")


def chunks(work, n, call, pad="    ", result=None):
    par = call.format(s="s", m=f"min(c, {n} - s)")
    ser = call.format(s="0", m=n)
    if result:
        par, ser = f"{result} += {par}", f"return {ser}"
    return (f"{pad}if parallel_ok(RT, {work}):\n"
            f"{pad}    c = _chunk({n}, RT.n_threads)\n"
            f"{pad}    for t in prange(RT.n_threads, schedule='static', nogil=True, num_threads=RT.n_threads):\n"
            f"{pad}        s = t * c\n{pad}        if s < {n}:\n{pad}            {par}\n"
            + (f"{pad}    return {result}\n{pad}{ser}" if result else f"{pad}else:\n{pad}    {ser}"))
