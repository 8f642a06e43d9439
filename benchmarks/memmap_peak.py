"""Peak memory of a fit from a memmap: the data is read in batches from the file, never copied.

    python benchmarks/memmap_peak.py [--data DIR] [--epochs 1] [--rows N] [--estimator]

Writes Fashion-MNIST's training set (float32, 60000 x 784 = 188 MB) to a .npy
file once (in a child process, so that this process never holds it), then, in
a fresh child, opens it with ``np.load(mmap_mode="r")`` and fits a
784-256-128-10 net. It reports the child's RSS before the fit (imports done,
model built) and its peak RSS (VmHWM in /proc/self/status; getrusage's max RSS
would count the parent's, which Linux carries over fork and exec), the peak of anonymous
memory (RssAnon, sampled after every batch) and tracemalloc's peak of the
fit. The file's pages that the fit reads count in RSS (they are page cache,
clean, and the kernel can drop them); a copy of the data would count a
second time, as anonymous memory.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"

_WRITE = """
import numpy as np, sys, fastmlp as fm
(X, y), _ = fm.datasets.load_fashion_mnist(sys.argv[1] or None)
rows = int(sys.argv[4]) or X.shape[0]
np.save(sys.argv[2], X[:rows]); np.save(sys.argv[3], y[:rows])
"""

CHILD = """
import json, sys, tracemalloc
import numpy as np
import fastmlp as fm

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0

X = np.load(sys.argv[1], mmap_mode="r")
y = np.load(sys.argv[2])
epochs, estimator = int(sys.argv[3]), sys.argv[4] == "1"
peak_anon = [0]

class Sample(fm.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        peak_anon[0] = max(peak_anon[0], rss("RssAnon"))

if estimator:
    est = fm.MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=epochs, batch_size=128, dtype="float32",
                           random_state=0, early_stopping=False)
    est.fit(X[:256], y[:256])  # compile the kernels before measuring
else:
    model = fm.Sequential([fm.Dense(256, activation="relu"), fm.Dense(128, activation="relu"), fm.Dense(10)],
                          input_dim=X.shape[1], seed=0)
    model.compile(loss="cross_entropy", optimizer="adam")
    model.fit(X[:256], y[:256], epochs=1, batch_size=128, verbose=0)  # compile the kernels before measuring
before, anon_before = rss("VmRSS"), rss("RssAnon")
tracemalloc.start()
if estimator:
    est.fit(X, y)
else:
    model.fit(X, y, epochs=epochs, batch_size=128, verbose=0, callbacks=[Sample()])
traced = tracemalloc.get_traced_memory()[1]
peak = rss("VmHWM")  # not getrusage's ru_maxrss: Linux carries the parent's peak over fork + exec
print(json.dumps({"data": int(X.nbytes), "rss_before": before, "peak_rss": peak, "anon_before": anon_before,
                  "peak_anon": peak_anon[0], "tracemalloc_peak": traced}))
"""


def measure(x_path, y_path, epochs=1, estimator=False):
    """Run the child on the two .npy files; returns its figures (bytes)."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(x_path), str(y_path), str(epochs),
                          "1" if estimator else "0"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_dir() else "")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rows", type=int, default=0, help="0: all 60000")
    parser.add_argument("--estimator", action="store_true", help="fit MLPClassifier instead of Sequential")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        x_path, y_path = os.path.join(tmp, "X.npy"), os.path.join(tmp, "y.npy")
        subprocess.run([sys.executable, "-c", _WRITE, args.data, x_path, y_path, str(args.rows)], check=True)
        r = measure(x_path, y_path, args.epochs, args.estimator)
    mib = 2 ** 20
    growth = r["peak_rss"] - r["rss_before"]
    print(f"data {r['data'] / mib:.1f} MiB; RSS before the fit {r['rss_before'] / mib:.1f} MiB, peak "
          f"{r['peak_rss'] / mib:.1f} MiB (growth {growth / mib:.1f} MiB, limit data + 64 = "
          f"{r['data'] / mib + 64:.1f} MiB)")
    if r["peak_anon"]:
        print(f"anonymous memory: {r['anon_before'] / mib:.1f} MiB before, peak {r['peak_anon'] / mib:.1f} MiB "
              f"(growth {(r['peak_anon'] - r['anon_before']) / mib:.1f} MiB)")
    print(f"tracemalloc peak during the fit: {r['tracemalloc_peak'] / mib:.1f} MiB")
    print("within data + 64 MiB:", growth < r["data"] + 64 * mib)


if __name__ == "__main__":
    main()
