"""fm.search: the space, every strategy in process, on loky processes and on a Dask LocalCluster;
reproducibility, failing trials, a killed worker, Ctrl-C, the time budget, the progress bar, the plot."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm

pd = pytest.importorskip("pandas")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
search = fm.search
Space = search.Space

COLUMNS = ["trial", "depth", "widths", "activation", "init", "lr", "batch_size", "dropout", "batch_norm",
           "optimizer", "n_params", "metric", "epochs", "seconds", "status", "error", "attempts"]


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def small_space(**kw):
    args = dict(depth=[1, 2], width=[8, 16, 32], lr=[1e-3, 3e-3], batch_size=64)
    args.update(kw)
    return Space(**args)


def same_trials(a, b, metrics=True):
    cols = ["trial", "depth", "widths", "lr", "batch_size", "dropout", "n_params", "epochs", "status"]
    pd.testing.assert_frame_equal(a.trials[cols], b.trials[cols])
    if metrics:
        np.testing.assert_array_equal(a.trials.metric.to_numpy(), b.trials.metric.to_numpy())


# --------------------------------------------------------------------- the space
def test_space_widths_are_conditional_on_depth_and_tied():
    rng = np.random.default_rng(0)
    space = Space(depth=(1, 3), width=(16, 512), lr=(1e-4, 1e-2), dropout=(0.0, 0.5), batch_size=[32, 64])
    draws = [space.sample(rng) for _ in range(200)]
    assert {d["depth"] for d in draws} == {1, 2, 3}
    for d in draws:
        assert len(d["widths"]) == d["depth"]
        assert all(16 <= w <= 512 and isinstance(w, int) for w in d["widths"])
        assert 1e-4 <= d["lr"] <= 1e-2 and 0.0 <= d["dropout"] <= 0.5 and d["batch_size"] in (32, 64)
    # log-uniform: about as many widths below sqrt(16*512) ~ 90 as above it
    widths = np.concatenate([d["widths"] for d in draws])
    assert 0.35 < np.mean(widths < 90.5) < 0.65
    assert any(len(set(d["widths"])) > 1 for d in draws)  # per layer by default
    tied = Space(depth=[3], width=(16, 512), tied=True)
    assert all(len(set(tied.sample(rng)["widths"])) == 1 for _ in range(20))


def test_grid_enumerates_every_combination():
    grid = small_space().grid()
    # depth 1: 3 widths, depth 2: 9 width pairs; times 2 learning rates
    assert len(grid) == (3 + 9) * 2
    assert len({(g["widths"], g["lr"]) for g in grid}) == len(grid)
    assert len(Space(depth=[1, 2], width=[8, 16], tied=True, lr=1e-3).grid()) == 4
    with pytest.raises(ValueError, match="Grid search needs a list of choices for lr"):
        Space(depth=[1], width=[8], lr=(1e-4, 1e-2)).grid()


@pytest.mark.parametrize("kw, match", [
    (dict(depth=(0, 2)), "depth must be an integer > 0"),
    (dict(width=(64, 16)), "low <= high"),
    (dict(activation="softmax"), "cannot be a hidden activation"),
    (dict(activation="nope"), "relu"),
    (dict(optimizer="lbfgs"), "optimizer must be one of"),
    (dict(dropout=1.5), r"dropout must be in \[0.0, 1.0\)"),
    (dict(lr=[]), "empty list of choices"),
    (dict(activation=("relu", "tanh")), "takes a value or a list of choices"),
])
def test_space_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        Space(**kw)


def test_mutation_changes_one_thing():
    space = Space(depth=(1, 4), width=(16, 256), activation=["relu", "tanh"], lr=(1e-4, 1e-2))
    rng = np.random.default_rng(1)
    parent = space.sample(rng)
    kinds = set()
    for _ in range(200):
        child = space.mutate(parent, rng)
        diff = [k for k in child if child[k] != parent[k]]
        assert len(child["widths"]) == child["depth"]
        if "depth" in diff:
            assert abs(child["depth"] - parent["depth"]) == 1 and set(diff) <= {"depth", "widths"}
            kinds.add("depth")
        else:
            assert len(diff) == 1, (parent, child)
            if diff == ["widths"]:
                assert sum(a != b for a, b in zip(child["widths"], parent["widths"])) == 1
            kinds.add(diff[0])
    assert kinds == {"depth", "widths", "activation", "lr"}


# ----------------------------------------------------------- strategies in process
def test_grid_in_process(digits):
    X, y = digits
    res = search.run(small_space(), X, y, strategy="grid", epochs=2, verbose=0)
    t = res.trials
    assert list(t.columns[:len(COLUMNS)]) == COLUMNS
    assert len(t) == 24 and (t.status == "ok").all() and (t.epochs == 2).all()
    assert t.metric.between(0, 1).all()
    best = t.loc[t.metric.idxmax()]
    assert res.best_metric == best.metric
    assert res.best_params["widths"] == best.widths and res.best_params["lr"] == best.lr
    # the best model is that trial's trained model: its validation accuracy is the metric
    Xv, yv = X[int(len(X) * 0.8):], y[int(len(X) * 0.8):]
    assert res.best_model.evaluate(Xv, yv)["accuracy"] == pytest.approx(best.metric)
    assert res.best_model.count_params() == best.n_params
    assert t.loc[t.widths == (32,), "n_params"].iloc[0] == 64 * 32 + 32 + 32 * 10 + 10


def test_random_is_reproducible_and_seeded(digits):
    X, y = digits
    a = search.run(small_space(), X, y, n_trials=6, epochs=2, seed=3, verbose=0)
    b = search.run(small_space(), X, y, n_trials=6, epochs=2, seed=3, verbose=0)
    c = search.run(small_space(), X, y, n_trials=6, epochs=2, seed=4, verbose=0)
    same_trials(a, b)
    assert a.trials[["widths", "lr"]].values.tolist() != c.trials[["widths", "lr"]].values.tolist()


def test_halving_survivors_go_on_training(digits):
    X, y = digits
    res = search.run(small_space(), X, y, strategy="halving", n_trials=9, epochs=4, eta=3, seed=0, verbose=0)
    t = res.trials
    # rungs: 9 configurations at 1 epoch (4 / 3, rounded), the best 3 to 4 epochs
    assert len(t) == 9 and sorted(t.rung.tolist()) == [0] * 6 + [1] * 3
    assert (t.loc[t.rung == 0, "epochs"] == 1).all() and (t.loc[t.rung == 1, "epochs"] == 4).all()
    # the survivors are the best three of rung 0 (by their rung-0 metric: re-run rung 0 alone)
    first = search.run(small_space(), X, y, strategy="random", n_trials=9, epochs=1, seed=0, verbose=0)
    top3 = first.trials.sort_values(["metric", "trial"], ascending=[False, True]).trial[:3]
    assert sorted(top3) == sorted(t.trial[t.rung == 1])
    # the best model went on from epoch 1 (its last fit trained epochs 1..3), not from scratch...
    assert res.best_model.history.epoch == [1, 2, 3]
    # ... and continuing gives the weights of an uninterrupted 4-epoch fit of the same trial
    full = search.run(small_space(), X, y, strategy="random", n_trials=9, epochs=4, seed=0, verbose=0)
    best = res.best_trial["trial"]
    assert res.best_metric == full.trials.metric[best]


def test_evolution_mutates_tournament_winners(digits):
    X, y = digits
    space = small_space(depth=(1, 3), width=(8, 64), lr=(1e-3, 1e-2), activation=["relu", "tanh"])
    res = search.run(space, X, y, strategy="evolution", n_trials=12, epochs=2, population=4, sample_size=2,
                     seed=0, verbose=0)
    t = res.trials.set_index("trial")
    assert len(t) == 12 and t.parent.iloc[:4].isna().all() and t.parent.iloc[4:].notna().all()
    for tid in t.index[4:]:
        child, parent = t.loc[tid], t.loc[int(t.loc[tid].parent)]
        changed = [k for k in ("depth", "widths", "activation", "lr") if child[k] != parent[k]]
        assert changed == ["depth", "widths"] or len(changed) == 1, changed
        # aging: the parent was one of the last 4 trained members when the child was made
        assert tid - 4 <= parent.name < tid
    again = search.run(space, X, y, strategy="evolution", n_trials=12, epochs=2, population=4, sample_size=2,
                       seed=0, verbose=0)
    same_trials(res, again)


# ------------------------------------------------------------------ failures
class RaiseOnWidth(fm.callbacks.Callback):
    """Raise (or a given exception type) in the trials whose first hidden layer has ``width`` units."""

    def __init__(self, width, exc=RuntimeError, after=0):
        self.width, self.exc, self.after, self.seen = width, exc, after, 0

    def on_train_begin(self, logs=None):
        if self.model.layers[0].units == self.width:
            self.seen += 1
            if self.seen > self.after:
                raise self.exc("this trial raises")


def test_failing_trials_are_recorded_and_the_search_goes_on(digits):
    X, y = digits
    space = Space(depth=1, width=[8, 16], lr=[1e-3, 1e30], batch_size=64, optimizer="sgd")
    res = search.run(space, X, y, strategy="grid", epochs=2, verbose=0, callbacks=[RaiseOnWidth(16)])
    t = res.trials
    assert t.status.tolist() == ["ok", "failed", "failed", "failed"]
    assert "TrainingDivergedError" in t.error[1] and np.isnan(t.metric[1])
    assert t.error[2] == t.error[3] == "RuntimeError: this trial raises"
    assert res.best_params["widths"] == (8,) and res.best_params["lr"] == 1e-3


def test_ctrl_c_returns_the_trials_done(digits):
    X, y = digits
    space = Space(depth=1, width=[8, 16, 32, 64], lr=1e-3, batch_size=64)
    res = search.run(space, X, y, strategy="grid", epochs=1, verbose=0,
                     callbacks=[RaiseOnWidth(32, KeyboardInterrupt)])
    assert res.interrupted and len(res.trials) == 2 and (res.trials.status == "ok").all()
    assert res.best_model is not None


def test_time_budget_stops_the_search(digits):
    X, y = digits
    res = search.run(small_space(), X, y, n_trials=500, epochs=50, time_budget=1.0, verbose=0)
    t = res.trials
    assert 1 <= len(t) < 500
    assert (t.finished < 1.0 + 3 * t.seconds.max() + 1.0).all()
    assert set(t.status) <= {"ok", "stopped"} and (t.status == "stopped").sum() <= 1
    assert (t.loc[t.status == "stopped", "epochs"] < 50).all()


@pytest.mark.parametrize("kw, match", [
    (dict(strategy="bayes"), "strategy must be one of"),
    (dict(metric="f1"), "metric must be one of"),
    (dict(validation_split=0.0), "needs validation data"),
    (dict(n_jobs=0), "n_jobs must be"),
    (dict(n_jobs=2), "needs executor='processes' or a Dask client"),
    (dict(executor="threads"), "executor must be"),
    (dict(strategy="halving", n_trials=2), "halving needs n_trials >= eta"),
    (dict(loss="mse"), "is for classification, but the loss is 'mse'"),
    (dict(time_budget=-1), "time_budget must be"),
])
def test_bad_arguments_fail_before_any_trial(digits, kw, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        search.run(small_space(), X, y, **{"n_trials": 3, "epochs": 1, "verbose": 0, **kw})


def test_labels_that_are_not_integers(digits):
    X, y = digits
    with pytest.raises(ValueError, match="loss='auto' chose 'mse': y is of dtype float64"):
        search.run(small_space(), X, y.astype(float), n_trials=2, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="np.unique"):
        search.run(small_space(), X, y.astype(str), n_trials=2, epochs=1, verbose=0, loss="cross_entropy")
    # regression: mse on real targets, val_loss minimized
    res = search.run(small_space(), X, y.astype(float) / 9, n_trials=3, epochs=2, verbose=0, metric="val_loss")
    assert res.best_metric == res.trials.metric.min() and res.best_model.count_params() > 0


def test_progress_bar_and_silence(digits, capsys):
    X, y = digits
    search.run(small_space(), X, y, n_trials=3, epochs=1, verbose=1)
    err = capsys.readouterr().err
    assert "3/3" in err and "best val_accuracy=" in err
    search.run(small_space(), X, y, n_trials=3, epochs=1, verbose=0)
    assert capsys.readouterr() == ("", "")


def test_plot(digits):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    X, y = digits
    res = search.run(small_space(), X, y, n_trials=4, epochs=1, verbose=0)
    fig = res.plot()
    a, b = fig.axes[:2]
    assert a.get_xlabel() == "parameters" and b.get_xlabel() == "seconds"
    np.testing.assert_allclose(a.collections[0].get_offsets()[:, 1], res.trials.metric)
    assert b.lines[0].get_ydata()[-1] == res.best_metric


def test_core_import_does_not_need_search_dependencies():
    code = ("import sys, fastmlp; bad = [m for m in ('pandas', 'dask', 'distributed', 'joblib', 'matplotlib') "
            "if m in sys.modules]; assert not bad, bad; fastmlp.search.Space; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------- processes
def test_processes_give_the_same_trials_as_in_process(digits):
    pytest.importorskip("joblib")
    X, y = digits
    here = search.run(small_space(), X, y, n_trials=6, epochs=2, seed=5, verbose=0, n_threads=1)
    two = search.run(small_space(), X, y, n_trials=6, epochs=2, seed=5, verbose=0, executor="processes", n_jobs=2)
    same_trials(here, two)
    assert os.getpid() not in set(two.trials.pid) and len(set(two.trials.pid)) >= 1
    halving = search.run(small_space(), X, y, strategy="halving", n_trials=6, epochs=3, seed=5, verbose=0,
                         executor="processes", n_jobs=2)
    halving_here = search.run(small_space(), X, y, strategy="halving", n_trials=6, epochs=3, seed=5, verbose=0)
    same_trials(halving, halving_here)
    assert halving.best_model.history.epoch == [1, 2]


# ---------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def by_value():
    """Callbacks of this file pickled by value: the workers need not import it."""
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client(by_value):
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    # allowed-failures=0: the scheduler gives up on a task at its worker's first death, so the
    # search's own single retry is the only one; worker-saturation 1.0: a worker holds only the
    # trial it runs, so that no queued trial dies with it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=None)
        c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_dask_every_strategy_and_reproducibility(digits, client):
    X, y = digits
    kw = dict(epochs=2, seed=7, verbose=0)
    for strategy, n in (("grid", None), ("random", 8)):
        here = search.run(small_space(), X, y, strategy=strategy, n_trials=n, n_threads=1, **kw)
        on_two = search.run(small_space(), X, y, strategy=strategy, n_trials=n, executor=client, n_jobs=2, **kw)
        same_trials(here, on_two)
        assert os.getpid() not in set(on_two.trials.pid)
    halving = search.run(small_space(), X, y, strategy="halving", n_trials=6, executor=client, n_jobs=2, **kw)
    same_trials(halving, search.run(small_space(), X, y, strategy="halving", n_trials=6, **kw))
    # evolution depends on the order of the results: the same as in process with one worker
    evo = dict(strategy="evolution", n_trials=8, population=3, sample_size=2, **kw)
    same_trials(search.run(small_space(), X, y, executor=client, n_jobs=1, **evo),
                search.run(small_space(), X, y, **evo))
    assert len(search.run(small_space(), X, y, executor=client, n_jobs=2, **evo).trials) == 8


def test_dask_data_is_scattered_once(digits, client):
    import distributed
    X, y = digits

    class Spy:  # the client, counting scatters and looking at what each trial is sent
        def __init__(self, c):
            self.c, self.scattered, self.sent = c, 0, []

        def scatter(self, *a, **kw):
            self.scattered += 1
            return self.c.scatter(*a, **kw)

        def submit(self, fn, task, data, **kw):
            self.sent.append(data)
            return self.c.submit(fn, task, data, **kw)

        def __getattr__(self, name):
            return getattr(self.c, name)

    spy = Spy(client)
    res = search.run(small_space(), X, y, n_trials=5, epochs=1, executor=spy, n_jobs=2, verbose=0)
    assert len(res.trials) == 5 and (res.trials.status == "ok").all()
    assert spy.scattered == 1 and len(spy.sent) == 5
    assert all(isinstance(d, distributed.Future) and d.key == spy.sent[0].key for d in spy.sent)


class ExitOnWidth(fm.callbacks.Callback):
    """Kill the worker process (os._exit) in the trial of ``width`` units; one marker line per attempt.
    ``always=False``: only the first attempt dies."""

    def __init__(self, width, marker, always):
        self.width, self.marker, self.always = width, marker, always

    def on_train_begin(self, logs=None):
        if self.model.layers[0].units != self.width:
            return
        with open(self.marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        with open(self.marker) as f:
            attempts = len(f.readlines())
        if self.always or attempts == 1:
            os._exit(1)


@pytest.mark.parametrize("always", [False, True])
def test_dask_killed_worker_is_retried_once(digits, client, tmp_path, always):
    X, y = digits
    marker = tmp_path / "attempts.txt"
    space = Space(depth=1, width=[8, 16, 32], lr=1e-3, batch_size=64)
    # n_jobs=1: one trial in flight, so that no other trial is on (and dies with) the killed worker
    res = search.run(space, X, y, strategy="grid", epochs=1, executor=client, n_jobs=1, verbose=0,
                     callbacks=[ExitOnWidth(16, str(marker), always)])
    t = res.trials.set_index(res.trials.widths.map(lambda w: w[0]))
    assert len(marker.read_text().splitlines()) == 2  # the first attempt and one retry, no more
    assert t.status[8] == t.status[32] == "ok", t.error.to_dict()
    assert t.attempts[16] == 2 and t.attempts[8] == 1
    if always:
        assert t.status[16] == "failed" and "worker died twice" in t.error[16]
    else:
        assert t.status[16] == "ok" and 0 < t.metric[16] <= 1


@pytest.mark.parametrize("always", [False, True])
def test_processes_killed_worker_is_retried_once(digits, tmp_path, always, by_value):
    pytest.importorskip("joblib")
    X, y = digits
    marker = tmp_path / "attempts.txt"
    space = Space(depth=1, width=[8, 16, 32], lr=1e-3, batch_size=64)
    # n_jobs=1: a dead loky worker breaks its pool, and every trial in flight with it
    res = search.run(space, X, y, strategy="grid", epochs=1, executor="processes", n_jobs=1, verbose=0,
                     callbacks=[ExitOnWidth(16, str(marker), always)])
    t = res.trials.set_index(res.trials.widths.map(lambda w: w[0]))
    assert len(marker.read_text().splitlines()) == 2
    assert t.status[8] == t.status[32] == "ok" and t.attempts[16] == 2
    assert (t.status[16] == "failed") == always
    if always:
        assert "worker died twice" in t.error[16] and "TerminatedWorkerError" in t.error[16]
