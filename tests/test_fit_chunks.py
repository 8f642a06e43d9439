"""fit in chunks: the same weights however an epoch is cut into native calls,
batch hooks about every CHUNK_SECONDS (QUIET_CHUNK_SECONDS without), Ctrl-C at a chunk's end, the progress
bar in a pseudo-terminal and the per-epoch lines without one."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _chunks

from conftest import run_on_terminal


def _data(n=300, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, np.argmax(X[:, :k] + 0.2 * rng.standard_normal((n, k)), axis=1)


def _model(backend_name, dtype="float64", dropout=True):
    layers = [fm.Dense(12, "relu")] + ([fm.Dropout(0.3)] if dropout else []) + [fm.Dense(3)]
    m = fm.Sequential(layers, input_dim=6, dtype=dtype, seed=3, backend=backend_name)
    m.compile(optimizer=fm.optim.Adam(lr=fm.schedules.ExponentialDecay(0.01, 20, 0.5)))
    return m


class Every(fm.callbacks.Callback):
    """A batch hook that records each chunk's last step and the weights after it."""

    def __init__(self, then=None):
        self.seen, self.weights, self.then = [], [], then

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(batch)
        self.weights.append([w.copy() for w in self.model.get_weights()])
        if self.then is not None:
            self.then(self)


def test_chunks_do_not_change_the_weights(backend_name, monkeypatch):
    X, y = _data()
    whole = _model(backend_name)
    whole.fit(X, y, epochs=3, batch_size=7, verbose=0)  # no batch hook
    monkeypatch.setattr(_chunks, "_GROWTH", 2)  # many small chunks: 1, 2, 4, ... steps
    cut = _model(backend_name)
    hook = Every()
    cut.fit(X, y, epochs=3, batch_size=7, verbose=0, callbacks=[hook])
    assert len(hook.seen) > 9  # more than the 3 calls per epoch of a whole-epoch loop
    for a, b in zip(whole.get_weights(), cut.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert whole.optimizer.t == cut.optimizer.t == 3 * 43


def test_pace_aims_at_the_chunk_time():
    pace = _chunks.Pace()
    assert pace.next(1000, 0.1) == 1  # nothing measured yet
    pace.record(1, 0.001)
    assert pace.next(1000, 0.1) == 8  # the growth bound
    pace.record(8, 0.008)
    assert pace.next(1000, 0.1) == 64
    pace.record(64, 0.064)
    assert pace.next(1000, 0.1) == 100  # 0.1 s at 1 ms a step
    assert pace.next(1000, 1.0) == 800  # the growth bound again
    assert pace.next(30, 0.1) == 30  # never past the epoch's end
    pace.record(30, 3.0)
    assert pace.next(1000, 0.1) == 1  # slow steps: one per call


def test_ctrl_c_stops_at_the_chunks_end_and_keeps_its_weights(backend_name):
    X, y = _data()
    m = _model(backend_name)
    ended = []

    def interrupt(hook):
        if len(hook.seen) == 6:
            os.kill(os.getpid(), signal.SIGINT)

    hook = Every(interrupt)
    cbs = [hook, fm.callbacks.LambdaCallback(on_train_end=lambda logs: ended.append(dict(logs)))]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, y, epochs=50, batch_size=7, verbose=0, callbacks=cbs)
    assert len(hook.seen) == 6  # no chunk ran after the one Ctrl-C came in
    for a, b in zip(m.get_weights(), hook.weights[-1]):
        np.testing.assert_array_equal(a, b)
    epochs_done = len(m.history.epoch)
    assert m.optimizer.t == 43 * epochs_done + hook.seen[-1] + 1  # the steps made, no more
    assert ended and (epochs_done == 0 or ended[0]["loss"] == m.history.history["loss"][-1])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back
    m.fit(X, y, epochs=1, batch_size=7, verbose=0)  # and the model trains on


_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import fastmlp as fm
    from fastmlp import _chunks
    _chunks.CHUNK_SECONDS = 0.002
    _chunks.QUIET_CHUNK_SECONDS = 1e9  # the bar's hook must pick the short chunks
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6000, 20))
    y = (X[:, 0] > 0).astype(int)
    m = fm.Sequential([fm.Dense(64, "relu"), fm.Dense(2)], input_dim=20, seed=0, backend="reference")
    m.compile(optimizer="adam")
    m.fit(X, y, epochs=2, batch_size=16, verbose=int(sys.argv[1]), validation_split=0.1)
    print("DONE")
""")


def _run_in(verbose, tty):
    env = dict(os.environ, COLUMNS="100")
    if not tty:
        out = subprocess.run([sys.executable, "-c", _SCRIPT, str(verbose)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout
    code, shown, _ = run_on_terminal([sys.executable, "-c", _SCRIPT, str(verbose)], env=env, timeout=300)
    assert code == 0, shown
    return shown


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals here")
def test_progress_bar_updates_within_an_epoch_on_a_terminal():
    pytest.importorskip("tqdm")
    out = _run_in(1, tty=True)
    assert "DONE" in out
    epoch1 = out[out.index("Epoch 1/2"):out.index("Epoch 2/2")]
    frames = [f for f in epoch1.split("\r") if "Epoch 1/2" in f and "step" in f]
    counts = {f.split("|")[-1].split("/")[0].strip() for f in frames if "/338" in f}
    assert len(counts) >= 3, epoch1  # the bar moved at least three times inside the epoch
    assert "338/338" in epoch1 and "loss=" in epoch1
    assert "val_loss=" in out  # the epoch's logs at its end
    assert "Epoch 1/2 - " not in out  # no per-epoch line beside the bar


def test_without_a_terminal_verbose_1_prints_a_line_per_epoch():
    out = _run_in(1, tty=False)
    lines = [ln for ln in out.splitlines() if ln.startswith("Epoch ")]
    assert len(lines) == 2 and "\r" not in out
    assert " - loss: " in lines[0] and " - val_loss: " in lines[0] and " - accuracy: " in lines[1]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals here")
def test_verbose_2_prints_lines_even_on_a_terminal_and_0_nothing():
    out = _run_in(2, tty=True)
    assert len([ln for ln in out.splitlines() if ln.startswith("Epoch ")]) == 2 and "step/s" not in out
    assert _run_in(0, tty=False).strip() == "DONE"


def test_a_progress_bar_given_explicitly_draws_on_any_stream(monkeypatch):
    pytest.importorskip("tqdm")
    import io
    monkeypatch.setattr(_chunks, "CHUNK_SECONDS", 1e-4)
    X, y = _data(n=2000)
    stream = io.StringIO()
    m = _model("reference", dropout=False)
    h = m.fit(X, y, epochs=1, batch_size=10, verbose=1, callbacks=[fm.callbacks.ProgressBar(file=stream)])
    out = stream.getvalue()
    frames = [f for f in out.split("\r") if "Epoch 1/1" in f]
    assert len(frames) > 3 and "200/200" in frames[-1]
    assert f"loss={h.history['loss'][0]:.4f}" in frames[-1]  # the epoch's logs at its end
