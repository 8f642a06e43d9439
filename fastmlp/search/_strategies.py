"""The strategies: grid, random, successive halving, aging evolution; and the loop that feeds an executor.

Every strategy asks the same driver to keep up to ``n_slots`` trials in
flight. The driver records each result, retries once a trial whose worker
died, stops submitting at the time budget, and on Ctrl-C (KeyboardInterrupt)
cancels what is in flight and returns what is done.
"""
import math
import time

import numpy as np

from ._space import NAMES


def trial_seed(seed, trial_id):
    """The model seed of trial ``trial_id``: from (seed, id), so the same on any worker."""
    return int(np.random.SeedSequence([seed, trial_id]).generate_state(1, np.uint32)[0])


class Driver:
    def __init__(self, executor, settings, progress, n_params, better):
        self.executor, self.settings, self.progress = executor, settings, progress
        self.n_params, self.better = n_params, better
        self.records = {}  # trial id -> record
        self.models = {}  # trial id -> trained model still needed (survivors, the best)
        self.best_id = None
        self.interrupted = False
        self.keep = ()  # ids whose models the strategy still needs (halving's current rung)
        self.t0 = time.time()
        budget = settings["time_budget"]
        self.deadline = None if budget is None else self.t0 + budget
        self.next_id = 0

    # --------------------------------------------------------------- tasks
    def new_task(self, params, parent=None):
        tid = self.next_id
        self.next_id += 1
        task = {"id": tid, "params": params, "seed": trial_seed(self.settings["seed"], tid), "epochs": 0,
                "initial_epoch": 0, "model": None, "attempt": 0, "parent": parent}
        for key in ("metric", "dtype", "backend", "n_threads", "callbacks"):
            task[key] = self.settings[key]
        task["deadline"] = self.deadline
        return task

    def out_of_time(self):
        return self.deadline is not None and time.time() >= self.deadline

    # ---------------------------------------------------------------- loop
    def drive(self, next_task, on_result=None):
        """Submit ``next_task()`` (None: nothing to submit now) while slots are free, and
        take results until nothing is in flight. Returns False once interrupted."""
        ex = self.executor
        if self.interrupted:
            return False
        try:
            while True:
                while ex.in_flight < ex.n_slots and not self.out_of_time():
                    task = next_task()
                    if task is None:
                        break
                    ex.submit(task)
                if ex.in_flight == 0:
                    return True
                task, result, error = ex.next_done()
                if error is not None and task["attempt"] == 0:
                    task = dict(task, attempt=1)  # the worker died: once more, on a fresh worker
                    ex.submit(task)
                    continue
                if error is not None:
                    result = ({"status": "failed", "metric": float("nan"), "epochs": task["initial_epoch"],
                               "seconds": float("nan"), "pid": None,
                               "error": f"the worker died twice running this trial: {type(error).__name__}: "
                                        f"{error}"}, None)
                self.record(task, *result)
                if on_result is not None:
                    on_result(task, self.records[task["id"]])
        except KeyboardInterrupt:
            self.interrupted = True
            return False

    def record(self, task, rec, model):
        tid = task["id"]
        prev = self.records.get(tid)
        rec = dict(rec)
        rec["trial"] = tid
        rec.update({k: task["params"][k] for k in NAMES})
        rec["n_params"] = self.n_params(task["params"])
        rec["attempts"] = task["attempt"] + 1
        if prev is not None:  # a halving survivor: its time adds up
            rec["seconds"] = prev["seconds"] + rec["seconds"]
            rec["attempts"] = max(prev["attempts"], rec["attempts"])
        rec["finished"] = time.time() - self.t0
        if task.get("parent") is not None:
            rec["parent"] = task["parent"]
        if "rung" in task:
            rec["rung"] = task["rung"]
        self.records[tid] = rec
        if model is not None:
            self.models[tid] = model
        else:
            self.models.pop(tid, None)
        if rec["status"] != "failed" and (self.best_id is None or self.better(rec["metric"],
                                                                             self.records[self.best_id]["metric"])):
            old, self.best_id = self.best_id, tid
            if old is not None and old != tid and not self._still_needed(old):
                self.models.pop(old, None)
        elif tid != self.best_id and not self._still_needed(tid):
            self.models.pop(tid, None)
        self.progress.update(self.records[self.best_id]["metric"] if self.best_id is not None else None)

    def _still_needed(self, tid):
        return tid in self.keep

    def close(self):
        if self.interrupted:
            try:
                self.executor.close()
            except Exception:  # the pool may be broken already: the trials done are what counts
                pass
        else:
            self.executor.close()


# ------------------------------------------------------------------ strategies
def run_list(driver, tasks_params):
    """grid and random: a fixed list of trials, in order (the same set with any number of workers)."""
    pending = list(tasks_params)[::-1]
    driver.drive(lambda: driver_task(driver, pending.pop()) if pending else None)


def driver_task(driver, params, **kw):
    task = driver.new_task(params, **kw)
    task["epochs"] = driver.settings["epochs"]
    return task


def halving_rungs(n_trials, epochs, eta):
    """[(n_configs, epochs)] of successive halving: n_trials configurations at the
    fewest epochs, 1/eta of them going on at eta times the epochs, up to ``epochs``."""
    n_rungs = 1
    while (n_rungs < 1 + math.floor(math.log(n_trials, eta) + 1e-9)
           and epochs / eta ** n_rungs >= 1):
        n_rungs += 1
    out = []
    for i in range(n_rungs):
        n_i = max(1, math.ceil(n_trials / eta ** i))
        r_i = max(1, int(round(epochs / eta ** (n_rungs - 1 - i))))
        out.append((n_i, r_i))
    return out


def run_halving(driver, space, rng, n_trials, epochs, eta):
    """Successive halving with epochs as the resource: the survivors of a rung go on
    training (the same model, ``fit(initial_epoch=...)``), not from scratch."""
    rungs = halving_rungs(n_trials, epochs, eta)
    tasks = []
    for _ in range(rungs[0][0]):
        task = driver.new_task(space.sample(rng))
        task["epochs"], task["rung"] = rungs[0][1], 0
        tasks.append(task)
    for i, (n_i, r_i) in enumerate(rungs):
        if i > 0:
            ok = [t for t in tasks if driver.records.get(t["id"], {}).get("status") == "ok"]
            ok.sort(key=lambda t: (_sort_key(driver, driver.records[t["id"]]["metric"]), t["id"]))
            tasks = []
            for t in ok[:n_i]:
                rec = driver.records[t["id"]]
                model = driver.models.get(t["id"])
                if model is None:
                    continue
                tasks.append(dict(t, epochs=r_i, initial_epoch=rec["epochs"], model=model, attempt=0, rung=i))
            if not tasks or driver.out_of_time():
                break
        driver.keep = {t["id"] for t in tasks}
        for tid in list(driver.models):  # the models of the trials that stop here are not needed
            if tid not in driver.keep and tid != driver.best_id:
                del driver.models[tid]
        pending = list(tasks)[::-1]
        if not driver.drive(lambda pending=pending: pending.pop() if pending else None):
            break
    driver.keep = ()
    for tid in list(driver.models):
        if tid != driver.best_id:
            del driver.models[tid]


def _sort_key(driver, metric):
    """Best first: higher for accuracies, lower for losses."""
    return -metric if driver.better(1.0, 0.0) else metric


def run_evolution(driver, space, rng, n_trials, population, sample_size):
    """Regularized (aging) evolution, Real et al. 2019: a population of the last
    ``population`` trained models; each child mutates the best of ``sample_size``
    drawn from it, and the oldest member dies when a child joins."""
    members = []  # (trial id, params, metric), oldest first
    made = [0]

    def next_task():
        if made[0] >= n_trials:
            return None
        if made[0] < population or not members:
            if made[0] >= population and driver.executor.in_flight:
                return None  # wait for a member to mutate
            params, parent = space.sample(rng), None
        else:
            idx = rng.choice(len(members), size=min(sample_size, len(members)), replace=False)
            contenders = [members[i] for i in sorted(idx)]
            winner = min(contenders, key=lambda m: (_sort_key(driver, m[2]), m[0]))
            params, parent = space.mutate(winner[1], rng), winner[0]
        made[0] += 1
        return driver_task(driver, params, parent=parent)

    def on_result(task, rec):
        if rec["status"] == "failed":
            return
        members.append((task["id"], task["params"], rec["metric"]))
        if len(members) > population:
            members.pop(0)  # the oldest dies, however good it is

    driver.drive(next_task, on_result)
