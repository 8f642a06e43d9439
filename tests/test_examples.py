"""The examples as a user runs them: accuracy floors from the acceptance criteria."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = ROOT.parent / "shared" / "data" / "fashion-mnist"
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def run_example(*args, timeout):
    # this checkout's fastmlp (a script's sys.path starts at examples/, where an installed copy could win)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def accuracy(stdout, label):
    match = re.search(rf"{label} test accuracy: ([0-9.]+)", stdout)
    assert match, stdout
    return float(match.group(1))


def test_quickstart_digits_reaches_95_percent():
    out = run_example("examples/quickstart.py", timeout=300)
    assert accuracy(out, "digits") >= 0.95, out


@pytest.mark.slow
@pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
                    reason=f"Fashion-MNIST files not found in {FASHION_DIR}")
def test_fashion_mnist_example_reaches_88_percent():
    # the example as documented: 784-256-128-10 ReLU, Adam(1e-3), batch 128, 15 epochs
    out = run_example("examples/fashion_mnist.py", "--verbose", "0", timeout=900)
    assert accuracy(out, "Fashion-MNIST") >= 0.88, out


@pytest.mark.slow
@pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
                    reason=f"Fashion-MNIST files not found in {FASHION_DIR}")
def test_sklearn_compare_accuracy_within_one_point():
    # (256, 128), adam, batch 128, 15 epochs, float32, both estimators, same hyperparameters.
    # Only accuracy is asserted: speed is measured by running the script, never by a timed test.
    out = run_example("examples/sklearn_compare.py", timeout=1500)
    acc = {name: float(v) for name, v in re.findall(r"(fastmlp|scikit-learn): test accuracy ([0-9.]+)", out)}
    assert set(acc) == {"fastmlp", "scikit-learn"}, out
    assert acc["fastmlp"] >= 0.88, out
    assert abs(acc["fastmlp"] - acc["scikit-learn"]) <= 0.01, out


@pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
                    reason=f"Fashion-MNIST files not found in {FASHION_DIR}")
def test_search_fashion_mnist_example_quick():
    # tiny size: both sides run and report; the 0.90 floor is for the full run (docs/search.md)
    pytest.importorskip("pandas")
    pytest.importorskip("joblib")
    out = run_example("examples/search_fashion_mnist.py", "--quick", "--budget", "1", "--verbose", "0",
                      timeout=300)
    assert re.search(r"fastmlp: \d+ trials in \d+ halving bracket", out), out
    assert 0.5 < accuracy(out, "fastmlp search") <= 1.0, out
    assert 0.5 < accuracy(out, "scikit-learn search") <= 1.0, out
    assert "best params {'depth':" in out


@pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
                    reason=f"Fashion-MNIST files not found in {FASHION_DIR}")
def test_plain_vs_residual_quick():
    # 20 sigmoid layers: the shortcuts carry the first layer's gradient (the plain stack's vanishes)
    # and the residual net learns at least as well
    out = run_example("examples/plain_vs_residual.py", "--quick", timeout=600)
    grads = {name: float(v) for name, v in re.findall(r"(plain|residual): first-layer gradient norm at "
                                                       r"initialization: ([0-9.e+-]+)", out)}
    assert set(grads) == {"plain", "residual"}, out
    assert grads["residual"] > 100 * grads["plain"], out
    assert accuracy(out, "residual") >= accuracy(out, "plain"), out
    assert accuracy(out, "residual") > 0.3, out
