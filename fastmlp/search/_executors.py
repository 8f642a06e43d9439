"""Where trials run: in this process, in loky worker processes, or as Dask tasks.

Each executor takes the search's data once (the workers of "processes" map it
from .npy files written once; Dask gets it scattered to every worker once) and
offers ``submit(task)``, ``next_done() -> (task, result, error)`` and
``close()``. ``error`` is set when the trial could not run to its end because
its worker died (the trial's own failures are in its record).
"""
import asyncio
import collections
import concurrent.futures
import os
import shutil
import tempfile
import uuid

import numpy as np

from ._trial import run_trial


class InProcess:
    """One trial after another in this process (trials run when the driver asks for a result)."""

    n_slots = 1

    def __init__(self, data):
        self.data = data
        self.queue = collections.deque()

    def submit(self, task):
        self.queue.append(task)

    @property
    def in_flight(self):
        return len(self.queue)

    def next_done(self):
        task = self.queue.popleft()
        return task, run_trial(task, self.data), None

    def close(self):
        self.queue.clear()


class Processes:
    """joblib's loky workers (spawned processes, reused between searches); each trial on one thread."""

    def __init__(self, data, n_jobs):
        try:
            from joblib.externals.loky import get_reusable_executor
        except ImportError as exc:  # pragma: no cover - joblib is in the search extra
            raise ImportError("executor='processes' needs joblib: pip install 'fastmlp[search]'.") from exc
        self._get = get_reusable_executor
        self.n_slots = n_jobs
        self.dir = tempfile.mkdtemp(prefix="fastmlp-search-")
        X, y, Xv, yv, n_outputs, loss = data
        paths = []
        for name, a in (("X", X), ("y", y), ("X_val", Xv), ("y_val", yv)):
            path = os.path.join(self.dir, f"{name}.npy")
            np.save(path, np.ascontiguousarray(a))
            paths.append(path)
        self.ref = {"files": tuple(paths), "n_outputs": n_outputs, "loss": loss}
        self.futures = {}

    def submit(self, task):
        # a pool broken by a dead worker is replaced by a new one here
        executor = self._get(max_workers=self.n_slots, timeout=60)
        self.futures[executor.submit(run_trial, task, self.ref)] = task

    @property
    def in_flight(self):
        return len(self.futures)

    def next_done(self):
        done, _ = concurrent.futures.wait(list(self.futures), return_when=concurrent.futures.FIRST_COMPLETED)
        fut = min(done, key=lambda f: self.futures[f]["id"])
        task = self.futures.pop(fut)
        try:
            return task, fut.result(), None
        except Exception as exc:  # TerminatedWorkerError, BrokenProcessPool
            return task, None, exc

    def close(self):
        for fut in self.futures:
            fut.cancel()
        self.futures.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class DaskClient:
    """Each trial a task of a ``dask.distributed.Client``; the data scattered to every worker once."""

    def __init__(self, client, data, n_jobs):
        from distributed import wait

        self.client, self._wait = client, wait
        workers = client.nthreads()
        self.n_slots = n_jobs if n_jobs > 0 else max(1, sum(workers.values()))
        self.data = data
        self._scatter()
        self.futures = {}
        self.lost = {}  # trial id -> times its data was lost
        self.placed = {}  # future -> the worker it was sent to
        self.tag = uuid.uuid4().hex[:8]

    def _scatter(self):
        # one object (the tuple), sent to every worker now, not with every trial
        [self.ref] = self.client.scatter([self.data], broadcast=True, hash=False)

    def submit(self, task):
        if self.ref.status != "finished":  # every worker that held the data died: send it again
            self._scatter()
        key = f"fastmlp-trial-{self.tag}-{task['id']}-{task['epochs']}-{task['attempt']}-{task.get('resent', 0)}"
        # retries=0: a trial's own errors are in its record; a worker's death comes back as
        # KilledWorker (after the scheduler's allowed-failures) and the driver retries it once
        # placed on the worker with the most free threads: a trial queued behind another on one
        # worker would die with it (and count as that death's suspect)
        busy = collections.Counter(self.placed.values())
        free = {w: n - busy[w] for w, n in self.client.nthreads().items()}
        where = {}
        if free:
            where = {"workers": [max(sorted(free), key=lambda w: free[w])], "allow_other_workers": True}
        fut = self.client.submit(run_trial, task, self.ref, key=key, pure=False, retries=0, **where)
        self.futures[fut] = task
        self.placed[fut] = where.get("workers", [None])[0]

    @property
    def in_flight(self):
        return len(self.futures)

    def next_done(self):
        while True:
            done = self._wait(list(self.futures), return_when="FIRST_COMPLETED").done
            fut = min(done, key=lambda f: self.futures[f]["id"])
            task = self.futures.pop(fut)
            self.placed.pop(fut, None)
            try:
                return task, fut.result(), None
            except asyncio.CancelledError as exc:
                # the scattered data was lost with the workers that held it (not this trial's
                # fault): scatter it again and run the trial again, a few times at most
                lost = self.lost.get(task["id"], 0) + 1
                if lost > 3:
                    return task, None, exc
                self.lost[task["id"]] = lost
                self._scatter()
                self.submit(dict(task, resent=lost))
            except Exception as exc:  # KilledWorker (its worker died running it), a lost connection
                return task, None, exc

    def close(self):
        if self.futures:
            self.client.cancel(list(self.futures))
        self.futures.clear()
        self.placed.clear()
        self.client.cancel([self.ref])


def make(executor, data, n_jobs):
    if executor is None:
        return InProcess(data)
    if executor == "processes":
        return Processes(data, n_jobs if n_jobs > 0 else (os.cpu_count() or 1))
    return DaskClient(executor, data, n_jobs)
