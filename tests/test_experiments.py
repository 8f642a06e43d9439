"""The experiments of examples/experiments/, each run in its --quick mode: the direction of each effect,
asserted on the numbers the script returns, and its figure saved."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "examples" / "experiments"
FASHION_DIR = ROOT.parent / "shared" / "data" / "fashion-mnist"
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def experiment(name):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(name, tmp_path, capsys, *args):
    out = tmp_path / f"{name}.png"
    res = experiment(name).main(["--quick", "--out", str(out), *args])
    printed = capsys.readouterr().out
    assert out.is_file() and out.stat().st_size > 5000, printed  # a figure was drawn and saved
    assert f"figure: {out}" in printed
    return res, printed


def test_sigmoid_stack_gradient_vanishes_and_the_cures_keep_it(tmp_path, capsys):
    res, printed = run_quick("gradient_flow", tmp_path, capsys)
    first = res["first"]
    sigmoid, relu, bn = first["sigmoid + Glorot"], first["ReLU + He"], first["sigmoid + Glorot + BatchNorm"]
    assert len(sigmoid) == res["epochs"] == 3
    assert np.all(np.isfinite(sigmoid)) and np.all(sigmoid > 0)
    # the first layer's gradient, every epoch: at least 100x below ReLU/He's and the batch-normalized stack's
    assert sigmoid.max() * 100 <= relu.min(), (sigmoid, relu)
    assert sigmoid.max() * 100 <= bn.min(), (sigmoid, bn)
    assert res["ratio"]["sigmoid + Glorot"].max() < 1e-3 < res["ratio"]["ReLU + He"].min()
    # the columns are the model's own diagnostics
    np.testing.assert_array_equal(sigmoid, res["models"]["sigmoid + Glorot"].diagnostics_["grad_norm"][:, 0])
    assert "vanishing_gradient" in res["findings"]["sigmoid + Glorot"]
    assert "vanishing_gradient" not in res["findings"]["ReLU + He"]
    assert res["accuracy"]["ReLU + He"] > res["accuracy"]["sigmoid + Glorot"] + 0.3
    residual = "sigmoid + Glorot, residual blocks"
    import fastmlp as fm
    if hasattr(fm, "Residual"):
        assert sigmoid.max() * 100 <= first[residual].min(), (sigmoid, first[residual])
    else:
        assert residual not in first and "no fm.Residual yet" in printed


def test_large_learning_rate_kills_relus_not_leaky_elu_prelu(tmp_path, capsys):
    res, _ = run_quick("dead_relus", tmp_path, capsys)
    last = {name: d[-1] for name, d in res["dead"].items()}
    relu, control = "relu, lr=2", "relu, lr=0.05 (control)"
    assert last[relu] > 0.2, last
    for other in ("leaky_relu, lr=2", "elu, lr=2", "prelu, lr=2"):
        assert last[relu] > last[other] + 0.2, last
        assert "dead_units" not in res["findings"][other]
    assert last[relu] > last[control] + 0.1, last
    # the units killed in the large-rate epochs stay dead once the rate is small again
    assert res["dead"][relu][-1] >= res["dead"][relu][res["large_epochs"] - 1]
    assert "dead_units" in res["findings"][relu]
    assert res["accuracy"]["elu, lr=2"] > res["accuracy"][relu]


def test_initialization_matching_the_activation_keeps_the_std(tmp_path, capsys):
    res, printed = run_quick("init_by_activation", tmp_path, capsys)
    std = res["std"]
    assert res["auto"] == {"relu": "he_uniform", "tanh": "glorot_uniform", "sigmoid": "glorot_uniform",
                           "selu": "lecun_normal"}
    selu = std["selu", "lecun_normal"]
    assert len(selu) == res["depth"] and np.all((selu > 0.85) & (selu < 1.15)), selu  # SELU + LeCun: about 1
    he = std["relu", "he_uniform"]
    assert he.max() / he.min() < 3, he
    small = std["relu", "normal(0.05)"]
    assert small[-1] < 1e-3 * small[0] and np.all(np.diff(small) < 0), small  # collapses layer after layer
    assert std["relu", "normal(1)"][-1] > 1e6 * std["relu", "normal(1)"][0]  # explodes
    assert std["selu", "normal(0.05)"][-1] < 0.6  # SELU's fixed point needs LeCun's variance
    assert "<- auto" in printed


def test_mini_batch_beats_batch_descent_per_second(tmp_path, capsys):
    res, _ = run_quick("batch_size", tmp_path, capsys)
    loss = res["loss"]
    # per epoch: more steps, lower loss
    assert loss["stochastic (1)"][0] < loss["mini-batch (32)"][0] < loss["batch"][0]
    # in the same wall time, mini-batch far below batch gradient descent
    assert res["at_budget"]["mini-batch (32)"] < 0.5 * res["at_budget"]["batch"], res["at_budget"]
    for name, clock in res["clock"].items():
        assert clock[-1] >= res["seconds"] and np.all(np.diff(clock) > 0), name


def test_momentum_beats_plain_sgd_when_ill_conditioned(tmp_path, capsys):
    res, _ = run_quick("momentum", tmp_path, capsys)
    assert res["condition"] == pytest.approx(100.0, rel=1e-6)
    sgd, momentum, nesterov = (res["loss"][k][-1] for k in ("SGD", "SGD + momentum 0.9", "Nesterov 0.9"))
    assert np.isfinite(sgd) and momentum < 0.1 * sgd and nesterov < 0.1 * sgd, (sgd, momentum, nesterov)
    assert len(res["loss"]["SGD"]) == res["epochs"]


def test_momentum_script_runs_from_the_command_line(tmp_path):
    out = tmp_path / "m.png"
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / "momentum.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "condition number 100.0" in proc.stdout and out.is_file()


@pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
                    reason=f"Fashion-MNIST files not found in {FASHION_DIR}")
def test_wider_and_deeper_reach_the_smallest_nets_accuracy(tmp_path, capsys):
    res, _ = run_quick("width_depth", tmp_path, capsys, "--data", str(FASHION_DIR))
    acc, params = res["accuracy"], res["params"]
    assert acc.shape == (len(res["depths"]), len(res["widths"])) == (2, 2)
    smallest = acc[0, 0]
    assert 0.5 < smallest < 1.0
    assert np.all(acc >= smallest - 0.005), acc  # no larger net below the smallest one
    assert np.all(acc[:, -1] >= smallest + 0.02), acc  # the wider nets clearly above it
    assert np.all(np.diff(params, axis=1) > 0) and np.all(np.diff(params, axis=0) > 0)
    assert np.all(res["seconds"] > 0)
