"""fit's callback dispatch: Keras' hook order, stop_training, initial_epoch, plain functions."""
import numpy as np
import pytest

import fastmlp as fm


def _model(seed=0):
    m = fm.Sequential([fm.Dense(8, activation="relu"), fm.Dense(3)], input_dim=5, seed=seed, dtype="float64")
    return m.compile(loss="cross_entropy", optimizer=fm.optim.SGD(lr=0.1))


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


class Recorder(fm.callbacks.Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", self.model is not None))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, logs["loss"]))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", logs["loss"]))


def test_hooks_run_in_keras_order_with_the_epochs_logs():
    X, y = _data(64)
    rec = Recorder()
    h = _model().fit(X, y, epochs=2, batch_size=20, verbose=0, callbacks=[rec])
    names = [c[0] for c in rec.calls]
    # 64 rows at 20: 3 full batches then the partial one, in chunks (the first chunk of a fit is
    # one step, later ones sized from its time): each epoch ends with the hook of its step 3
    assert names[:2] == ["train_begin", "epoch_begin"] and names[-2:] == ["epoch_end", "train_end"]
    assert names.count("epoch_begin") == names.count("epoch_end") == 2
    assert rec.calls[0] == ("train_begin", True)
    for e in range(2):
        lo = names.index("epoch_begin", names.index("epoch_begin") + 1 if e else 0)
        hi = names.index("epoch_end", lo)
        batches = [c[1] for c in rec.calls[lo + 1:hi]]
        assert set(names[lo + 1:hi]) == {"batch_end"} and batches == sorted(set(batches)) and batches[-1] == 3
        # the batch logs are the epoch's running mean, as Keras': at the last step, the epoch's loss
        assert rec.calls[hi - 1][2] == pytest.approx(h.history["loss"][e], rel=1e-12)
    assert [c[2] for c in rec.calls if c[0] == "epoch_end"] == h.history["loss"]
    assert rec.calls[-1][1] == h.history["loss"][-1]
    assert all(np.isfinite(c[2]) and c[2] > 0 for c in rec.calls if c[0] == "batch_end")


def test_stop_training_stops_after_the_epoch():
    X, y = _data()

    class StopAt1(fm.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    h = _model().fit(X, y, epochs=10, verbose=0, callbacks=[StopAt1()])
    assert h.epoch == [0, 1]


def test_plain_functions_still_work_and_true_stops():
    X, y = _data()
    seen = []
    h = _model().fit(X, y, epochs=5, verbose=0, callbacks=[lambda m, e, logs: seen.append(e) or e == 2])
    assert seen == [0, 1, 2] and h.epoch == [0, 1, 2]


def test_initial_epoch_counts_as_keras_and_resumes_the_same_run():
    X, y = _data()
    a = _model()
    a.fit(X, y, epochs=4, verbose=0, n_threads=1)
    b = _model()
    b.fit(X, y, epochs=2, verbose=0, n_threads=1)
    h = b.fit(X, y, epochs=4, initial_epoch=2, verbose=0, n_threads=1)
    assert h.epoch == [2, 3]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_a_callback_can_move_the_initial_epoch():
    X, y = _data()

    class Skip(fm.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model._initial_epoch = 3

    h = _model().fit(X, y, epochs=5, verbose=0, callbacks=[Skip()])
    assert h.epoch == [3, 4]


@pytest.mark.parametrize("bad, match", [(5, "callbacks must be a list"), ([1], r"callbacks\[0\] is a int"),
                                        ("f", "callbacks must be a list")])
def test_bad_callbacks_are_refused_before_any_work(bad, match):
    X, y = _data()
    m = _model()
    m.build(5)
    before = [w.copy() for w in m.get_weights()]
    with pytest.raises(TypeError, match=match):
        m.fit(X, y, epochs=1, verbose=0, callbacks=bad)
    for w0, w1 in zip(before, m.get_weights()):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.parametrize("initial_epoch", [3, -1, 1.5])
def test_bad_initial_epoch(initial_epoch):
    X, y = _data()
    with pytest.raises(ValueError, match="initial_epoch"):
        _model().fit(X, y, epochs=3, initial_epoch=initial_epoch, verbose=0)


class Script(fm.callbacks.Callback):
    """Puts a scripted val_loss into each epoch's logs and keeps each epoch's weights."""

    def __init__(self, values):
        self.values, self.weights = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]
        self.weights.append(self.model.get_weights())


@pytest.mark.parametrize("values, patience, min_delta, baseline, stops_after, best_epoch", [
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 3, 0.0, None, 4, 0),     # Keras' docstring: flat loss, patience 3: 4 epochs
    ([3.0, 2.0, 2.5, 2.4, 1.0, 0.9, 0.95], 2, 0.0, None, 4, 1),
    ([3.0, 2.0, 1.95, 1.9, 1.85, 1.8], 1, 0.1, None, 3, 1),    # improvements under min_delta do not count
    ([3.0, 2.0, 1.5, 1.6, 1.7, 1.0], 2, 0.0, 1.05, 4, 2),      # the wait restarts only below the baseline
    ([3.0, 2.0, 1.5, 1.6, 1.7, 1.0], 2, 0.0, None, 5, 2),      # (without it: one epoch more)
    ([5.0, 4.0, 3.0, 2.0, 1.0], 0, 0.0, None, 5, 4),           # always improving: runs to the end
])
def test_early_stopping_stops_where_keras_does_and_restores_the_best_epoch(values, patience, min_delta, baseline,
                                                                           stops_after, best_epoch):
    X, y = _data()
    script = Script(values)
    stop = fm.callbacks.EarlyStopping(patience=patience, min_delta=min_delta, baseline=baseline,
                                      restore_best_weights=True)
    m = _model()
    h = m.fit(X, y, epochs=len(values), verbose=0, callbacks=[script, stop])
    assert len(h.epoch) == stops_after
    assert stop.best == values[best_epoch] and stop.best_epoch == best_epoch
    for w, w_best in zip(m.get_weights(), script.weights[best_epoch]):
        np.testing.assert_array_equal(w, w_best)
    assert not all(np.array_equal(a, b) for a, b in zip(script.weights[-1], script.weights[best_epoch])) \
        or best_epoch == stops_after - 1


def test_early_stopping_on_real_validation_loss_restores_weights_with_that_loss():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((200, 5)), rng.integers(0, 3, 200)   # noise: val_loss soon rises
    Xv, yv = rng.standard_normal((100, 5)), rng.integers(0, 3, 100)
    m = fm.Sequential([fm.Dense(64, activation="relu"), fm.Dense(3)], input_dim=5, seed=0, dtype="float64")
    m.compile(loss="cross_entropy", optimizer=fm.optim.Adam(lr=0.02))
    stop = fm.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = m.fit(X, y, epochs=60, batch_size=20, validation_data=(Xv, yv), verbose=0, callbacks=[stop])
    assert len(h.epoch) < 60
    vl = h.history["val_loss"]
    assert stop.best == min(vl)
    np.testing.assert_allclose(m.evaluate(Xv, yv)["loss"], min(vl), rtol=1e-12)


def test_early_stopping_modes_and_bad_arguments():
    assert fm.callbacks.EarlyStopping(monitor="val_accuracy").mode == "max"
    assert fm.callbacks.EarlyStopping(monitor="loss").mode == "min"
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        fm.callbacks.EarlyStopping(monitor="f1")
    with pytest.raises(ValueError, match="mode must be"):
        fm.callbacks.EarlyStopping(mode="best")
    with pytest.raises(ValueError, match="patience"):
        fm.callbacks.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="min_delta"):
        fm.callbacks.EarlyStopping(min_delta=float("nan"))
    X, y = _data()
    with pytest.warns(UserWarning, match="pass validation_data"):
        _model().fit(X, y, epochs=2, verbose=0, callbacks=[fm.callbacks.EarlyStopping()])


def test_lambda_callback_csv_logger_and_terminate_on_nan(tmp_path):
    X, y = _data()
    seen = []
    lam = fm.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append((e, logs["loss"])),
                                      on_train_end=lambda logs: seen.append("end"))
    path = tmp_path / "log.csv"
    h = _model().fit(X, y, epochs=3, verbose=0, callbacks=[lam, fm.callbacks.CSVLogger(path)])
    assert seen == [(0, h.history["loss"][0]), (1, h.history["loss"][1]), (2, h.history["loss"][2]), "end"]
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss,time"
    assert [float(r.split(",")[2]) for r in rows[1:]] == h.history["loss"]
    _model().fit(X, y, epochs=2, verbose=0, callbacks=[fm.callbacks.CSVLogger(path, append=True)])
    rows = path.read_text().splitlines()
    assert len(rows) == 6 and rows.count("epoch,accuracy,loss,time") == 1
    with pytest.raises(TypeError, match="on_epoch_end must be a function"):
        fm.callbacks.LambdaCallback(on_epoch_end=3)
    # no batch hook given: the lambda callback is not called per native call
    assert fm.callbacks.CallbackList([lam], _model()).batch_hooks == []
    t = fm.callbacks.TerminateOnNaN()
    m = _model()
    t.set_model(m)
    m.stop_training = False
    t.on_train_batch_end(0, {"loss": 1.0})
    assert m.stop_training is False
    t.on_train_batch_end(1, {"loss": float("nan")})
    assert m.stop_training is True


@pytest.mark.parametrize("kw, logged, final", [
    # flat val_loss, patience 2, cooldown 1: reductions at epochs 2, 4 and 6 (Keras' rule worked by hand)
    (dict(factor=0.5, patience=2, cooldown=1), [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025], 0.0125),
    # patience 0: every epoch without improvement, down to min_lr and no further
    (dict(factor=0.1, patience=0, min_lr=0.005), [0.1, 0.1, 0.01, 0.005, 0.005, 0.005, 0.005], 0.005),
])
def test_reduce_lr_on_plateau_changes_the_rate_at_kerass_epochs(kw, logged, final):
    X, y = _data()
    m = _model()
    h = m.fit(X, y, epochs=7, verbose=0,
              callbacks=[Script([1.0] * 7), fm.callbacks.ReduceLROnPlateau(**kw)])
    np.testing.assert_allclose(h.history["learning_rate"], logged, rtol=1e-15)
    assert m.optimizer.lr == pytest.approx(final, rel=1e-15)
    with pytest.raises(ValueError, match="factor"):
        fm.callbacks.ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="factor"):
        fm.callbacks.ReduceLROnPlateau(factor=0.0)


def test_learning_rate_scheduler_trains_as_setting_the_rate_by_hand():
    X, y = _data()
    rates = [0.1, 0.05, 0.025, 0.0125]
    a = _model()
    h = a.fit(X, y, epochs=4, verbose=0, n_threads=1,
              callbacks=[fm.callbacks.LearningRateScheduler(lambda epoch, lr: rates[epoch])])
    assert h.history["learning_rate"] == rates
    b = _model()
    for r in rates:
        b.optimizer.lr = r
        b.fit(X, y, epochs=1, verbose=0, n_threads=1)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    one_arg = fm.callbacks.LearningRateScheduler(lambda epoch: 0.2 / (epoch + 1))
    h = _model().fit(X, y, epochs=2, verbose=0, callbacks=[one_arg])
    assert h.history["learning_rate"] == [0.2, 0.1]
    m = _model()
    with pytest.raises(ValueError, match=r"schedule\(1, ...\) returned -0.1: SGD.lr must be"):
        m.fit(X, y, epochs=3, verbose=0, callbacks=[fm.callbacks.LearningRateScheduler(
            lambda epoch, lr: 0.1 if epoch == 0 else -0.1)])
    assert m.optimizer.lr == 0.1


def test_validation_split_holds_out_the_last_rows_before_shuffling():
    X, y = _data(100)
    a = _model()
    h = a.fit(X, y, epochs=3, validation_split=0.2, verbose=0, n_threads=1)
    b = _model()
    hb = b.fit(X[:80], y[:80], epochs=3, validation_data=(X[80:], y[80:]), verbose=0, n_threads=1)
    assert h.history == {k: v for k, v in hb.history.items() if k != "time"} | {"time": h.history["time"]}
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ValueError, match="validation_split"):
        _model().fit(X, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="no rows to train on"):
        _model().fit(X[:3], y[:3], validation_split=0.9, verbose=0)
    with pytest.raises(ValueError, match="every training row left by validation_split"):
        _model().fit(X, y, validation_split=0.5, sample_weight=np.r_[np.zeros(50), np.ones(50)], verbose=0)


@pytest.mark.parametrize("verbose", [3, -1, True, "1"])
def test_verbose_other_than_0_1_or_2_is_an_error(verbose):
    X, y = _data()
    with pytest.raises(ValueError, match="verbose must be 0"):
        _model().fit(X, y, verbose=verbose)


def test_learning_rate_is_keras_spelling_of_lr():
    assert fm.optim.Adam(learning_rate=0.02).lr == 0.02
    assert fm.optim.SGD().lr == 0.01 and fm.optim.Adam().lr == 1e-3 and fm.optim.RMSprop().lr == 0.01
    with pytest.raises(ValueError, match="not both"):
        fm.optim.SGD(0.1, learning_rate=0.2)
    with pytest.raises(ValueError, match="lr must be"):
        fm.optim.RMSprop(learning_rate=-1.0)
