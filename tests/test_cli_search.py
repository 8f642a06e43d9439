"""fastmlp search: the command prints the best parameters, the same as fm.search.run finds."""
import csv
import json

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import cli

pytest.importorskip("pandas")


def test_search_digits_grid_prints_the_best_parameters(capsys):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    rc = cli.main(["search", "--dataset", "digits", "--strategy", "grid", "--depth", "1,2", "--width", "16,32",
                   "--lr", "3e-3", "--epochs", "2", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("6 trials (6 trained)")
    best = json.loads(lines[1])
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    space = fm.search.Space(depth=[1, 2], width=[16, 32], lr=3e-3, batch_size=128)
    ref = fm.search.run(space, X / 16.0, y, strategy="grid", epochs=2, verbose=0)
    assert best == {k: list(v) if isinstance(v, tuple) else v for k, v in ref.best_params.items()}
    assert f"best val_accuracy {ref.best_metric:.4f}" in lines[0]


def test_search_csv_with_string_labels_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "label", "b", "c"])
        for r in X:
            w.writerow([r[0], "up" if r[0] > r[2] else "down", r[1], r[2]])
    rc = cli.main(["search", str(path), "--target", "label", "--n-trials", "3", "--epochs", "20", "--width", "8:32",
                   "--lr", "1e-2", "--strategy", "random", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    best = json.loads(out.strip().splitlines()[1])
    assert len(best["widths"]) == best["depth"] and all(8 <= w <= 32 for w in best["widths"])
    assert float(out.split("best val_accuracy ")[1].split()[0]) > 0.8
    assert cli.main(["search", "--n-trials", "2"]) == 1
    assert "needs DATA and --target" in capsys.readouterr().err
    assert cli.main(["search", "--dataset", "digits", "--strategy", "grid", "--quiet"]) == 1
    assert "Grid search needs a list of choices for depth" in capsys.readouterr().err
