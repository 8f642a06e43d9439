"""How ``fit`` cuts an epoch into native calls, and how it takes Ctrl-C.

The native loop runs many steps per call with no Python between them. ``fit``
makes calls of about :data:`CHUNK_SECONDS` each (sized from the time per step
of the last call) when a callback has a batch hook (the progress bar has
one), so that it runs about ten times a second; without one, calls of about
:data:`QUIET_CHUNK_SECONDS`, so that Ctrl-C still gets a turn while a call's
fixed cost (the checks, waking the loop's threads, packing the weights) stays
far below a thousandth of the fit.

Ctrl-C during a native call cannot stop it midway. :func:`deferred_interrupt`
records the signal instead of raising in the middle of the bookkeeping after
a call; ``fit`` stops at the end of the chunk, with the weights of its last
step, runs ``on_train_end`` and then raises ``KeyboardInterrupt``.
"""
import contextlib
import signal
import threading

#: the target duration of one native call during fit, in seconds, with batch hooks
CHUNK_SECONDS = 0.1
#: the same without batch hooks
QUIET_CHUNK_SECONDS = 1.0
#: the growth of a chunk over the last one at most (the first calls of a fit
#: include one-time costs, such as Numba's compile, and under-estimate the rate)
_GROWTH = 8


class Pace:
    """The number of steps of the next native call, from the time of the last ones."""

    def __init__(self):
        self.per_step = None
        self.last = 1

    def next(self, remaining, seconds):
        if self.per_step is None:
            k = 1
        else:
            k = max(1, min(int(seconds / self.per_step), self.last * _GROWTH))
        self.last = k  # unclipped: an epoch's short last chunk does not slow the next epoch's ramp
        return min(k, remaining)

    def record(self, steps, seconds):
        if steps > 0:
            self.per_step = max(seconds / steps, 1e-9)


class Interrupt:
    """Whether Ctrl-C came during the fit (set by the handler of :func:`deferred_interrupt`)."""

    requested = False


@contextlib.contextmanager
def deferred_interrupt():
    """Record SIGINT in the yielded :class:`Interrupt` instead of raising, in the
    main thread (elsewhere Python delivers no signals, and nothing changes)."""
    flag = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield flag
        return
    if previous is not signal.default_int_handler:
        # someone else (a debugger, an application) owns Ctrl-C: leave it to them
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:  # a second Ctrl-C: stop now, as Python would
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
