"""ModelCheckpoint and BackupAndRestore: their hooks called directly, and inside fit; a
BackupAndRestore fit killed with SIGKILL in its third epoch resumes exactly."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

import fastmlp as fm
from fastmlp.checkpoints import BackupAndRestore, ModelCheckpoint


def _setup():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(120, 5)).astype(np.float32), rng.integers(0, 3, 120)
    m = fm.Sequential([fm.Dense(12, activation="relu"), fm.Dropout(0.2), fm.Dense(3)], seed=3, n_threads=1)
    m.compile("cross_entropy", fm.optim.Adam(1e-2))
    return m, X, y


def test_model_checkpoint_every_epoch_and_best_only(tmp_path):
    m, X, y = _setup()
    every = ModelCheckpoint(tmp_path / "e{epoch:02d}.safetensors")
    best = ModelCheckpoint(str(tmp_path / "best.safetensors"), monitor="val_loss", save_best_only=True)
    for cb in (every, best):
        cb.set_model(m)
    val_losses, saved_at = [3.0, 2.0, 2.5, 1.0], []
    for epoch, vl in enumerate(val_losses):
        m.fit(X, y, epochs=1, batch_size=20, verbose=0)
        weights = m.get_weights()
        for cb in (every, best):
            cb.on_epoch_end(epoch, {"loss": 1.0, "val_loss": vl})
        if vl == min(val_losses[:epoch + 1]):
            saved_at.append(weights)
        loaded = fm.load_model(tmp_path / f"e{epoch + 1:02d}.safetensors")
        assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), weights))
    assert best.best == 1.0 and best.mode == "min"
    loaded = fm.load_model(tmp_path / "best.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), saved_at[-1]))
    acc = ModelCheckpoint(tmp_path / "a.safetensors", monitor="val_accuracy", save_best_only=True)
    assert acc.mode == "max"
    acc.set_model(m)
    with pytest.warns(UserWarning, match="val_accuracy"):
        acc.on_epoch_end(0, {"loss": 1.0})
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint("x", mode="best")
    bad = ModelCheckpoint(tmp_path / "{nope}.safetensors")
    bad.set_model(m)
    with pytest.raises(ValueError, match="nope"):
        bad.on_epoch_end(0, {"loss": 1.0})


def test_backup_refuses_another_model(tmp_path):
    m, X, y = _setup()
    cb = BackupAndRestore(tmp_path)
    cb.set_model(m)
    cb.on_train_begin()
    assert cb.initial_epoch == 0
    m.fit(X, y, epochs=1, verbose=0)
    cb.on_epoch_end(0, {})
    other = fm.Sequential([fm.Dense(7), fm.Dense(3)], seed=0)
    other.compile("cross_entropy", "adam")
    cb2 = BackupAndRestore(tmp_path)
    cb2.set_model(other)
    with pytest.raises(ValueError, match="another model"):
        cb2.on_train_begin()
    cb.on_train_end()
    assert not os.path.exists(cb.path)


_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import fastmlp as fm
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 4, 300)
    m = fm.Sequential([fm.Dense(32, activation="relu"), fm.Dropout(0.25), fm.Dense(4)], seed=11, n_threads=1)
    m.compile("cross_entropy", fm.optim.Adam(3e-3))
    backup_dir, out, kill = sys.argv[1], sys.argv[2], sys.argv[3] == "kill"

    class Probe(fm.callbacks.Callback):
        def on_train_begin(self, logs=None):
            print("start", self.model._initial_epoch, flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if kill and self.epoch == 2:  # in the third epoch, before it ends
                os.kill(os.getpid(), signal.SIGKILL)

    m.fit(X, y, epochs=5, batch_size=32, verbose=0, callbacks=[fm.callbacks.BackupAndRestore(backup_dir), Probe()])
    m.save(out)
""")


def test_sigkill_in_the_third_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "FASTMLP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=300)

    r = run(tmp_path / "b1", tmp_path / "plain.safetensors", "no")
    assert r.returncode == 0 and "start 0" in r.stdout, r.stderr
    r = run(tmp_path / "b2", tmp_path / "resumed.safetensors", "kill")
    assert r.returncode == -signal.SIGKILL
    assert os.path.exists(tmp_path / "b2" / "backup.safetensors")
    r = run(tmp_path / "b2", tmp_path / "resumed.safetensors", "no")
    assert r.returncode == 0 and "start 2" in r.stdout, r.stderr
    assert not os.path.exists(tmp_path / "b2" / "backup.safetensors")
    a, b = load_file(tmp_path / "plain.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
