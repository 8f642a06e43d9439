"""Every ```python block of the README runs as written, each in a fresh interpreter."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.S | re.M)


def test_readme_is_short_and_has_its_snippets():
    assert len(README.splitlines()) <= 160
    assert len(BLOCKS) >= 4  # Sequential, training control, scikit-learn, embedding


def test_readme_test_command_is_the_ci_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    assert len(commands) == 2
    for command in commands:
        assert command in ci.splitlines()


def check_accuracy(out, tmp_path):
    assert float(out.split()[0]) >= 0.85, out


def check_stopped_early(out, tmp_path):
    n = int(re.search(r"stopped after (\d+) of 200 epochs", out).group(1))
    assert 3 < n < 200, out


def check_served(out, tmp_path):
    predicted, label = re.search(r"\[(\d)\] (\d)", out).groups()
    assert predicted == label, out
    assert (tmp_path / "digits.safetensors").stat().st_size > 0
    assert (tmp_path / "digits.onnx").stat().st_size > 0


# what each snippet must print, found by a line of it (so a snippet can grow without renumbering)
CHECKS = {"history = model.fit(X_train": check_accuracy, "EarlyStopping(": check_stopped_early,
          "cross_val_score(clf": check_accuracy, "fm.load_model(": check_served}


def test_every_snippet_has_a_check():
    for block in BLOCKS:
        assert sum(key in block for key in CHECKS) == 1, block


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, tmp_path):
    block = BLOCKS[index]
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"README snippet {index}:\n{block}\n{proc.stderr[-3000:]}"
    for key, check in CHECKS.items():
        if key in block:
            check(proc.stdout, tmp_path)
