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
    # 64 rows at 20: 3 full batches in one native call, then the partial one in another
    assert names == ["train_begin", "epoch_begin", "batch_end", "batch_end", "epoch_end",
                     "epoch_begin", "batch_end", "batch_end", "epoch_end", "train_end"]
    assert rec.calls[0] == ("train_begin", True)
    assert [c[1] for c in rec.calls if c[0] == "batch_end"] == [2, 3, 2, 3]
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
