"""The fastmlp command, end to end in subprocesses (python -m fastmlp) on CSV, NPY and IDX data."""
import csv
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm

from conftest import run_on_terminal


def _cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "fastmlp", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "FASTMLP_NUM_THREADS": "1"})
    return r.returncode, r.stdout, r.stderr


def _ok(*args, cwd):
    rc, out, err = _cli(*args, cwd=cwd)
    assert rc == 0, err
    return out


def _fails(rc_expected, *args, cwd, match):
    rc, out, err = _cli(*args, cwd=cwd)
    assert rc == rc_expected, (out, err)
    assert match in err and "Traceback" not in err
    if rc_expected == 1:
        assert len(err.strip().splitlines()) == 1
    return err


def _csv_data(path, n=240):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    labels = np.where(X[:, 0] - X[:, 2] > 0, "up", "down")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x0", "label", "x1", "x2"])  # the target in the middle
        for r, lab in zip(X, labels):
            w.writerow([r[0], lab, r[1], r[2]])
    return X, labels


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_csv_train_predict_evaluate_export_info(tmp_path):
    X, labels = _csv_data(tmp_path / "d.csv")
    out = _ok("train", "d.csv", "--target", "label", "--layers", "16,8", "--epochs", "30", "--batch-size", "32",
              "--lr", "1e-2", "--validation-split", "0.1", "-o", "m.safetensors", "--quiet", cwd=tmp_path)
    assert "classification" in out
    est = fm.load_model(tmp_path / "m.safetensors")
    assert list(est.classes_) == ["down", "up"] and est.n_features_in_ == 3 and est.hidden_layer_sizes == (16, 8)
    assert list(est.feature_names_in_) == ["x0", "x1", "x2"]
    _ok("predict", "m.safetensors", "d.csv", "-o", "p.csv", cwd=tmp_path)
    header, rows = _read_csv(tmp_path / "p.csv")
    assert header == ["prediction"] and len(rows) == len(labels)
    with pytest.warns(UserWarning):  # fitted with feature names, given an array
        want = est.predict(X)
    assert [r[0] for r in rows] == list(want)
    assert np.mean(want == labels) > 0.8
    _ok("predict", "m.safetensors", "d.csv", "-o", "q.csv", "--proba", cwd=tmp_path)
    header, rows = _read_csv(tmp_path / "q.csv")
    assert header == ["down", "up"]
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(np.array(rows, dtype=np.float64), est.predict_proba(X).astype(np.float64))
    out = _ok("evaluate", "m.safetensors", "d.csv", "--target", "label", cwd=tmp_path)
    assert abs(float(out.split(":")[1]) - np.mean(want == labels)) < 1e-6
    _ok("export", "m.safetensors", "--onnx", "m.onnx", cwd=tmp_path)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert list(sess.run(["label"], {"X": X.astype(np.float32)})[0]) == list(want)
    out = _ok("info", "m.safetensors", cwd=tmp_path)
    assert "MLPClassifier" in out and "classes: down, up" in out and "epochs done:" in out


def test_npy_regression_and_tsv(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.25
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    _ok("train", "d.npy", "--target", "4", "--layers", "32", "--epochs", "40", "--lr", "1e-2", "--batch-size", "16",
        "-o", "r.safetensors", "--quiet", cwd=tmp_path)
    est = fm.load_model(tmp_path / "r.safetensors")
    assert type(est).__name__ == "MLPRegressor"
    np.save(tmp_path / "x.npy", X)
    _ok("predict", "r.safetensors", "x.npy", "-o", "p.csv", cwd=tmp_path)
    _, rows = _read_csv(tmp_path / "p.csv")
    np.testing.assert_array_equal(np.array(rows, dtype=np.float64).ravel(), est.predict(X).astype(np.float64))
    out = _ok("evaluate", "r.safetensors", "d.npy", "--target", "4", cwd=tmp_path)
    assert float(out.split(":")[1]) > 0.9
    with open(tmp_path / "d.tsv", "w") as f:
        f.write("a\tb\tc\td\ty\n" + "".join("\t".join(map(str, r)) + "\n" for r in np.column_stack([X, y])))
    _ok("train", "d.tsv", "--target", "y", "--epochs", "2", "-o", "t.safetensors", "--quiet", cwd=tmp_path)
    _fails(1, "train", "d.npy", "--target", "9", "-o", "z.safetensors", cwd=tmp_path, match="column number")


def _write_idx(path, arr):
    codes = {np.uint8: 0x08}
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, codes[np.uint8], arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def test_idx_pair(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 150)
    images = (rng.integers(0, 40, (150, 4, 4)) + labels[:, None, None] * 80).astype(np.uint8)
    _write_idx(tmp_path / "img.idx", images)
    _write_idx(tmp_path / "lab.idx", labels)
    _ok("train", "img.idx,lab.idx", "--target", "label", "--layers", "8", "--epochs", "20", "--lr", "1e-2",
        "--batch-size", "16", "-o", "m.safetensors", "--quiet", cwd=tmp_path)
    est = fm.load_model(tmp_path / "m.safetensors")
    assert list(est.classes_) == [0, 1, 2] and est.n_features_in_ == 16
    _ok("predict", "m.safetensors", "img.idx", "-o", "p.csv", cwd=tmp_path)
    _, rows = _read_csv(tmp_path / "p.csv")
    assert [int(r[0]) for r in rows] == list(est.predict(images.reshape(150, -1).astype(np.float64)))
    out = _ok("evaluate", "m.safetensors", "img.idx,lab.idx", "--target", "label", cwd=tmp_path)
    want = est.score(images.reshape(150, -1).astype(np.float64), labels)
    assert abs(float(out.split(":")[1]) - want) < 1e-6 and want > 0.5


def test_errors(tmp_path):
    _csv_data(tmp_path / "d.csv", n=40)
    _fails(1, "train", "missing.csv", "--target", "label", "-o", "m.safetensors", cwd=tmp_path, match="no such file")
    _fails(1, "train", "d.csv", "--target", "nope", "-o", "m.safetensors", cwd=tmp_path, match="no column 'nope'")
    (tmp_path / "bad.csv").write_text('a,b\n1,"2\n')
    _fails(1, "train", "bad.csv", "--target", "b", "-o", "m.safetensors", cwd=tmp_path, match="malformed CSV")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n")
    _fails(1, "train", "ragged.csv", "--target", "b", "-o", "m.safetensors", cwd=tmp_path, match="line 3")
    (tmp_path / "text.csv").write_text("a,b\n1,x\nfoo,y\n")
    _fails(1, "train", "text.csv", "--target", "b", "-o", "m.safetensors", cwd=tmp_path, match="'foo' is not a number")
    _fails(1, "predict", "missing.safetensors", "d.csv", "-o", "p.csv", cwd=tmp_path, match="no such model file")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    _fails(1, "info", "junk.safetensors", cwd=tmp_path, match="junk.safetensors")
    _fails(2, "train", "d.csv", "-o", "m.safetensors", cwd=tmp_path, match="--target")
    _fails(2, "train", "d.csv", "--target", "label", "--layers", "a,b", "-o", "m.safetensors", cwd=tmp_path,
           match="--layers")
    _fails(2, "frobnicate", cwd=tmp_path, match="invalid choice")
    assert not (tmp_path / "m.safetensors").exists()
    _ok("train", "d.csv", "--target", "label", "--epochs", "1", "-o", "m.safetensors", "--quiet", cwd=tmp_path)
    (tmp_path / "other.csv").write_text("x0,x9,x2\n1,2,3\n")
    _fails(1, "predict", "m.safetensors", "other.csv", "-o", "p.csv", cwd=tmp_path, match="x1")


def test_console_script_and_bench(tmp_path):
    # the entry point pip installs beside the interpreter runs the same main
    script = os.path.join(os.path.dirname(sys.executable), "fastmlp")
    assert os.path.exists(script), "pip install -e . installs the fastmlp console script"
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train" in r.stdout and "bench" in r.stdout
    # bench runs compare.py from the checkout: its smoke table names every workload
    out = _ok("bench", "--smoke", cwd=tmp_path)
    for row in ("A b128", "A b32", "A b512", "B b32", "C predict"):
        assert f"| {row} |" in out
    assert "cython" in out


def _train_on_a_terminal(tmp_path, *extra):
    """Run `fastmlp train` with its stderr on a pseudo-terminal; (returncode, what the terminal showed, stdout)."""
    data = tmp_path / "d.csv"
    _csv_data(data)
    return run_on_terminal([sys.executable, "-m", "fastmlp", "train", str(data), "--target", "label", "--layers", "8",
                            "--epochs", "6", "-o", str(tmp_path / "m.safetensors"), *extra],
                           stdout_too=False, cwd=tmp_path, env={**os.environ, "FASTMLP_NUM_THREADS": "1"})


def test_train_shows_a_progress_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    rc, shown, out = _train_on_a_terminal(tmp_path)
    assert rc == 0 and "saved" in out
    # tqdm redraws the bar after each epoch: every count up to 6/6 appears, with the loss
    for k in range(1, 7):
        assert f"{k}/6" in shown, shown
    assert "epoch" in shown and "loss=" in shown
    assert "Iteration" not in shown + out  # the bar replaces the estimator's lines
    rc, shown, out = _train_on_a_terminal(tmp_path, "--quiet")
    assert rc == 0 and "6/6" not in shown
    # not a terminal: one line per epoch on stdout, no bar
    data = tmp_path / "d.csv"
    out = _ok("train", data, "--target", "label", "--layers", "8", "--epochs", "3", "-o", tmp_path / "n.safetensors",
              cwd=tmp_path)
    assert [line.split(",")[0] for line in out.splitlines() if line.startswith("Iteration")] == \
        ["Iteration 1", "Iteration 2", "Iteration 3"]
